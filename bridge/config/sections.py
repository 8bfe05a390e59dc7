"""The config file's own sections, as frozen pydantic models: ``mqtt`` (and ``mqtt.tls``),
``openai``, ``shutdown``, ``logging``, ``metrics``, ``homeassistant``.

Each field's docstring is its entry in the manual's configuration reference
(``python -m bridge_tools.docs``). The sections of features (``limits``,
``sessions``, ``profiles``, ``tools``) are defined with their features in
:mod:`bridge.protocol`, ``cluster`` in :mod:`bridge.config.cluster`;
:class:`bridge.config.settings.Config` puts them all together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from bridge.config.endpoint import websocket_url
from bridge.protocol.contract import connection_id_problem
from bridge.protocol.limits import MIB


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


class Section(BaseModel):
    """A section of the config file: frozen, unknown keys refused, fields documented."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)


class MqttTlsConfig(Section):
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


class MqttConfig(Section):
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


class OpenAIConfig(Section):
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


class ShutdownConfig(Section):
    """Graceful stop (section ``shutdown``)."""

    grace_seconds: float = Field(10.0, gt=0)
    """Seconds for the upstream close handshakes on stop."""


class LoggingConfig(Section):
    """Log output (section ``logging``)."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """`DEBUG`, `INFO`, `WARNING` or `ERROR` (any case)."""
    format: Literal["text", "json"] = "text"
    """`text` (a line per record) or `json` (an object per line)."""

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class MetricsConfig(Section):
    """Prometheus metrics over HTTP (section ``metrics``; needs the ``[metrics]`` extra)."""

    enabled: bool = False
    """Serve Prometheus metrics at `/metrics` (needs the `[metrics]` extra:
    `pip install 'openai-mqtt-bridge[metrics]'`)."""
    host: str = "127.0.0.1"
    """Address `/metrics` is served on (`0.0.0.0`: every interface)."""
    port: int = Field(9464, ge=1, le=65535)
    """Port `/metrics` is served on."""


class HomeAssistantConfig(Section):
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
