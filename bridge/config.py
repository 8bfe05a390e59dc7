"""Configuration: YAML → validated, frozen, typed objects, once, at startup.

Raw dicts stay inside this module. Secrets never live in the YAML file: the
API key comes from ``openai.api_key_file``, a systemd credential
(``$CREDENTIALS_DIRECTORY/openai_api_key``) or ``OPENAI_API_KEY``; the broker
password from ``mqtt.password_file``, the credential ``mqtt_password``,
``MQTT_PASSWORD`` or (discouraged) ``mqtt.password``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from bridge.endpoint import REDACTED, Endpoint, build_endpoint, is_secret_name, websocket_url
from bridge.errors import ConfigError

MIB = 1024 * 1024


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


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

    @field_validator("topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not value or value.startswith("/") or value.endswith("/"):
            raise ValueError("must be non-empty and not start or end with '/'")
        if any(char in value for char in "+#\x00"):
            raise ValueError("must not contain the wildcards '+' or '#', or NUL")
        return value

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
    # Limits
    max_message_bytes: int = Field(64 * MIB, ge=MIB)

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        websocket_url(value)  # raises ValueError with a readable message
        return value


class LimitsConfig(_Section):
    """What one client may ask of the bridge (section ``limits``)."""

    max_connections: int = Field(100, ge=1)
    max_command_bytes: int = Field(MIB, ge=1024)
    allowed_event_types: tuple[str, ...] = ("response.create",)
    commands_per_second: float = Field(10.0, gt=0)
    command_burst: int = Field(20, ge=1)
    dedupe_seconds: float = Field(30.0, ge=0)
    event_buffer_wait: float = Field(30.0, gt=0)


class ShutdownConfig(_Section):
    """Graceful stop (section ``shutdown``)."""

    grace_seconds: float = Field(10.0, gt=0)


class LoggingConfig(_Section):
    """Log output (section ``logging``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class Config(_Section):
    """The whole configuration, as the user wrote it (secrets excluded)."""

    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    openai: OpenAIConfig = Field(default_factory=OpenAIConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    shutdown: ShutdownConfig = Field(default_factory=ShutdownConfig)
    logging: LoggingConfig = Field(default_factory=LoggingConfig)


@dataclass(frozen=True)
class Secret:
    """A secret value and where it came from; its repr never shows the value."""

    value: str = field(repr=False)
    source: str


@dataclass(frozen=True)
class Settings:
    """Everything the daemon needs: the config, its secrets, the endpoint."""

    config: Config
    api_key: Secret | None
    mqtt_password: Secret | None
    endpoint: Endpoint


def load_settings(path: Path | str | None, environ: Mapping[str, str]) -> Settings:
    """Read, validate and resolve the configuration file.

    ``path`` None means all defaults. Raises ConfigError naming the key.
    """
    return resolve(parse_config(_read_yaml(Path(path)) if path is not None else {}), environ)


def resolve(config: Config, environ: Mapping[str, str]) -> Settings:
    """Resolve a validated config's secrets and endpoint; raise ConfigError naming the key."""
    api_key = _resolve_secret(
        config.openai.api_key_file,
        "openai.api_key_file",
        "openai_api_key",
        "OPENAI_API_KEY",
        None,
        environ,
    )
    password = _resolve_secret(
        config.mqtt.password_file,
        "mqtt.password_file",
        "mqtt_password",
        "MQTT_PASSWORD",
        config.mqtt.password,
        environ,
    )
    section = config.openai
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
    )
    return Settings(config, api_key, password, endpoint)


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
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{path} is not valid YAML: {exc}") from None


def _resolve_secret(
    file: Path | None,
    file_key: str,
    credential: str,
    env_name: str,
    inline: SecretStr | None,
    environ: Mapping[str, str],
) -> Secret | None:
    """First of: the configured file, the systemd credential, the environment, inline."""
    if file is not None:
        return Secret(_read_secret_file(file, file_key), f"file {file}")
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        candidate = Path(credentials_dir) / credential
        if candidate.is_file():
            value = _read_secret_file(candidate, file_key)
            return Secret(value, f"systemd credential {credential}")
    if environ.get(env_name):
        return Secret(environ[env_name].strip(), f"environment {env_name}")
    if inline is not None:
        return Secret(inline.get_secret_value(), "config file")
    return None


def _read_secret_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(key, f"{path} is empty")
    return value


def redacted_dump(settings: Settings) -> str:
    """The effective configuration as YAML, with every secret replaced."""
    document = settings.config.model_dump(mode="json")
    mqtt, openai = document["mqtt"], document["openai"]
    mqtt["password"] = _shown(settings.mqtt_password)
    openai["api_key"] = _shown(settings.api_key)
    for section in ("headers", "query"):
        openai[section] = {
            name: REDACTED if is_secret_name(name) else value
            for name, value in openai[section].items()
        }
    openai["websocket_url"] = settings.endpoint.display_url
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True)


def _shown(secret: Secret | None) -> str | None:
    return f"{REDACTED} (from {secret.source})" if secret else None
