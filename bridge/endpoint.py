"""The upstream endpoint: WebSocket URL, handshake headers, and their redaction.

Pure functions, built once from the config. The URL is derived from the API
base URL the way the official SDKs derive it: ``https`` → ``wss``, ``http`` →
``ws``, the base path plus ``/responses``, the base URL's query kept.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

REDACTED: Final = "REDACTED"

_SCHEMES: Final = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}

# Query parameter and header names whose values are credentials. Matched
# case-insensitively anywhere in the name: `api-key`, `access_token`, `sig`,
# `X-Auth-Token`, `client_secret`, ...
_SECRET_NAME: Final = re.compile(
    r"key|token|secret|passw|auth|sig|credential|session|cookie", re.IGNORECASE
)


def is_secret_name(name: str) -> bool:
    """Whether a query parameter or header with this name carries a credential."""
    return bool(_SECRET_NAME.search(name))


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where and how to open a Responses WebSocket.

    ``url`` and ``headers`` may hold credentials and go only to the WebSocket
    library; ``display_url`` is what logs and acknowledgements show.
    """

    url: str
    display_url: str
    headers: tuple[tuple[str, str], ...]

    def __repr__(self) -> str:
        return f"Endpoint({self.display_url!r})"


def websocket_url(base_url: str, query: Mapping[str, str] | None = None) -> str:
    """The Responses WebSocket URL for an API base URL.

    >>> websocket_url("https://api.openai.com/v1")
    'wss://api.openai.com/v1/responses'
    >>> websocket_url("http://localhost:8080/openai/v1/?api-version=preview")
    'ws://localhost:8080/openai/v1/responses?api-version=preview'

    Raises:
        ValueError: if the scheme is not http, https, ws or wss, or there is no host.
    """
    parts = urlsplit(base_url)
    scheme = _SCHEMES.get(parts.scheme.lower())
    if scheme is None:
        raise ValueError(f"scheme must be http, https, ws or wss, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("the URL has no host")
    path = parts.path.rstrip("/") + "/responses"
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    if query:
        pairs = [(name, value) for name, value in pairs if name not in query]
        pairs.extend(query.items())
    return urlunsplit((scheme, parts.netloc, path, urlencode(pairs), ""))


def redact_url(url: str) -> str:
    """The URL with user info and credential-like query values replaced by REDACTED."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{REDACTED}@{netloc.rsplit('@', 1)[1]}"
    pairs = [
        (name, REDACTED if is_secret_name(name) else value)
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit((parts.scheme, netloc, parts.path, urlencode(pairs, safe=""), ""))


def build_endpoint(
    base_url: str,
    *,
    api_key: str | None,
    auth_header: str = "Authorization",
    auth_scheme: str = "Bearer",
    api_key_query_param: str | None = None,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
    organization: str | None = None,
    project: str | None = None,
) -> Endpoint:
    """Build the endpoint once from the ``openai`` config section.

    The key goes into ``auth_header`` (``Authorization: Bearer <key>`` by
    default), or into the query parameter ``api_key_query_param`` instead.
    Configured ``headers`` come last and replace a default of the same name
    (case-insensitively), so a custom ``Authorization`` wins.
    """
    merged_query = dict(query or {})
    if api_key is not None and api_key_query_param:
        merged_query[api_key_query_param] = api_key
    url = websocket_url(base_url, merged_query)

    result: dict[str, tuple[str, str]] = {}

    def put(name: str, value: str) -> None:
        result[name.lower()] = (name, value)

    if api_key is not None and not api_key_query_param:
        put(auth_header, f"{auth_scheme} {api_key}" if auth_scheme else api_key)
    if organization:
        put("OpenAI-Organization", organization)
    if project:
        put("OpenAI-Project", project)
    for name, value in (headers or {}).items():
        put(name, value)
    display = redact_url(url)
    if api_key_query_param:
        display = _redact_param(display, api_key_query_param)
    return Endpoint(url=url, display_url=display, headers=tuple(result.values()))


def _redact_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    pairs = [
        (key, REDACTED if key == name else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="")))


# OpenAI-style keys, also when a server echoes them partly masked (`sk-abc***xyz`).
_KEY_LIKE: Final = re.compile(r"\b(sk|rk|sess)-[A-Za-z0-9_*\-]{6,}")


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret, and anything shaped like an API key, removed."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return _KEY_LIKE.sub(REDACTED, text)
