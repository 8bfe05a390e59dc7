"""The relay's hot path: a server event in, published, with room in the buffer.

:class:`Relay` gives each connection's reader its ``deliver`` (the plain one:
one core call and one publish per event; or, for a connection with device
output, the shaping one) and its ``room`` (a wait for the broker to take
events, which ends the connection with 1013 past ``limits.event_buffer_wait``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Final, Protocol

from bridge.daemon.buffer_waits import BufferWaits
from bridge.mqtt.link import MqttLink
from bridge.ops.observer import Observer
from bridge.protocol.actions import Action
from bridge.protocol.core import BridgeCore
from bridge.protocol.messages import Publish

logger = logging.getLogger(__name__)

BUFFER_FULL_CODE: Final = 1013  # "try again later": the broker side cannot take events now


class Reader(Protocol):
    """What :meth:`Relay.room` keeps on a reader between its tries."""

    connection_id: str
    waiting_since: float  # since when it waits for room
    relayed_mark: int  # the count of relayed events when it last came back from waiting


class Relay:
    """Events from every upstream reader to the broker link."""

    def __init__(
        self,
        core: BridgeCore,
        link: MqttLink,
        observer: Observer,
        perform: Callable[[list[Action]], None],
        buffer: BufferWaits,
    ) -> None:
        self.core = core
        self.link = link
        self.observer = observer
        self.perform = perform
        self._buffer = buffer
        self.events_relayed = 0  # server events the link took
        self.buffer_waits = 0  # times a reader had to wait for room in the buffer

    def deliverer(self, connection_id: str) -> Callable[[bytes], bool]:
        """The reader's ``deliver`` for one connection: the relay's hot path, kept short."""
        if self.core.shaped(connection_id):
            return self._shaped_deliverer(connection_id)
        upstream_event = self.core.upstream_event
        link = self.link
        publish = link.publish
        observer = self.observer

        def deliver(raw: bytes) -> bool:
            # Room first: the core takes each event exactly once (an end is charged, and
            # ends its turn, once), and the buffer then takes what the core returns.
            if link.full:
                return False  # the reader awaits room, then delivers again
            message = upstream_event(connection_id, raw)
            if not isinstance(message, Publish):  # an end acted on: a turn again, a tool round
                self.perform(message)
                return True
            publish(message)
            self.events_relayed += 1
            if message.outcome is not None:  # a completed response
                observer.observe(message.outcome)
            return True

        return deliver

    def _shaped_deliverer(self, connection_id: str) -> Callable[[bytes], bool]:
        """``deliver`` for a connection with device output (text, answer, status topics)."""
        shaped_event = self.core.shaped_event
        link = self.link

        def deliver(raw: bytes) -> bool:
            if link.full:  # room first: the output takes each event exactly once
                return False
            self.perform(shaped_event(connection_id, raw))
            self.events_relayed += 1
            return True

        return deliver

    async def room(self, upstream: Reader) -> None:
        """Wait until the buffer takes this reader's event, or end its connection (1013).

        A wait goes on across the reader's tries: back from here, a reader
        delivers at once, and if that fails it is back here before any other
        task runs, with no event relayed in between. Anything relayed since it
        was last here means a new wait.
        """
        if upstream.relayed_mark != self.events_relayed:
            upstream.waiting_since = asyncio.get_running_loop().time()
            self.buffer_waits += 1
        else:
            # Room came, and went to another reader first. Let the others run before
            # waiting again: a room() that returned with no room would otherwise spin.
            await asyncio.sleep(0)
        try:
            if await self._buffer.room(upstream.waiting_since):
                return
        finally:
            upstream.relayed_mark = self.events_relayed
        connection_id = upstream.connection_id
        logger.warning(
            "[%s] ending the connection: the broker has not taken events for %.0fs",
            connection_id,
            self._buffer.limit,
        )
        reason = "event buffer full: the broker or its subscribers are too slow"
        self.perform(self.core.end_connection(connection_id, BUFFER_FULL_CODE, reason))
