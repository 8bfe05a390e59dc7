"""Which upstream a connection opens: the `openai` endpoint or a named one, and over what.

Issue 26. A connection's profile names its endpoint (``profiles.<name>.endpoint``;
null: ``openai``). Each endpoint has one opener: the WebSocket
:class:`~bridge.upstream.connection.Upstream` or the HTTP
:class:`~bridge.upstream.http_connection.HttpUpstream`. ``transport: auto`` tries
the WebSocket upgrade at the endpoint's first connection: a server that answers it
with another HTTP status than 401, 429 or 5xx (404, 405, 426, 200...) has no
WebSocket mode, and the endpoint is HTTP from then on; an upgrade that succeeds
makes it WebSocket. Either decision is logged once; a network error decides nothing.
"""

from __future__ import annotations

import logging
from typing import Final

from bridge.config.endpoints import DEFAULT_ENDPOINT, NamedEndpoint
from bridge.config.settings import Settings
from bridge.errors import UpstreamError
from bridge.upstream.connection import Upstream, UpstreamConnection
from bridge.upstream.http_connection import HttpUpstream, HttpUpstreamConnection

logger = logging.getLogger(__name__)

AnyConnection = UpstreamConnection | HttpUpstreamConnection
_NOT_DECIDING: Final = frozenset({401, 429})  # the server may well have WebSocket mode


class _Opener:
    """One named endpoint's transport, decided at most once."""

    def __init__(self, named: NamedEndpoint, settings: Settings) -> None:
        openai = settings.config.openai
        self.named = named
        self.transport = named.config.transport
        self.websocket = Upstream(named.endpoint, openai)
        section = named.config
        self.http = HttpUpstream(
            named.endpoint,
            openai,
            memory=section.memory,
            replay_bytes=section.replay_bytes,
            read_timeout=section.read_timeout,
            check=section.check,
        )

    async def open(self) -> AnyConnection:
        if self.transport == "http":
            return await self.http.open()
        if self.transport == "websocket":
            return await self.websocket.open()
        try:
            connection = await self.websocket.open()
        except UpstreamError as exc:
            status = exc.status
            if status is None or status in _NOT_DECIDING or status >= 500:
                raise
            self._decide("http", f"the WebSocket upgrade got HTTP {status}")
            return await self.http.open()
        self._decide("websocket", "the server accepted the WebSocket upgrade")
        return connection

    def _decide(self, transport: str, why: str) -> None:
        self.transport = transport  # type: ignore[assignment]
        logger.info(
            "endpoint %s (%s): transport %s (%s)",
            self.named.name,
            self.named.endpoint.display_url,
            transport,
            why,
        )


class Endpoints:
    """The openers of every endpoint; the daemon asks by profile."""

    def __init__(self, settings: Settings) -> None:
        self.default = Upstream(settings.endpoint, settings.config.openai)
        self._named = {name: _Opener(named, settings) for name, named in settings.endpoints.items()}
        self._profiles = {
            name: profile.endpoint for name, profile in settings.config.profiles.items()
        }

    def endpoint_of(self, profile: str | None) -> str:
        """The name of the endpoint a profile's connections use."""
        name = self._profiles.get(profile) if profile is not None else None
        return name if name is not None and name in self._named else DEFAULT_ENDPOINT

    async def aclose(self) -> None:
        """Close the HTTP transports' connection pools."""
        for opener in self._named.values():
            await opener.http.aclose()

    async def open(self, profile: str | None) -> AnyConnection:
        """Open an upstream for a connection of ``profile`` (raises UpstreamError)."""
        name = self.endpoint_of(profile)
        if name == DEFAULT_ENDPOINT:
            return await self.default.open()
        return await self._named[name].open()
