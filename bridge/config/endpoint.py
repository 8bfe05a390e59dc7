"""The upstream endpoint: WebSocket URL, handshake headers, and their redaction.

Pure functions, built once from the config. The URL is derived from the API
base URL the way the official SDKs derive it: ``https`` → ``wss``, ``http`` →
``ws``, the base path plus ``/responses``, the base URL's query kept.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

from bridge.protocol.redaction import REDACTED, Redactor

__all__ = [
    "REDACTED",
    "Endpoint",
    "build_endpoint",
    "endpoint_secrets",
    "is_secret_name",
    "redact_url",
    "scrub",
    "websocket_url",
]

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
    library; ``display_url`` is what logs and acknowledgements show, and
    ``redactor`` scrubs the credentials (and the bridge's other secrets) from
    any text, such as an error about this endpoint.
    """

    url: str
    display_url: str
    headers: tuple[tuple[str, str], ...]
    redactor: Redactor = field(default_factory=Redactor, compare=False)

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


def endpoint_secrets(
    base_url: str,
    headers: Mapping[str, str] | None = None,
    query: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """The secret values an endpoint's configuration holds, besides the API key.

    The password of the base URL's user info (as written and decoded), the
    whole ``user:password`` and its base64 (the Basic auth credentials the
    WebSocket library sends, named even when too short for the redactor to
    look for encodings); the values of query parameters (in the base URL
    or ``query``) and headers whose names look like credentials, and for a
    header such as ``Authorization: Basic <credentials>`` the part after the
    scheme too.
    """
    parts = urlsplit(base_url)
    if parts.password:
        yield from (parts.password, unquote(parts.password))
        userinfo = parts.netloc.rsplit("@", 1)[0]
        for written in (userinfo, unquote(userinfo)):
            yield from (written, base64.b64encode(written.encode()).decode("ascii"))
    pairs = [*parse_qsl(parts.query, keep_blank_values=True), *(query or {}).items()]
    yield from (value for name, value in pairs if is_secret_name(name))
    for name, value in (headers or {}).items():
        if is_secret_name(name):
            yield value
            scheme, _, credentials = value.strip().partition(" ")
            if scheme and credentials.strip():
                yield credentials.strip()


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
    redactor: Redactor | None = None,
) -> Endpoint:
    """Build the endpoint once from the ``openai`` config section.

    The key goes into ``auth_header`` (``Authorization: Bearer <key>`` by
    default), or into the query parameter ``api_key_query_param`` instead.
    Configured ``headers`` come last and replace a default of the same name
    (case-insensitively), so a custom ``Authorization`` wins. User info in
    ``base_url`` goes out as ``Authorization: Basic`` (the WebSocket library
    sends it): a second ``Authorization`` header is a ValueError.

    ``redactor`` knows every secret of the bridge (the config builds it); the
    display URL goes through it. Without one, a redactor of the key and of
    :func:`endpoint_secrets` is built.
    """
    if redactor is None:
        key = (api_key,) if api_key else ()
        redactor = Redactor((*key, *endpoint_secrets(base_url, headers, query)))
    merged_query = dict(query or {})
    if api_key is not None and api_key_query_param:
        merged_query[api_key_query_param] = api_key
    url = websocket_url(base_url, merged_query)

    key_header = api_key if api_key is not None and not api_key_query_param else None
    result = _headers(key_header, auth_header, auth_scheme, organization, project, headers)
    if urlsplit(base_url).password is not None and "authorization" in result:
        raise ValueError(
            "its user info is sent as Authorization: Basic, and the API key or "
            "openai.headers would send a second Authorization header: send the key in "
            "another header (openai.auth_header) or as openai.api_key_query_param"
        )
    display = redact_url(url)
    if api_key_query_param:
        display = _redact_param(display, api_key_query_param)
    return Endpoint(
        url=url,
        display_url=redactor.redact(display),
        headers=tuple(result.values()),
        redactor=redactor,
    )


def _headers(
    api_key: str | None,
    auth_header: str,
    auth_scheme: str,
    organization: str | None,
    project: str | None,
    headers: Mapping[str, str] | None,
) -> dict[str, tuple[str, str]]:
    """The handshake's headers by lower-case name: the key's, OpenAI's, then the configured
    ones (which replace a default of the same name)."""
    result: dict[str, tuple[str, str]] = {}

    def put(name: str, value: str) -> None:
        result[name.lower()] = (name, value)

    if api_key is not None:
        put(auth_header, f"{auth_scheme} {api_key}" if auth_scheme else api_key)
    if organization:
        put("OpenAI-Organization", organization)
    if project:
        put("OpenAI-Project", project)
    for name, value in (headers or {}).items():
        put(name, value)
    return result


def _redact_param(url: str, name: str) -> str:
    parts = urlsplit(url)
    pairs = [
        (key, REDACTED if key == name else value)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(pairs, safe="")))


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """``text`` with every secret (and its encodings), and anything shaped like a key, removed.

    For one-off use; build a :class:`~bridge.redaction.Redactor` once to scrub many texts.
    """
    return Redactor(secrets).redact(text)
