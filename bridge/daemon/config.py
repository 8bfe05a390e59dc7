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
from typing import Any, Final, Literal
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
from bridge.endpoint_config import (  # issue 26: named endpoints
    EndpointConfig,
    NamedEndpoint,
    build_named,
    check_names,
    endpoints_secrets,
    resolve_keys,
)
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
    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class MqttTlsConfig(_Section):
    """TLS to the broker (``mqtt.tls``); the client key may come as credential ``mqtt_tls_key``."""

    enabled: bool = False
    """TLS to the broker (usually port 8883)."""
    ca_file: Path | None = None
    """CA certificate(s) the broker's certificate must chain to; null: the system's trusted CAs."""
    cert_file: Path | None = None
    """Client certificate, for brokers that ask for one."""
    key_file: Path | None = None
    """The client certificate's key; null: the systemd credential `mqtt_tls_key` (when `cert_file`
    is set)."""
    insecure: bool = False
    """Skip the host name check (the chain is still verified)."""


class MqttConfig(_Section):
    """The broker connection (section ``mqtt``)."""

    host: str = "127.0.0.1"
    """The broker's host name or address."""
    port: int = Field(1883, ge=1, le=65535)
    """The broker's port (usually 8883 with TLS)."""
    topic_prefix: str = "ai"
    """`P`, the first levels of every topic of the bridge; no wildcards, no leading or trailing
    `/`."""
    client_id: str = Field("openai-mqtt-bridge", min_length=1, max_length=128)
    """The bridge's MQTT client id: unique per bridge on one broker (it also names its Home
    Assistant device)."""
    protocol: Literal["3.1.1", "5"] = "5"
    """MQTT version: `"5"` or `"3.1.1"` (no user properties or response topics)."""
    username: str | None = None
    """Broker login; null: none."""
    password: SecretStr | None = None
    """Broker password written in the file (discouraged): prefer `password_file`, the systemd
    credential `mqtt_password` or `MQTT_PASSWORD`, which come first."""
    password_file: Path | None = None
    """File holding the broker password (first of: this, the systemd credential `mqtt_password`,
    env `MQTT_PASSWORD`, `password`)."""
    tls: MqttTlsConfig = Field(default_factory=MqttTlsConfig)
    """TLS to the broker."""
    qos: Literal[0, 1, 2] = 1
    """QoS of everything the bridge publishes."""
    keepalive: int = Field(60, ge=5, le=65535)
    """MQTT keepalive, in seconds."""
    session_expiry: int = Field(600, ge=0)
    """Seconds the broker keeps the bridge's session while it reconnects (MQTT 5; 3.1.1 uses a
    persistent session)."""
    connect_timeout: float = Field(10.0, gt=0)
    """Seconds for CONNACK and the first publish and subscribe."""
    reconnect_initial_delay: float = Field(0.5, gt=0)
    """First delay before reconnecting to a lost broker, in seconds; doubled (with jitter) up to
    `reconnect_max_delay`, and back to this once a connection has held for 10 s."""
    reconnect_max_delay: float = Field(30.0, gt=0)
    """Longest delay between reconnects, in seconds."""
    max_inflight: int = Field(100, ge=1, le=65535)
    """QoS 1/2 publishes awaiting the broker's ack at once (the bridge hands paho at most 64
    messages at a time)."""
    buffer_max_messages: int = Field(10_000, ge=10)
    """Bound of the outgoing buffer, in messages waiting for the broker or its ack."""
    buffer_max_bytes: int = Field(64 * MIB, ge=64 * 1024)
    """Bound of the outgoing buffer, in bytes."""
    response_topics: tuple[str, ...] = ("#",)
    """Topic filters an MQTT v5 command's Response Topic must match; `P/#`, the discovery prefix
    and `$` topics are refused whatever this says."""

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
    """API base; the WebSocket URL is derived from it (`https` → `wss`, the path + `/responses`);
    `user:password@` is sent as Basic auth and its password treated as a secret."""
    api_key_file: Path | None = None
    """File holding the API key (first of: this, the systemd credential `openai_api_key`, env
    `OPENAI_API_KEY`)."""
    auth_header: str = "Authorization"
    """Header that carries the key (Azure: `api-key`)."""
    auth_scheme: str = "Bearer"
    """Scheme before the key in that header (Azure: `""`)."""
    api_key_query_param: str | None = None
    """Send the key as this query parameter instead of a header; null: in the header."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra handshake headers; one named like a default replaces it."""
    query: dict[str, str] = Field(default_factory=dict)
    """Extra query parameters of the WebSocket URL."""
    organization: str | None = None
    """Sent as the `OpenAI-Organization` header."""
    project: str | None = None
    """Sent as the `OpenAI-Project` header."""
    open_timeout: float = Field(10.0, gt=0)
    """Seconds per handshake attempt."""
    connect_attempts: int = Field(3, ge=1, le=10)
    """Handshake attempts for network errors and HTTP 5xx (a 4xx is final)."""
    ping_interval: float | None = Field(20.0, gt=0)
    """Seconds between WebSocket pings; null: no pings."""
    ping_timeout: float | None = Field(60.0, gt=0)
    """Seconds a ping may go unanswered before the connection ends (1011); null: no timeout."""
    close_timeout: float = Field(10.0, gt=0)
    """Seconds for a close handshake."""
    compression: bool = False
    """permessage-deflate upstream; off saves ~35 KiB and a zlib inflate per event on every
    connection."""
    max_message_bytes: int = Field(16 * MIB, ge=MIB)
    """Largest server event accepted; a larger one ends its connection with 1009."""
    max_bytes_in_flight: int = Field(32 * MIB, ge=MIB)
    """Bytes of server events all upstream sockets together may hold between reading them and
    handing them to the event buffer; a socket whose next frame does not fit waits, in turn."""

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
    """Seconds for the upstream close handshakes on stop."""


class LoggingConfig(_Section):
    """Log output (section ``logging``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """`DEBUG`, `INFO`, `WARNING` or `ERROR` (any case)."""
    format: Literal["text", "json"] = "text"
    """`text` (a line per record) or `json` (an object per line)."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class MetricsConfig(_Section):
    """Prometheus metrics over HTTP (section ``metrics``; needs the ``[metrics]`` extra)."""

    enabled: bool = False
    """Serve Prometheus metrics at `/metrics` (needs the `[metrics]` extra:
    `pip install 'openai-mqtt-bridge[metrics]'`)."""
    host: str = "127.0.0.1"
    """Address `/metrics` is served on (`0.0.0.0`: every interface)."""
    port: int = Field(9464, ge=1, le=65535)
    """Port `/metrics` is served on."""


class HomeAssistantConfig(_Section):
    """Home Assistant MQTT discovery of the bridge's own entities (section ``homeassistant``)."""

    discovery: bool = False
    """Announce the bridge's own entities to Home Assistant's MQTT integration."""
    prefix: str = "homeassistant"
    """Home Assistant's discovery prefix; its birth topic is `<prefix>/status`."""
    assistants: tuple[str, ...] = ()
    """Connection ids announced as assistant devices (Ask, Answer, Status, Tokens today); their
    connections always publish `answer` and `status`."""

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
    """The broker."""
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    """The upstream: the Responses WebSocket."""
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    """What clients may ask of the bridge, and its spend guardrails."""
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    """The graceful stop."""
    sessions: SessionsConfig = Field(default_factory=SessionsConfig)
    """Connections and `ask` conversations."""
    profiles: dict[str, ProfileConfig] = Field(default_factory=default_profiles)
    """Profile name → the defaults of a conversation. The built-in `default` stays unless this
    names a `default` of its own."""

    tools: tuple[ToolConfig, ...] = ()
    """Tools over MQTT: fixed topics the model may publish to, offered by profiles."""
    # issue 26: named endpoints (bridge/endpoint_config.py)
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    """Upstreams besides `openai` (local model servers, gateways), by name; a profile's `endpoint`
    names one."""

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
        check_names(self.endpoints, {name: p.endpoint for name, p in self.profiles.items()})
        for pattern, profile in self.sessions.profile_by_id.items():
            if profile not in self.profiles:
                raise ValueError(
                    f"sessions.profile_by_id maps {pattern!r} to {profile!r}, "
                    "which is not in profiles"
                )
        return self

    logging: LoggingConfig = Field(default_factory=LoggingConfig)
    """Log output (stderr)."""
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    """Prometheus metrics over HTTP."""
    homeassistant: HomeAssistantConfig = Field(default_factory=HomeAssistantConfig)
    """Home Assistant MQTT discovery."""
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    """Several instances on one prefix."""
    state_dir: Path | None = None
    """Where today's token usage is kept (`usage.json`); null: `$STATE_DIRECTORY` under systemd,
    else `$XDG_STATE_HOME/openai-mqtt-bridge` or `~/.local/state/openai-mqtt-bridge`."""


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
    # issue 26: the `endpoints` section, resolved (bridge/endpoint_config.py)
    endpoints: Mapping[str, NamedEndpoint] = field(default_factory=dict)


SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the configuration file (``openai-mqtt-bridge schema``).

    For editors (the YAML language server completes and checks keys with it)
    and other tools; the bridge itself validates with the models, which also
    check what a schema cannot say (a profile named by ``sessions.profile_by_id``
    must exist, a tool's topic must not be under the prefix, ...).
    """
    schema = _one_line_descriptions(Config.model_json_schema())
    return {
        "$schema": SCHEMA_DIALECT,
        "title": "openai-mqtt-bridge configuration",
        "description": "The YAML configuration file of openai-mqtt-bridge "
        "(openai-mqtt-bridge check-config --config FILE checks one).",
        **{key: value for key, value in schema.items() if key not in ("title", "description")},
    }


def _one_line_descriptions(node: Any) -> Any:
    """Descriptions as one line each (docstrings wrap), everything else as it is."""
    if isinstance(node, dict):
        return {
            key: " ".join(value.split())
            if key == "description" and isinstance(value, str)
            else _one_line_descriptions(value)
            for key, value in node.items()
        }
    if isinstance(node, list):
        return [_one_line_descriptions(item) for item in node]
    return node


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
    keys = resolve_keys(config.endpoints, environ)  # issue 26: named endpoints
    redactor = Redactor(
        (
            *(secret.value for secret in (api_key, password) if secret),
            *endpoint_secrets(section.base_url, section.headers, section.query),
            *endpoints_secrets(config.endpoints, keys),
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
    named = build_named(config.endpoints, keys, redactor)
    return Settings(
        config, api_key, password, endpoint, tls_context, tls_key, dict(sources), redactor, named
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
