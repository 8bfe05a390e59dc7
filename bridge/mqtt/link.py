"""The broker side: one resilient link, over one :class:`~bridge.mqtt.client.BrokerConnection`.

:class:`MqttLink` keeps a link to the broker alive: it connects with the
last will ``offline`` on ``P/bridge/state``, subscribes to ``P/+/cmd``,
publishes ``online`` (retained), hands every inbound command to a callback,
and publishes what the :class:`~bridge.mqtt.outbox.Outbox` holds. On every
connect it logs which broker it reached: its address, and its version where
the broker tells it on ``$SYS/broker/version`` (subscribed to once, until the
answer or :data:`VERSION_WAIT`). When the
link drops it reconnects with backoff, resubscribes, and publishes again,
in order, whatever the broker had not acknowledged. However it stops, it
says ``offline`` first.

This module decides what to do; :mod:`bridge.mqtt.client` (with
:mod:`bridge.mqtt.paho_client`) is the only one that touches paho.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from paho.mqtt.client import topic_matches_sub

from bridge.backoff import backoff_delays
from bridge.config.sections import MqttConfig
from bridge.errors import BrokerError
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.errors import fatal_error
from bridge.mqtt.outbox import Outbox
from bridge.protocol.contract import Topics
from bridge.protocol.messages import Publish, ReplyTo

logger = logging.getLogger(__name__)

ONLINE: Final = b"online"
OFFLINE: Final = b"offline"
# A broker link that stayed up this long resets the reconnect backoff: a broker
# restarted now and then is retried at once, one that flaps is backed off.
HELD_SECONDS: Final = 10.0
# QoS 1 commands the broker may send us before we acknowledge one. We
# acknowledge a command once it is handled, so this many (each at most the
# maximum packet size) is all that can wait in memory on our side.
RECEIVE_MAXIMUM: Final = 16
# Where Mosquitto (and others) say what they are, retained; how long we wait for it.
BROKER_VERSION: Final = "$SYS/broker/version"
VERSION_WAIT: Final = 2.0


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message that arrived on ``P/<id>/cmd``."""

    connection_id: str
    payload: bytes
    retained: bool
    reply_to: ReplyTo | None


class MqttLink:
    """One resilient link to the broker: publish, subscribe, reconnect."""

    def __init__(
        self,
        config: MqttConfig,
        topics: Topics,
        on_message: Callable[[Inbound], None],
        *,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        max_packet_bytes: int | None = None,
        on_published: Callable[[float], None] | None = None,
    ) -> None:
        self.config = config
        self.topics = topics
        self.on_message = on_message
        self.password = password
        self.tls = tls
        # MQTT v5: the largest packet the broker may send us; larger ones it drops.
        self.max_packet_bytes = max_packet_bytes
        # Seconds from handing a publish to paho to the broker's ack (metrics; None: not timed).
        self.on_published = on_published
        self._announcements: dict[str, bytes] = {}  # retained topics we keep set (bridge/info)
        self._listeners: dict[str, Callable[[bytes], None]] = {}
        # Tool reply topics, cluster topics: callback(topic, payload, retained, correlation).
        self._reply_listeners: dict[str, Callable[[str, bytes, bool, bytes | None], None]] = {}
        self._filter_listeners: dict[str, Callable[[str, bytes, bool, bytes | None], None]] = {}
        # Whether a clean stop says `offline` on P/bridge/state (not while other instances
        # of the prefix still run).
        self.offline_at_stop: Callable[[], bool] = lambda: True
        # Called as each connection starts, before anything can arrive on it.
        self.on_connecting: Callable[[], None] = lambda: None
        self.outbox = Outbox(config.buffer_max_messages, config.buffer_max_bytes)
        self.connected = asyncio.Event()
        self.connects = 0
        self._v5 = config.protocol == "5"
        self._stop = asyncio.Event()
        self._stop_grace = 0.0
        self._current: BrokerConnection | None = None  # while a session runs
        self._subscribing: set[asyncio.Task[None]] = set()  # subscriptions made while it runs
        self._version: asyncio.Future[bytes] | None = None  # $SYS/broker/version, awaited

    @property
    def v5(self) -> bool:
        return self._v5

    def publish(self, publish: Publish) -> bool:
        """Queue a publish without waiting; False if a relayed event finds the buffer full."""
        return self.outbox.put(publish)

    @property
    def full(self) -> bool:
        """:meth:`publish` would refuse a relayed event now."""
        return self.outbox.full

    async def room(self) -> None:
        """Wait until :meth:`publish` takes relayed events again."""
        await self.outbox.wait_for_space()

    @property
    def buffered_messages(self) -> int:
        """Messages waiting for the broker or its acknowledgement."""
        return len(self.outbox)

    @property
    def buffered_bytes(self) -> int:
        """Their payload bytes."""
        return self.outbox.size_bytes

    async def run(self) -> None:
        """Hold the link until :meth:`stop`; raise BrokerError if retrying cannot help."""
        config = self.config
        next_delay = backoff_delays(config.reconnect_initial_delay, config.reconnect_max_delay)
        if not self._v5:
            await self._clean_session_once()
        while not self._stop.is_set():
            connected_at: float | None = None
            try:
                self.on_connecting()  # before anything can arrive on the new connection
                connection = self._connection(clean=self.connects == 0)
                try:
                    await connection.open()
                except BaseException:
                    await connection.close(grace=0)  # a socket may be open: let go of it
                    raise
                clean_exit = False
                try:
                    connected_at = time.monotonic()
                    await self._session(connection)
                    clean_exit = True
                finally:
                    # Any other way out (an error, a bug, a second signal): a clean
                    # DISCONNECT keeps the broker from sending our will, so say it.
                    offline = None if clean_exit else (self.topics.state, OFFLINE)
                    await connection.close(say=offline)
                return
            except (BrokerError, OSError, TimeoutError) as exc:
                fatal = fatal_error(exc, ever_connected=self.connects > 0)
                if fatal is not None:
                    raise fatal from exc
                self._lost(exc, was_up=connected_at is not None)
            if connected_at is not None and time.monotonic() - connected_at >= HELD_SECONDS:
                next_delay = backoff_delays(
                    config.reconnect_initial_delay, config.reconnect_max_delay
                )
            delay = next_delay()
            logger.warning(
                "broker %s:%d unreachable; retrying in %.1fs", config.host, config.port, delay
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    def stop(self, grace: float) -> None:
        """Ask :meth:`run` to flush the buffer (up to ``grace`` s), say offline, disconnect."""
        self._stop_grace = grace
        self._stop.set()

    def announce(self, topic: str, payload: bytes) -> None:
        """Keep ``payload`` retained on ``topic`` (QoS 1): published now, and after each reconnect.

        It joins the outbox behind what is already queued; the last one published wins.
        """
        self._announcements[topic] = payload
        if self.connected.is_set():
            self._queue_retained(topic, payload)

    def reannounce(self) -> None:
        """Publish ``online`` and every announcement again (a consumer asked, e.g. HA restarted)."""
        if not self.connected.is_set():
            return  # the next connect announces everything anyway
        if not self._stop.is_set():  # stopping: `offline` is on its way
            self._queue_retained(self.topics.state, ONLINE)
        for topic, payload in self._announcements.items():
            self._queue_retained(topic, payload)

    def retract(self, topic: str) -> None:
        """Stop announcing ``topic`` and clear it: an empty retained message (QoS 1)."""
        if self._announcements.pop(topic, None) is not None:
            self._queue_retained(topic, b"")

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic`` (an exact name) on every connect, and now if connected;
        call ``callback(payload)``."""
        if topic not in self._listeners:
            self._subscribe_now(topic)
        self._listeners[topic] = callback

    def listen_for_replies(
        self, topic: str, callback: Callable[[str, bytes, bool, bytes | None], None]
    ) -> None:
        """As :meth:`listen`, for replies: ``callback(topic, payload, retained, correlation)``."""
        if topic not in self._reply_listeners:
            self._subscribe_now(topic)
        self._reply_listeners[topic] = callback

    def listen_filter(
        self, topic_filter: str, callback: Callable[[str, bytes, bool, bytes | None], None]
    ) -> None:
        """As :meth:`listen_for_replies`, for a filter with wildcards (``P/bridge/claims/+``)."""
        self._filter_listeners[topic_filter] = callback

    # Internals -------------------------------------------------------------------

    def _subscribe_now(self, topic: str) -> None:
        """A listener added while a session runs (a reloaded config): subscribe at once.

        A session that is starting may subscribe it too: subscribing twice is harmless.
        """
        connection = self._current
        if connection is None:
            return  # the next connect subscribes it

        async def subscribe() -> None:
            try:
                await connection.subscribe(topic)
            except BrokerError as exc:  # refused (an ACL) or the link lost: say so, go on
                logger.warning("cannot subscribe to %s: %s", topic, exc)

        task = asyncio.create_task(subscribe(), name="bridge.mqtt_subscribe")
        self._subscribing.add(task)
        task.add_done_callback(self._subscribing.discard)

    async def _identify(self, connection: BrokerConnection) -> None:
        """Log which broker this is: its version, if it says it on ``$SYS/broker/version``."""
        told = self._version = asyncio.get_running_loop().create_future()
        version: bytes | None = None
        try:
            async with asyncio.timeout(VERSION_WAIT):
                await connection.subscribe(BROKER_VERSION)
                version = await told
        except (BrokerError, TimeoutError):
            pass  # not a broker that says (or lets us read) it
        finally:
            self._version = None
        connection.unsubscribe(BROKER_VERSION)
        address = f"{self.config.host}:{self.config.port}"
        if version:
            text = "".join(c for c in version.decode(errors="replace")[:100] if c.isprintable())
            logger.info("broker %s is %s", address, text.strip())
        else:
            logger.info("broker %s does not say its version (%s)", address, BROKER_VERSION)

    def _connection(self, *, clean: bool, will: bool = True) -> BrokerConnection:
        properties = {"ReceiveMaximum": RECEIVE_MAXIMUM}
        if self.max_packet_bytes is not None:
            properties["MaximumPacketSize"] = self.max_packet_bytes
        return BrokerConnection(
            self.config,
            # A fresh process starts a fresh session (stale commands are dropped);
            # a reconnect resumes it, so the broker keeps what was published meanwhile.
            clean_start=clean,
            will=(self.topics.state, OFFLINE) if will else None,
            on_message=self._dispatch,
            password=self.password,
            tls=self.tls,
            connect_properties=properties,
        )

    async def _clean_session_once(self) -> None:
        """MQTT 3.1.1 has no clean-start-then-keep: wipe the old session with one clean visit."""
        connection = self._connection(clean=True, will=False)
        try:
            await connection.open()
        except (BrokerError, OSError, TimeoutError):
            pass  # the real connect will say what is wrong
        finally:
            await connection.close()

    async def _session(self, connection: BrokerConnection) -> None:
        self._current = connection
        try:
            await self._subscribed_session(connection)
        finally:
            self._current = None
            for task in list(self._subscribing):
                task.cancel()

    async def _subscribed_session(self, connection: BrokerConnection) -> None:
        # Subscribe first: a client that sees `online` may publish a command at once.
        # MQTT v5 keeps the retain flag of live deliveries (Retain As Published),
        # so a retained command is refused even when it is published while we run.
        await connection.subscribe(self.topics.command_filter, retain_as_published=self._v5)
        for topic in [*self._listeners, *self._reply_listeners, *self._filter_listeners]:
            await connection.subscribe(topic)
        # `online` goes out first, then what waited for the broker, then the announcements
        # (the broker may have lost them).
        self.outbox.put_first(Publish(self.topics.state, ONLINE, 1, retain=True))
        for topic, payload in self._announcements.items():
            self._queue_retained(topic, payload)
        self.connects += 1
        logger.info(
            "connected to broker %s:%d, subscribed to %s",
            self.config.host,
            self.config.port,
            self.topics.command_filter,
        )
        self.connected.set()
        pipeline = asyncio.create_task(
            connection.publish_outbox(self.outbox, on_published=self.on_published),
            name="bridge.mqtt_out",
        )
        stop = asyncio.create_task(self._stop.wait(), name="bridge.mqtt_stop")
        identify = asyncio.create_task(self._identify(connection), name="bridge.mqtt_identify")
        try:
            done, _ = await asyncio.wait([pipeline, stop], return_when=asyncio.FIRST_COMPLETED)
            if pipeline in done:
                pipeline.result()  # raises: the link was lost
            if self.offline_at_stop():
                self._queue_retained(self.topics.state, OFFLINE)
            await self._flush()
        finally:
            self.connected.clear()
            for task in (pipeline, stop, identify):
                task.cancel()
            await asyncio.gather(pipeline, stop, identify, return_exceptions=True)
        logger.info("said offline; disconnecting from the broker")

    def _queue_retained(self, topic: str, payload: bytes) -> None:
        self.outbox.put(Publish(topic, payload, 1, retain=True))

    async def _flush(self) -> None:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._stop_grace):
                await self.outbox.wait_empty()
        if len(self.outbox):
            logger.warning(
                "stopping with %d messages not delivered to the broker", len(self.outbox)
            )

    def _lost(self, exc: BaseException, *, was_up: bool) -> None:
        self.connected.clear()
        requeued = self.outbox.requeue_unacknowledged()
        if was_up:
            logger.warning(
                "lost the broker (%s); %d messages wait for it (%d unacknowledged)",
                exc,
                len(self.outbox),
                requeued,
            )

    def _dispatch(
        self,
        topic: str,
        payload: bytes,
        retained: bool,
        reply_to: ReplyTo | None,
        correlation: bytes | None,
    ) -> None:
        if topic == BROKER_VERSION:
            if self._version is not None and not self._version.done():
                self._version.set_result(payload)
            return
        connection_id = self.topics.connection_id_of(topic)
        if connection_id is None:
            listener = self._listeners.get(topic)
            if listener is not None:
                listener(payload)
            replies = self._reply_listeners.get(topic)
            if replies is not None:
                replies(topic, payload, retained, correlation)
            for topic_filter, callback in self._filter_listeners.items():
                if topic_matches_sub(topic_filter, topic):
                    callback(topic, payload, retained, correlation)
            return
        self.on_message(Inbound(connection_id, payload, retained, reply_to))
