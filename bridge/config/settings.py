"""Configuration: YAML → validated, frozen, typed objects, once, at startup.

Raw dicts stay inside this module. Secrets never live in the YAML file: the
API key comes from ``openai.api_key_file``, a systemd credential
(``$CREDENTIALS_DIRECTORY/openai_api_key``) or ``OPENAI_API_KEY``; the broker
password from ``mqtt.password_file``, the credential ``mqtt_password``,
``MQTT_PASSWORD`` or (discouraged) ``mqtt.password``; the broker TLS client
key from ``mqtt.tls.key_file`` or the credential ``mqtt_tls_key``. Any key
can be overridden from the environment (``OPENAI_MQTT_BRIDGE__MQTT__PORT``,
see :mod:`bridge.config.sources`), and :func:`bridge.config.dump.redacted_dump` says where each
value came from.
"""

from __future__ import annotations

import importlib.util
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from bridge.config.cluster import ClusterConfig
from bridge.config.endpoint import Endpoint, build_endpoint, endpoint_secrets
from bridge.config.endpoints import (
    EndpointConfig,
    NamedEndpoint,
    build_named,
    check_names,
    endpoints_secrets,
    resolve_keys,
)
from bridge.config.mcp_servers import mcp_secrets, resolve_tokens
from bridge.config.secrets import Secret, resolve_secret, resolve_tls
from bridge.config.sections import (
    HomeAssistantConfig,
    LoggingConfig,
    MetricsConfig,
    MqttConfig,
    OpenAIConfig,
    Section,
    ShutdownConfig,
)
from bridge.config.sources import (
    FROM_FILE,
    annotate_error,
    apply_environment,
    file_sources,
    source_of,
    yaml_error_text,
)
from bridge.errors import ConfigError
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.mcp_config import McpServerConfig, check_mcp_servers
from bridge.protocol.redaction import Redactor
from bridge.protocol.sessions import (
    DEFAULT_PROFILE,
    ProfileConfig,
    SessionsConfig,
    default_profiles,
)
from bridge.protocol.tools import ToolConfig, check_tools


class Config(Section):
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
    endpoints: dict[str, EndpointConfig] = Field(default_factory=dict)
    """Upstreams besides `openai` (local model servers, gateways), by name; a profile's `endpoint`
    names one."""
    mcp_servers: dict[str, McpServerConfig] = Field(default_factory=dict)
    """MCP servers (Model Context Protocol) whose allowed tools profiles may offer, by name; the
    model sees each tool as `<server>__<tool>`."""

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
        check_mcp_servers(self.mcp_servers, self.profiles)
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


def instance_name(config: Config) -> str:
    """This bridge's name among the instances on its prefix (``cluster.instance``)."""
    return config.cluster.instance or f"{socket.gethostname()}-{config.mqtt.client_id}"


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
    # The `endpoints` section, resolved (bridge/config/endpoints.py).
    endpoints: Mapping[str, NamedEndpoint] = field(default_factory=dict)
    # Each MCP server's token, by server name (bridge/config/mcp_servers.py).
    mcp_tokens: Mapping[str, Secret | None] = field(default_factory=dict)


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
    keys = resolve_keys(config.endpoints, environ)
    mcp_tokens = resolve_tokens(config.mcp_servers, environ)
    redactor = Redactor(
        (
            *(secret.value for secret in (api_key, password) if secret),
            *endpoint_secrets(section.base_url, section.headers, section.query),
            *endpoints_secrets(config.endpoints, keys),
            *mcp_secrets(config.mcp_servers, mcp_tokens),
        )
    )
    endpoint = _openai_endpoint(section, api_key, redactor)
    named = build_named(config.endpoints, keys, redactor)
    return Settings(
        config,
        api_key,
        password,
        endpoint,
        tls_context,
        tls_key,
        dict(sources),
        redactor,
        named,
        mcp_tokens,
    )


def _openai_endpoint(section: OpenAIConfig, api_key: Secret | None, redactor: Redactor) -> Endpoint:
    """The `openai` section's endpoint, built once (a ConfigError naming ``base_url``)."""
    try:
        return build_endpoint(
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
