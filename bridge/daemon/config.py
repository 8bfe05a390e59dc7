"""Configuration: YAML → validated, frozen, typed objects, once, at startup.

Raw dicts stay inside this module. Secrets never live in the YAML file: the
API key comes from ``openai.api_key_file``, a systemd credential
(``$CREDENTIALS_DIRECTORY/openai_api_key``) or ``OPENAI_API_KEY``; the broker
password from ``mqtt.password_file``, the credential ``mqtt_password``,
``MQTT_PASSWORD`` or (discouraged) ``mqtt.password``; the broker TLS client
key from ``mqtt.tls.key_file`` or the credential ``mqtt_tls_key``. Any key
can be overridden from the environment (``OPENAI_MQTT_BRIDGE__MQTT__PORT``,
see :mod:`bridge.config_sources`), and :func:`redacted_dump` says where each
value came from.
"""

from __future__ import annotations

import importlib.util
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from bridge.cluster.config import ClusterConfig
from bridge.daemon.config_sources import (
    FROM_FILE,
    annotate_error,
    apply_environment,
    file_sources,
    source_of,
    yaml_error_text,
)
from bridge.daemon.secrets import Secret, resolve_secret, resolve_tls
from bridge.errors import ConfigError
from bridge.protocol.contract import connection_id_problem
from bridge.protocol.limits import MIB, LimitsConfig
from bridge.protocol.redaction import Redactor
from bridge.protocol.sessions import (
    DEFAULT_PROFILE,
    ProfileConfig,
    SessionsConfig,
    default_profiles,
)
from bridge.protocol.tools import ToolConfig, check_tools
from bridge.upstream.endpoint import (
    Endpoint,
    build_endpoint,
    endpoint_secrets,
    websocket_url,
)


def _topic_prefix(value: str) -> str:
    """Validate a topic prefix: usable as the first levels of a topic name."""
    if not value or value.startswith("/") or value.endswith("/"):
        raise ValueError("must be non-empty and not start or end with '/'")
    if any(char in value for char in "+#\x00"):
        raise ValueError("must not contain the wildcards '+' or '#', or NUL")
    return value


def _topic_filter(value: str) -> str:
    """Validate an MQTT topic filter: ``#`` only last, wildcards fill whole levels."""
    if not value or "\x00" in value:
        raise ValueError("must be a non-empty MQTT topic filter")
    levels = value.split("/")
    for index, level in enumerate(levels):
        if ("#" in level and (level != "#" or index != len(levels) - 1)) or (
            "+" in level and level != "+"
        ):
            raise ValueError(f"{value!r} is not a valid MQTT topic filter")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class MqttTlsConfig(_Section):
    """TLS to the broker (``mqtt.tls``); the client key may come as credential ``mqtt_tls_key``."""

    enabled: bool = False
    ca_file: Path | None = None  # None: the system's trusted CAs
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip the host name check (the chain is still verified)


class MqttConfig(_Section):
    """The broker connection (section ``mqtt``)."""

    # Where
    host: str = "127.0.0.1"
    port: int = Field(1883, ge=1, le=65535)
    topic_prefix: str = "ai"
    client_id: str = Field("openai-mqtt-bridge", min_length=1, max_length=128)
    protocol: Literal["3.1.1", "5"] = "5"
    # Who
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    # How
    qos: Literal[0, 1, 2] = 1
    keepalive: int = Field(60, ge=5, le=65535)
    session_expiry: int = Field(600, ge=0)
    connect_timeout: float = Field(10.0, gt=0)
    reconnect_initial_delay: float = Field(0.5, gt=0)
    reconnect_max_delay: float = Field(30.0, gt=0)
    # Limits
    max_inflight: int = Field(100, ge=1, le=65535)
    buffer_max_messages: int = Field(10_000, ge=10)
    buffer_max_bytes: int = Field(64 * MIB, ge=64 * 1024)
    # Where an MQTT v5 command's Response Topic may send its ack (topic
    # filters). The bridge's own topics (P/#), the Home Assistant discovery
    # prefix and $ topics are refused whatever this says.
    response_topics: tuple[str, ...] = ("#",)

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return _topic_prefix(value)

    @field_validator("response_topics")
    @classmethod
    def _check_response_topics(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(_topic_filter(item) for item in value)

    @field_validator("protocol", mode="before")
    @classmethod
    def _protocol_as_text(cls, value: object) -> object:
        return str(value) if isinstance(value, int | float) else value


class OpenAIConfig(_Section):
    """The upstream Responses WebSocket (section ``openai``)."""

    base_url: str = "https://api.openai.com/v1"
    api_key_file: Path | None = None
    auth_header: str = "Authorization"
    auth_scheme: str = "Bearer"
    api_key_query_param: str | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    query: dict[str, str] = Field(default_factory=dict)
    organization: str | None = None
    project: str | None = None
    # Timeouts
    open_timeout: float = Field(10.0, gt=0)
    connect_attempts: int = Field(3, ge=1, le=10)
    ping_interval: float | None = Field(20.0, gt=0)
    ping_timeout: float | None = Field(60.0, gt=0)
    close_timeout: float = Field(10.0, gt=0)
    # permessage-deflate: off by default; each compressed connection holds
    # zlib windows (~35 KiB more per connection) and inflates every event.
    compression: bool = False
    # Limits: the largest server event, and the bytes of server events every upstream
    # socket together may hold between reading them and handing them to the event buffer.
    max_message_bytes: int = Field(16 * MIB, ge=MIB)
    max_bytes_in_flight: int = Field(32 * MIB, ge=MIB)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        websocket_url(value)  # raises ValueError with a readable message
        parts = urlsplit(value)
        if parts.username is not None and parts.password is None:
            raise ValueError(
                "user info needs a user name and a password (https://user:password@host/...), "
                "sent as HTTP Basic auth; for a key alone use openai.api_key_file"
            )
        return value


class ShutdownConfig(_Section):
    """Graceful stop (section ``shutdown``)."""

    grace_seconds: float = Field(10.0, gt=0)


class LoggingConfig(_Section):
    """Log output (section ``logging``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["text", "json"] = "text"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class MetricsConfig(_Section):
    """Prometheus metrics over HTTP (section ``metrics``; needs the ``[metrics]`` extra)."""

    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = Field(9464, ge=1, le=65535)


class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery of the bridge's own entities (section ``homeassistant``)."""

    discovery: bool = False
    prefix: str = "homeassistant"
    # Connection ids announced as assistant devices (ask text, answer, status, tokens).
    assistants: tuple[str, ...] = ()

    @field_validator("assistants")
    @classmethod
    def _check_assistants(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for connection_id in value:
            problem = connection_id_problem(connection_id)
            if problem is not None:
                raise ValueError(f"{connection_id!r}: {problem}")
        if len(set(value)) != len(value):
            raise ValueError("a connection id is listed twice")
        return value

    @field_validator("prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        return _topic_prefix(value)


class Config(_Section):
    """The whole configuration, as the user wrote it (secrets excluded)."""

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    profiles: dict[str, ProfileConfig] = Field(default_factory=default_profiles)

    # Tools over MQTT: the model publishes to these fixed topics (bridge/protocol/tools.py).
    tools: tuple[ToolConfig, ...] = ()

    @field_validator("profiles")
    @classmethod
    def _keep_the_default(cls, value: dict[str, ProfileConfig]) -> dict[str, ProfileConfig]:
        # A `profiles:` section adds to the built-in `default`; it replaces it only by name.
        if DEFAULT_PROFILE in value:
            return value
        return {**default_profiles(), **value}

    @model_validator(mode="after")
    def _profiles_known(self) -> Config:
        check_tools(self.tools, self.profiles, (self.mqtt.topic_prefix, self.homeassistant.prefix))
        for pattern, profile in self.sessions.profile_by_id.items():
            if profile not in self.profiles:
                raise ValueError(
                    f"sessions.profile_by_id maps {pattern!r} to {profile!r}, "
                    "which is not in profiles"
                )
        return self

    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    # Where today's token usage is kept (None: $STATE_DIRECTORY under systemd, else
    # $XDG_STATE_HOME/openai-mqtt-bridge or ~/.local/state/openai-mqtt-bridge).
    state_dir: Path | None = None


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs: the config, its secrets, the endpoint."""

    config: Config
    api_key: Secret | None
    mqtt_password: Secret | None
    endpoint: Endpoint
    mqtt_tls: ssl.SSLContext | None = None
    mqtt_tls_key: Secret | None = None  # the client key's path (not its content), and its source
    sources: Mapping[str, str] = field(default_factory=dict)  # dotted key → file / env NAME
    # Scrubs every secret above by value (and their encodings) from any text.
    redactor: Redactor = field(default_factory=Redactor, compare=False)


def load_settings(path: Path | str | None, environ: Mapping[str, str]) -> Settings:
    """Read the configuration file, apply environment overrides, validate and resolve.

    ``path`` None means all defaults. Raises ConfigError naming the key (and
    the environment variable, when the value came from one).
    """
    document = _read_yaml(Path(path)) if path is not None else {}
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError("", "the config file must be a YAML mapping of sections")
    sources = file_sources(document)
    overridden = apply_environment(document, environ)
    sources.update(overridden)
    try:
        return resolve(parse_config(document), environ, sources)
    except ConfigError as exc:
        raise annotate_error(exc, overridden) from None


def resolve(
    config: Config, environ: Mapping[str, str], sources: Mapping[str, str] | None = None
) -> Settings:
    """Resolve a validated config's secrets and endpoint; raise ConfigError naming the key."""
    sources = sources or {}
    api_key = resolve_secret(
        config.openai.api_key_file,
        "openai.api_key_file",
        "openai_api_key",
        "OPENAI_API_KEY",
        None,
        environ,
    )
    password = resolve_secret(
        config.mqtt.password_file,
        "mqtt.password_file",
        "mqtt_password",
        "MQTT_PASSWORD",
        config.mqtt.password,
        environ,
        inline_source=_inline_source(sources, "mqtt.password"),
    )
    tls_key, tls_context = resolve_tls(config.mqtt.tls, environ)
    if config.metrics.enabled and importlib.util.find_spec("prometheus_client") is None:
        raise ConfigError(
            "metrics.enabled",
            "needs prometheus-client: pip install 'openai-mqtt-bridge[metrics]'",
        )
    section = config.openai
    redactor = Redactor(
        (
            *(secret.value for secret in (api_key, password) if secret),
            *endpoint_secrets(section.base_url, section.headers, section.query),
        )
    )
    try:
        endpoint = build_endpoint(
            section.base_url,
            api_key=api_key.value if api_key else None,
            auth_header=section.auth_header,
            auth_scheme=section.auth_scheme,
            api_key_query_param=section.api_key_query_param,
            headers=section.headers,
            query=section.query,
            organization=section.organization,
            project=section.project,
            redactor=redactor,
        )
    except ValueError as exc:  # the message names no value
        raise ConfigError("openai.base_url", str(exc)) from None
    return Settings(
        config, api_key, password, endpoint, tls_context, tls_key, dict(sources), redactor
    )


def _inline_source(sources: Mapping[str, str], key: str) -> str:
    source = source_of(sources, key)
    return "config file" if source == FROM_FILE else source.replace("env ", "environment ", 1)


def parse_config(document: object) -> Config:
    """Validate a parsed YAML document; raise ConfigError for the first problem."""
    if document is None:
        document = {}
    if not isinstance(document, dict):
        raise ConfigError("", "the config file must be a YAML mapping of sections")
    try:
        return Config.model_validate(document)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        message = first["msg"]
        if first["type"] == "extra_forbidden":
            message = "unknown key"
        raise ConfigError(where, message) from None


def _read_yaml(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read config file {path}: {exc.strerror}") from None
    try:
        return yaml.safe_load(text)
    except (yaml.YAMLError, ValueError) as exc:
        # Never str(exc): PyYAML quotes the offending lines, which may hold a password.
        raise ConfigError("", f"{path} is {yaml_error_text(exc)}") from None
