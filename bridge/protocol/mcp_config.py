"""The ``mcp_servers`` section: the house's MCP servers the bridge may call tools of (pure).

Each named server is reached over streamable HTTP (``url``, with headers and a
token from a secret source, resolved in :mod:`bridge.config.mcp_servers`) or
started as a local command spoken to over stdio (``command``). Only the tools
its ``allow`` list names (exact names or shell-style patterns) are ever offered:
the default is none, so a tool a server adds later (an upgrade, a list-changed
notification) never reaches the model without the owner listing it. A profile
names the servers its ``ask`` turns may use (``profiles.<name>.mcp_servers``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# A server's name: the first part of its tools' names as the model sees them
# (`<server>__<tool>`), so no `__` of its own.
_SERVER_NAME: Final = re.compile(r"[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*")
MAX_SERVER_NAME: Final = 24


class McpServerConfig(BaseModel):
    """One entry of ``mcp_servers``: where the server is, which of its tools are offered."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    url: str | None = None
    """Streamable HTTP endpoint of the server (e.g. `http://homeassistant.local:8123/api/mcp`);
    set this or `command`."""
    headers: dict[str, str] = Field(default_factory=dict)
    """Extra HTTP request headers (values of headers named like credentials are kept out of logs
    and messages, but put a token in `token_file`, `token_credential` or `token_env`)."""
    token_file: Path | None = None
    """File holding the server's token, sent as `<auth_header>: <auth_scheme> <token>` (first of:
    this, `token_credential`, `token_env`); none of them: no token is sent."""
    token_credential: str | None = None
    """Name of the systemd credential holding the token (`$CREDENTIALS_DIRECTORY/<name>`)."""
    token_env: str | None = None
    """Environment variable holding the token."""
    auth_header: str = "Authorization"
    """Header that carries the token."""
    auth_scheme: str = "Bearer"
    """Scheme before the token in that header (empty: the token alone)."""
    command: str | None = None
    """A local server: the program to start, spoken to over stdin/stdout; set this or `url`."""
    args: tuple[str, ...] = ()
    """Arguments of `command`."""
    env: dict[str, str] = Field(default_factory=dict)
    """Environment variables of `command`, besides a minimal safe set (`HOME`, `PATH`, ...); the
    bridge's own environment is not passed on."""
    cwd: Path | None = None
    """Working directory of `command`; null: the bridge's."""
    allow: tuple[str, ...] = ()
    """Names of the server's tools the model may call, exact or shell-style patterns (`Hass*`,
    `*`); empty (the default): none is offered until listed here."""
    call_timeout: float = Field(30.0, gt=0, le=600)
    """Seconds one call may take; then the model is told `no result from <server> within N s
    (timeout)`."""
    connect_timeout: float = Field(10.0, gt=0, le=300)
    """Seconds to connect, initialize and list the tools before the server counts as down."""

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"https?://[^/\s]+", value):
            raise ValueError("an MCP server's url is http:// or https://")
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if (self.url is None) == (self.command is None):
            raise ValueError("set one of url (streamable HTTP) or command (stdio)")
        tokens = (self.token_file, self.token_credential, self.token_env)
        if self.command is not None and (any(t is not None for t in tokens) or self.headers):
            raise ValueError("token_* and headers are for url servers; give a command its env")
        return self

    @property
    def transport(self) -> str:
        """``http`` or ``stdio``."""
        return "http" if self.url is not None else "stdio"


def check_mcp_servers(servers: Mapping[str, McpServerConfig], profiles: Mapping[str, Any]) -> None:
    """Names usable in tool names, every profile's servers configured (ValueError naming the
    first problem)."""
    for name in servers:
        if not _SERVER_NAME.fullmatch(name) or len(name) > MAX_SERVER_NAME:
            raise ValueError(
                f"mcp_servers: {name!r}: a server's name is 1-{MAX_SERVER_NAME} letters and "
                "digits, single '-' or '_' between them"
            )
    for name, profile in profiles.items():
        unknown = sorted(set(profile.mcp_servers) - set(servers))
        if unknown:
            raise ValueError(
                f"profiles.{name}.mcp_servers: {', '.join(unknown)} not in mcp_servers"
            )
