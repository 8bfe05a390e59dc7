"""The supervisor: wires the MQTT link and the upstream sockets to the core.

It owns every task: the broker link, one opener per connection id being
opened, one runner per open connection. It feeds the core each fact and
performs the actions the core returns, in order. Shutdown follows a fixed
order: stop taking commands, close every upstream with 1001 and publish a
close acknowledgement for each, flush the buffer, say ``offline``,
disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Final

from bridge.daemon import logs
from bridge.daemon.config import Settings
from bridge.errors import UpstreamError
from bridge.mqtt.link import Inbound, MqttLink
from bridge.ops.observer import COMPLETED_PREFIX, Observer
from bridge.protocol.contract import ResponseTopicPolicy, Topics
from bridge.protocol.core import (
    AbortUpstream,
    Action,
    BridgeCore,
    CloseUpstream,
    Limits,
    OpenUpstream,
    Publish,
    SendUpstream,
)
from bridge.upstream.connection import Upstream, UpstreamConnection

logger = logging.getLogger(__name__)

BUFFER_FULL_CODE: Final = 1013  # "try again later": the broker side cannot take events now
BROKER_FLUSH_GRACE: Final = 5.0  # seconds to deliver what is buffered once upstreams are closed
# Room in an inbound packet for its topic and properties besides the payload.
PACKET_OVERHEAD_BYTES: Final = 256 * 1024


class Service:
    """The running daemon: one broker link, many upstream connections, one core."""

    def __init__(self, settings: Settings) -> None:
        config = settings.config
        self.settings = settings
        self.topics = Topics(config.mqtt.topic_prefix)
        self.core = BridgeCore(
            self.topics,
            url=settings.endpoint.display_url,
            qos=config.mqtt.qos,
            limits=Limits(
                max_connections=config.limits.max_connections,
                max_command_bytes=config.limits.max_command_bytes,
                allowed_event_types=frozenset(config.limits.allowed_event_types),
                commands_per_second=config.limits.commands_per_second,
                command_burst=config.limits.command_burst,
                dedupe_seconds=config.limits.dedupe_seconds or None,
                max_waiting_bytes=config.limits.max_waiting_bytes,
            ),
            v5=config.mqtt.protocol == "5",
            redactor=settings.redactor,
            response_topics=ResponseTopicPolicy(
                allowed=config.mqtt.response_topics,
                refused=(f"{self.topics.prefix}/#", f"{config.homeassistant.prefix}/#"),
            ),
        )
        # websockets logs handshake headers (Authorization) and the URL at DEBUG;
        # the handler logs.setup installs scrubs every line, this covers other handlers.
        logs.redact(settings.redactor, "bridge.websockets", "bridge.paho")
        self.upstream = Upstream(settings.endpoint, config.openai)
        self.link = MqttLink(
            config.mqtt,
            self.topics,
            self._on_inbound,
            password=settings.mqtt_password.value if settings.mqtt_password else None,
            tls=settings.mqtt_tls,
            # Commands up to twice the limit still get `payload_too_large`; the
            # broker drops larger ones before they cost us memory (MQTT v5).
            max_packet_bytes=2 * config.limits.max_command_bytes + PACKET_OVERHEAD_BYTES,
        )
        self.observer = Observer()  # bridge.ops.Operations when run as the daemon
        self.events_relayed = 0  # server events the outbox took
        self._waiting_for_room = 0  # connections whose reader waits for room in the buffer
        self._full_since = 0.0
        self._full_ended = 0  # connections ended in the current full-buffer episode
        self._observed_count = 0
        self._openers: dict[str, asyncio.Task[None]] = {}
        self._connections: dict[str, UpstreamConnection] = {}
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def ready(self) -> asyncio.Event:
        """Set while the broker link is up and commands are subscribed."""
        return self.link.connected

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], object] | None = None) -> None:
        """Run until ``stop`` is set, then shut down in order; raise if the link is fatal."""
        link = asyncio.create_task(self.link.run(), name="bridge.mqtt_link")
        ready = asyncio.create_task(self.link.connected.wait(), name="bridge.ready")
        stopping = asyncio.create_task(stop.wait(), name="bridge.stop")
        try:
            done, _ = await asyncio.wait(
                [link, ready, stopping], return_when=asyncio.FIRST_COMPLETED
            )
            if ready in done and on_ready is not None:
                on_ready()
            if not done & {link, stopping}:
                done, _ = await asyncio.wait([link, stopping], return_when=asyncio.FIRST_COMPLETED)
            if link in done:
                link.result()  # raises the fatal broker error that ended the link
                return
            await self._shutdown()
            await link
        finally:
            for task in (ready, stopping):
                task.cancel()
            await self._cancel_all()
            # However run ends (an error, a second signal), the link says `offline`
            # before it goes: give it the time to.
            link.cancel()
            await asyncio.wait([link], timeout=BROKER_FLUSH_GRACE)

    # Inbound facts ------------------------------------------------------------------

    def _on_inbound(self, message: Inbound) -> None:
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "[%s] < command %s%s",
                message.connection_id,
                message.payload[:75],
                " (retained)" if message.retained else "",
            )
        try:
            actions = self.core.receive_command(
                message.connection_id,
                message.payload,
                retained=message.retained,
                reply_to=message.reply_to,
                now=time.monotonic(),
            )
        except Exception:
            # A bug, never a client's doing: contained to this one command.
            logger.exception(
                "[%s] handling a command failed; it is answered with internal_error",
                message.connection_id,
            )
            actions = self.core.internal_error(message.connection_id, message.payload)
        self._perform(actions)

    def _on_event(self, connection_id: str, raw: bytes) -> bool:
        if not self.link.publish(self.core.upstream_event(connection_id, raw)):
            return False
        self.events_relayed += 1
        if raw.startswith(COMPLETED_PREFIX):
            self.observer.response_completed(connection_id, raw)
        return True

    async def _on_full(self, connection_id: str, raw: bytes) -> None:
        """The buffer is full: wait for room, or end this connection with a notice.

        One warning per episode, however many connections wait in it (at
        scale, thousands can), and one line when no reader waits any more.
        """
        wait = self.settings.config.limits.event_buffer_wait
        if not self._waiting_for_room:
            self._full_since = time.monotonic()
            self._full_ended = 0
            logger.warning(
                "event buffer full (%d messages): reading from upstream pauses until the "
                "broker takes more (up to %.0fs per connection)",
                len(self.link.outbox),
                wait,
            )
        self._waiting_for_room += 1
        try:
            async with asyncio.timeout(wait):
                while not self._on_event(connection_id, raw):
                    await self.link.outbox.wait_for_space()
        except TimeoutError:
            logger.warning(
                "[%s] ending the connection: the broker has not taken events for %.0fs",
                connection_id,
                wait,
            )
            reason = "event buffer full: the broker or its subscribers are too slow"
            self._perform(self.core.end_connection(connection_id, BUFFER_FULL_CODE, reason))
            self._full_ended += 1
        finally:
            self._waiting_for_room -= 1
            if not self._waiting_for_room:
                logger.info(
                    "event buffer: no reader waits any more, after %.1fs (%d connections ended)",
                    time.monotonic() - self._full_since,
                    self._full_ended,
                )

    # Actions ---------------------------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Publish():
                    self.link.publish(action)
                    self.observer.bridge_message(action)
                case OpenUpstream(connection_id):
                    self._idle.clear()
                    self._openers[connection_id] = asyncio.create_task(
                        self._open(connection_id), name=f"bridge.open[{connection_id}]"
                    )
                case SendUpstream(connection_id, data):
                    self._connections[connection_id].send(data)
                case CloseUpstream(connection_id, code, reason):
                    self._connections[connection_id].close(code, reason)
                case AbortUpstream(connection_id):
                    if connection_id in self._openers:
                        self._openers[connection_id].cancel()
                    else:
                        self._connections[connection_id].abort()
        if self.core.connection_count != self._observed_count:
            self._observed_count = self.core.connection_count
            self.observer.connections_changed(self._observed_count)

    async def _open(self, connection_id: str) -> None:
        started = time.monotonic()
        try:
            connection = await self.upstream.open()
        except asyncio.CancelledError:
            self._openers.pop(connection_id, None)
            self._perform(self.core.upstream_failed(connection_id, "the handshake was abandoned"))
            self._note_idle()
            return
        except UpstreamError as exc:
            self._openers.pop(connection_id, None)
            logger.warning("[%s] upstream connect failed: %s", connection_id, exc)
            self._perform(self.core.upstream_failed(connection_id, str(exc), exc.status))
            self._note_idle()
            return
        self._openers.pop(connection_id, None)
        logger.info(
            "[%s] upstream open (%.0f ms)", connection_id, (time.monotonic() - started) * 1000
        )
        self._connections[connection_id] = connection
        self._runners[connection_id] = asyncio.create_task(
            self._relay(connection_id, connection), name=f"bridge.relay[{connection_id}]"
        )
        self._perform(self.core.upstream_opened(connection_id))

    async def _relay(self, connection_id: str, connection: UpstreamConnection) -> None:
        try:
            code, reason = await connection.run(
                lambda raw: self._on_event(connection_id, raw),
                lambda raw: self._on_full(connection_id, raw),
                self.core.upstream_written,
            )
        except asyncio.CancelledError:
            connection.abort()
            code, reason = 1006, "the bridge stopped without a close handshake"
        finally:
            self._connections.pop(connection_id, None)
            self._runners.pop(connection_id, None)
        logger.info("[%s] upstream closed: %d %s", connection_id, code, reason)
        self._perform(self.core.upstream_closed(connection_id, code, reason))
        self._note_idle()

    def _note_idle(self) -> None:
        if self.core.idle:
            self._idle.set()

    # Shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        grace = self.settings.config.shutdown.grace_seconds
        logger.info("stopping: closing %d upstream connections", self.core.connection_count)
        self._perform(self.core.begin_shutdown())
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "%d upstream connections did not close within %.0fs; dropping them",
                self.core.connection_count,
                grace,
            )
            await self._cancel_all()
        self.link.stop(BROKER_FLUSH_GRACE)

    async def _cancel_all(self) -> None:
        tasks = [*self._openers.values(), *self._runners.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
