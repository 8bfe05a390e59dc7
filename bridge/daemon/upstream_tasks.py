"""One supervised task per connection id: it opens the id's upstream and relays its
events until it ends.

The :class:`~bridge.daemon.service.Service` performs the core's upstream
actions here (open, send, close, abort). A task that fails unexpectedly is
logged with its traceback and its connection is ended (``disconnected``
1011), so the id can connect again and a stop never waits for it; however a
task ends, the core learns how.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from bridge.daemon.endpoints import AnyConnection, Endpoints
from bridge.daemon.relay import Relay
from bridge.errors import UpstreamError
from bridge.protocol.actions import Action
from bridge.protocol.core import BridgeCore, Phase

logger = logging.getLogger("bridge.daemon.service")  # the lines the service always logged


@dataclass(eq=False, slots=True)
class _Upstream:
    """One connection id's upstream, from its handshake to its end, and the task driving it."""

    connection_id: str
    task: asyncio.Task[None] | None = None
    socket: AnyConnection | None = None  # None while the handshake runs
    reported: bool = False  # the core was told how it ended
    # The reader's wait for room in the buffer: since when, and the count of
    # relayed events when it last came back from waiting (see Relay.room).
    waiting_since: float = 0.0
    relayed_mark: int = -1


class UpstreamTasks:
    """The upstream of every connection id, and the task driving each."""

    def __init__(
        self,
        core: BridgeCore,
        endpoints: Endpoints,
        relay: Relay,
        perform: Callable[[list[Action]], None],
    ) -> None:
        self.core = core
        self.endpoints = endpoints  # opens sockets, over the transport of the id's endpoint
        self.relay = relay
        self.perform = perform  # the service's: what the core answers is performed there
        self._upstreams: dict[str, _Upstream] = {}
        self.idle = asyncio.Event()  # set while no task runs
        self.idle.set()

    def open(self, connection_id: str) -> None:
        """Start the task that opens ``connection_id``'s upstream and relays it."""
        self.idle.clear()
        upstream = self._upstreams[connection_id] = _Upstream(connection_id)
        upstream.task = asyncio.create_task(
            self._drive(upstream), name=f"bridge.upstream[{connection_id}]"
        )
        upstream.task.add_done_callback(functools.partial(self._driven, upstream))

    def abort(self, connection_id: str) -> None:
        """Drop the connection without a close handshake, or abandon its handshake."""
        upstream = self._upstreams[connection_id]
        if upstream.socket is not None:
            upstream.socket.abort()
        elif upstream.task is not None:
            upstream.task.cancel()  # the handshake is abandoned

    def socket(self, connection_id: str) -> AnyConnection:
        """The open socket of ``connection_id`` (the core sends only to open ones)."""
        socket = self._upstreams[connection_id].socket
        assert socket is not None, "the core sends only to open connections"
        return socket

    async def _drive(self, upstream: _Upstream) -> None:
        """Open one id's upstream and relay its events until it ends (supervised: _driven)."""
        socket = await self._open(upstream)
        if socket is not None:
            code, reason = await self._relay(upstream, socket)
            logger.info("[%s] upstream closed: %d %s", upstream.connection_id, code, reason)
            self._report(upstream, self.core.upstream_closed(upstream.connection_id, code, reason))

    def _driven(self, upstream: _Upstream, task: asyncio.Task[None]) -> None:
        """The task of one connection id is over: however it ended, the core learns how.

        An unexpected error is logged with its traceback and ends the
        connection (``disconnected`` 1011, or ``internal_error`` for a
        handshake), so the id can connect again; a task cancelled before it
        ever ran abandons its handshake.
        """
        connection_id = upstream.connection_id
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.error(
                "[%s] the bridge failed while driving this connection; it is ended",
                connection_id,
                exc_info=error,
            )
            if upstream.socket is not None:
                upstream.socket.abort()
        if not upstream.reported:
            if error is None and self.core.phase(connection_id) is Phase.OPENING:
                actions = self.core.upstream_failed(connection_id, "the handshake was abandoned")
            else:
                actions = self.core.connection_failed(connection_id)
            self._report(upstream, actions)
        self._forget(upstream)
        if self.core.idle:
            self.idle.set()

    async def _open(self, upstream: _Upstream) -> AnyConnection | None:
        """The open socket; None if the handshake failed or was abandoned (and reported)."""
        connection_id = upstream.connection_id
        started = time.monotonic()
        try:
            socket = await self.endpoints.open(self.core.profile_of(connection_id))
        except asyncio.CancelledError:
            failed = self.core.upstream_failed(connection_id, "the handshake was abandoned")
            self._report(upstream, failed)
            return None
        except UpstreamError as exc:
            logger.warning("[%s] upstream connect failed: %s", connection_id, exc)
            self._report(upstream, self.core.upstream_failed(connection_id, str(exc), exc.status))
            return None
        logger.info(
            "[%s] upstream open (%.0f ms)", connection_id, (time.monotonic() - started) * 1000
        )
        upstream.socket = socket
        self.perform(self.core.upstream_opened(connection_id))
        return socket

    async def _relay(self, upstream: _Upstream, socket: AnyConnection) -> tuple[int, str]:
        """Relay server events until the connection ends; its close code and reason."""
        try:
            return await socket.run(
                self.relay.deliverer(upstream.connection_id),
                functools.partial(self.relay.room, upstream),
                self.core.upstream_written,
            )
        except asyncio.CancelledError:
            socket.abort()
            return 1006, "the bridge stopped without a close handshake"

    def _report(self, upstream: _Upstream, actions: list[Action]) -> None:
        """Perform what the core answered to how this upstream ended.

        The upstream is forgotten first: those actions may open the id again.
        """
        upstream.reported = True
        self._forget(upstream)
        self.perform(actions)

    def _forget(self, upstream: _Upstream) -> None:
        if self._upstreams.get(upstream.connection_id) is upstream:
            del self._upstreams[upstream.connection_id]

    async def cancel_all(self) -> None:
        """Cancel every task and wait for them to end (each reports how, in _driven)."""
        tasks = [upstream.task for upstream in self._upstreams.values() if upstream.task]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # how each ended is _driven's business
