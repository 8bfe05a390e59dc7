"""Named upstream endpoints (section ``endpoints``): models, and their resolution.

The ``openai`` section is the default endpoint, named ``openai``; ``endpoints``
adds others by name (a local model server, a gateway), each with its base URL,
its key source and its transport. A profile names the endpoint its connections
use (``profiles.<name>.endpoint``). Settings that are not per endpoint (timeouts,
message and memory bounds) are the ``openai`` section's.

Merge note (issue 23): this module is a config model plus its resolution; it
belongs in the ``bridge/config/`` package with ``config.py`` and ``secrets.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.config.endpoint import Endpoint, build_endpoint, endpoint_secrets, websocket_url
from bridge.config.secrets import Secret, named_secret
from bridge.errors import ConfigError
from bridge.protocol.redaction import Redactor

DEFAULT_ENDPOINT: Final = "openai"  # the `openai` section's name as an endpoint

Transport = Literal["websocket", "http", "auto"]
Memory = Literal["server", "replay", "auto"]


class EndpointConfig(BaseModel):
    """One named upstream (an entry of ``endpoints``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    base_url: str
    """API base, as for `openai.base_url` (e.g. `http://127.0.0.1:11434/v1`); required."""
    transport: Transport = "auto"
    """`websocket` (Responses WebSocket mode), `http` (streamed `POST /responses`, server-sent
    events) or `auto`: WebSocket where the server accepts the upgrade, else HTTP, decided at the
    first connection and logged."""
    api_key_file: Path | None = None
    """File holding this endpoint's key (first of: this, `api_key_credential`, `api_key_env`);
    none of them: no key is sent (a local server)."""
    api_key_credential: str | None = None
    """Name of the systemd credential holding the key (`$CREDENTIALS_DIRECTORY/<name>`)."""
    api_key_env: str | None = None
    """Environment variable holding the key."""
    auth_header: str = "Authorization"
    """Header that carries the key."""
    auth_scheme: str = "Bearer"
    """Scheme before the key in that header."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra request headers; one named like a default replaces it."""
    memory: Memory = "auto"
    """How conversations continue over HTTP: `server` (the server continues stored responses
    by `previous_response_id`), `replay` (the bridge sends the conversation again each turn; for
    servers that keep nothing) or `auto` (`server` until the server answers
    `previous_response_not_found`, then `replay`)."""
    replay_bytes: int = Field(4 * 1024 * 1024, ge=64 * 1024)
    """Bytes of recent conversations the bridge keeps to replay over HTTP (least recently used
    dropped first)."""
    read_timeout: float = Field(300.0, gt=0)
    """Seconds an HTTP stream may send nothing before it is given up (the session ends 1006)."""
    check: bool = True
    """Check the endpoint when a connection opens over HTTP (`GET /models`); off: open without a
    request."""

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str) -> str:
        websocket_url(value)  # raises ValueError with a readable message
        return value


@dataclass(frozen=True)
class NamedEndpoint:
    """A resolved endpoint: where, how, and its key's source (never its value in a repr)."""

    name: str
    config: EndpointConfig
    endpoint: Endpoint
    api_key: Secret | None


def resolve_keys(
    endpoints: Mapping[str, EndpointConfig], environ: Mapping[str, str]
) -> dict[str, Secret | None]:
    """Each endpoint's key, from its file, systemd credential or environment variable."""
    return {
        name: named_secret(
            section.api_key_file,
            section.api_key_credential,
            section.api_key_env,
            environ,
            f"endpoints.{name}.api_key_file",
        )
        for name, section in endpoints.items()
    }


def endpoints_secrets(
    endpoints: Mapping[str, EndpointConfig], keys: Mapping[str, Secret | None]
) -> list[str]:
    """Every secret value the endpoints hold, for the bridge's redactor."""
    found = [secret.value for secret in keys.values() if secret is not None]
    for section in endpoints.values():
        found.extend(endpoint_secrets(section.base_url, section.headers))
    return found


def build_named(
    endpoints: Mapping[str, EndpointConfig],
    keys: Mapping[str, Secret | None],
    redactor: Redactor,
) -> dict[str, NamedEndpoint]:
    """The endpoints, built once (raises ConfigError naming the key)."""
    built: dict[str, NamedEndpoint] = {}
    for name, section in endpoints.items():
        key = keys.get(name)
        try:
            endpoint = build_endpoint(
                section.base_url,
                api_key=key.value if key else None,
                auth_header=section.auth_header,
                auth_scheme=section.auth_scheme,
                headers=section.headers,
                redactor=redactor,
            )
        except ValueError as exc:
            raise ConfigError(f"endpoints.{name}.base_url", str(exc)) from None
        built[name] = NamedEndpoint(name, section, endpoint, key)
    return built


def check_names(
    endpoints: Mapping[str, EndpointConfig], profiles: Mapping[str, str | None]
) -> None:
    """Raise ValueError if a profile names an endpoint that is not configured."""
    if DEFAULT_ENDPOINT in endpoints:
        raise ValueError(f"endpoints: {DEFAULT_ENDPOINT!r} is the `openai` section's name")
    for profile, name in profiles.items():
        if name is not None and name != DEFAULT_ENDPOINT and name not in endpoints:
            raise ValueError(
                f"profiles.{profile}.endpoint names {name!r}, which is not in endpoints"
            )
