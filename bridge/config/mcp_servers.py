"""The ``mcp_servers`` section's secrets: each server's token, read once at startup.

The section itself is :mod:`bridge.protocol.mcp_config`. A server's token comes
from its ``token_file``, the systemd credential ``token_credential`` or the
environment variable ``token_env`` (the first that is set), like an endpoint's
key; its value, and the values of headers and ``env`` entries named like
credentials, go to the bridge's redactor, so no log line, MQTT message or
``check-config`` shows them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from bridge.config.endpoint import endpoint_secrets, is_secret_name
from bridge.config.secrets import Secret, named_secret
from bridge.protocol.mcp_config import McpServerConfig


def resolve_tokens(
    servers: Mapping[str, McpServerConfig], environ: Mapping[str, str]
) -> dict[str, Secret | None]:
    """Each server's token, from its file, systemd credential or environment variable."""
    return {
        name: named_secret(
            section.token_file,
            section.token_credential,
            section.token_env,
            environ,
            f"mcp_servers.{name}.token_file",
        )
        for name, section in servers.items()
    }


def mcp_secrets(
    servers: Mapping[str, McpServerConfig], tokens: Mapping[str, Secret | None]
) -> Iterator[str]:
    """Every secret value the servers' configuration holds, for the bridge's redactor."""
    yield from (secret.value for secret in tokens.values() if secret is not None)
    for section in servers.values():
        if section.url is not None:
            yield from endpoint_secrets(section.url, section.headers)
        yield from (value for key, value in section.env.items() if is_secret_name(key))


def auth_headers(section: McpServerConfig, token: Secret | None) -> dict[str, str]:
    """The request headers of a streamable HTTP server: its own, then its token's."""
    headers = dict(section.headers)
    if token is not None:
        scheme = f"{section.auth_scheme} " if section.auth_scheme else ""
        headers[section.auth_header] = scheme + token.value
    return headers
