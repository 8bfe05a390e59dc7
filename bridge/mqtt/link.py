"""The broker side: aiomqtt 2.x behind a small interface.

:class:`MqttLink` keeps one link to the broker alive: it connects with the
last will ``offline`` on ``P/bridge/state``, publishes ``online`` (retained),
subscribes to ``P/+/cmd``, hands every inbound message to a callback, and
publishes what the :class:`~bridge.outbox.Outbox` holds with many messages in
flight. When the link drops it reconnects with backoff, resubscribes, and
publishes again whatever the broker had not acknowledged, in order.

Nothing above this module sees an aiomqtt or paho object.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.daemon.config import MqttConfig
from bridge.errors import BrokerError, BrokerRefused
from bridge.mqtt.outbox import Outbox
from bridge.mqtt.pipeline import PublishPipeline, paho_of
from bridge.mqtt.tls import fatal_tls_problem
from bridge.protocol.contract import Topics
from bridge.protocol.core import Publish, ReplyTo

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
# CONNACK reason codes that a retry will not fix (3.1.1 and v5 numbering).
_REFUSALS: Final = {
    4: "bad user name or password",
    5: "not authorized",
    134: "bad user name or password",
    135: "not authorized",
}


@dataclass(frozen=True, slots=True)
class Inbound:
    """A message that arrived on ``P/<id>/cmd``."""

    connection_id: str
    payload: bytes
    retained: bool
    reply_to: ReplyTo | None


def classify(exc: Exception, *, ever_connected: bool) -> BrokerError | None:
    """The retry policy: None if reconnecting may help, else the error to stop with.

    A refused login at the very first connect is a configuration mistake and
    stops the daemon; once we were connected, the broker may be restarting
    with its auth plugin not ready yet, so we keep trying.
    """
    if isinstance(exc, aiomqtt.MqttCodeError) and not ever_connected:
        rc = exc.rc
        code = rc if isinstance(rc, int) else -1 if rc is None else int(rc.value)
        reason = _REFUSALS.get(code)
        if reason is not None:
            return BrokerRefused(f"the broker refused the connection: {reason}")
    if not ever_connected:
        problem = fatal_tls_problem(exc)
        if problem is not None:
            return BrokerRefused(f"cannot connect to the broker: {problem}")
    if isinstance(exc, aiomqtt.MqttError | OSError | TimeoutError):
        return None
    return BrokerError(f"unexpected broker error: {exc!r}")


def backoff_delays(initial: float, maximum: float) -> Callable[[], float]:
    """Exponential backoff with jitter: ``initial`` doubling up to ``maximum``."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        delay = min(maximum, initial * float(2**attempt))
        attempt += 1
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)

    return next_delay


class _PahoLevels(logging.Filter):
    """paho logs a broker going away at ERROR; for us that is WARNING (we reconnect)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


PAHO_LOGGER: Final = logging.getLogger("bridge.paho")
PAHO_LOGGER.addFilter(_PahoLevels())


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
        self._connected_at: float | None = None
        # Seconds from handing a publish to paho to the broker's ack (metrics; None: not timed).
        self.on_published = on_published
        self._announcements: dict[str, bytes] = {}  # retained topics we keep set (bridge/info)
        self._listeners: dict[str, Callable[[bytes], None]] = {}
        self.outbox = Outbox(config.buffer_max_messages, config.buffer_max_bytes)
        self.connected = asyncio.Event()
        self.connects = 0
        self._v5 = config.protocol == "5"
        self._stop = asyncio.Event()
        self._stop_grace = 0.0

    @property
    def v5(self) -> bool:
        return self._v5

    def publish(self, publish: Publish) -> bool:
        """Queue a publish without waiting; False if a relayed event finds the buffer full."""
        return self.outbox.put(publish)

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
        next_delay = backoff_delays(
            self.config.reconnect_initial_delay, self.config.reconnect_max_delay
        )
        if not self._v5:
            await self._clean_session_once()
        while not self._stop.is_set():
            try:
                async with self._client(clean=self.connects == 0) as client:
                    await self._session(client)
                    return
            except (aiomqtt.MqttError, OSError, TimeoutError) as exc:
                fatal = classify(exc, ever_connected=self.connects > 0)
                if fatal is not None:
                    raise fatal from exc
                self._lost(exc)
            connected_at, self._connected_at = self._connected_at, None
            if connected_at is not None and time.monotonic() - connected_at >= HELD_SECONDS:
                next_delay = backoff_delays(
                    self.config.reconnect_initial_delay, self.config.reconnect_max_delay
                )
            delay = next_delay()
            logger.warning(
                "broker %s:%d unreachable; retrying in %.1fs",
                self.config.host,
                self.config.port,
                delay,
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

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        """Subscribe to ``topic`` (an exact name) on every connect; call ``callback(payload)``."""
        self._listeners[topic] = callback

    # Internals -------------------------------------------------------------------

    def _client(self, *, clean: bool) -> aiomqtt.Client:
        config = self.config
        connect_properties = None
        if self._v5:
            connect_properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
            connect_properties.SessionExpiryInterval = config.session_expiry
            connect_properties.ReceiveMaximum = RECEIVE_MAXIMUM
            if self.max_packet_bytes is not None:
                connect_properties.MaximumPacketSize = self.max_packet_bytes
        client = aiomqtt.Client(
            config.host,
            config.port,
            identifier=config.client_id,
            username=config.username,
            password=self.password,
            protocol=aiomqtt.ProtocolVersion.V5 if self._v5 else aiomqtt.ProtocolVersion.V311,
            will=aiomqtt.Will(self.topics.state, OFFLINE, qos=1, retain=True),
            # A fresh process starts a fresh session (stale commands are
            # dropped); a reconnect resumes it, so the broker keeps the
            # commands published while we were away.
            clean_session=None if self._v5 else False,
            # paho refuses any other value under 3.1.1 (clean_session decides there).
            clean_start=clean if self._v5 else paho_client.MQTT_CLEAN_START_FIRST_ONLY,
            properties=connect_properties,
            keepalive=config.keepalive,
            timeout=config.connect_timeout,
            max_inflight_messages=config.max_inflight,
            logger=PAHO_LOGGER,
            tls_context=self.tls,
        )
        # Each message is handled in paho's callback, as paho reads it from the
        # socket in the event loop: nothing waits in a queue, so a flood costs
        # one message's memory at a time. It is acknowledged once handled.
        paho = paho_of(client)
        paho.manual_ack_set(True)
        paho.on_message = self._on_paho_message
        return client

    async def _clean_session_once(self) -> None:
        """MQTT 3.1.1 has no clean-start-then-keep: wipe the old session with one clean visit."""
        client = aiomqtt.Client(
            self.config.host,
            self.config.port,
            identifier=self.config.client_id,
            username=self.config.username,
            password=self.password,
            clean_session=True,
            timeout=self.config.connect_timeout,
            logger=PAHO_LOGGER,
            tls_context=self.tls,
        )
        with contextlib.suppress(aiomqtt.MqttError, OSError, TimeoutError):
            async with client:
                pass

    async def _session(self, client: aiomqtt.Client) -> None:
        timeout = self.config.connect_timeout
        # Subscribe first: a client that sees `online` may publish a command at once.
        # MQTT v5 keeps the retain flag of live deliveries (Retain As Published),
        # so a retained command is refused even when it is published while we run.
        if self._v5:
            await client.subscribe(
                self.topics.command_filter,
                options=SubscribeOptions(qos=1, retainAsPublished=True),
                timeout=timeout,
            )
        else:
            await client.subscribe(self.topics.command_filter, qos=1, timeout=timeout)
        for topic in self._listeners:
            await client.subscribe(topic, qos=1, timeout=timeout)
        await client.publish(self.topics.state, ONLINE, qos=1, retain=True, timeout=timeout)
        # From here on every publish goes through the pipeline: it owns paho's on_publish.
        pipeline = PublishPipeline(client, self.outbox, on_published=self.on_published)
        for topic, payload in self._announcements.items():  # the broker may have lost them
            self._queue_retained(topic, payload)
        self.connects += 1
        self._connected_at = time.monotonic()
        logger.info(
            "connected to broker %s:%d, subscribed to %s",
            self.config.host,
            self.config.port,
            self.topics.command_filter,
        )
        self.connected.set()
        tasks = [
            asyncio.create_task(pipeline.run(), name="bridge.mqtt_out"),
            asyncio.create_task(self._receive_loop(client), name="bridge.mqtt_in"),
        ]
        stop = asyncio.create_task(self._stop.wait(), name="bridge.mqtt_stop")
        try:
            try:
                # The publisher and the receiver only end by failing: the link broke.
                done, _ = await asyncio.wait([*tasks, stop], return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is not stop:
                        task.result()  # raises the link's error
                        raise aiomqtt.MqttError("the receive loop ended")
                await self._flush()
            finally:
                for task in [*tasks, stop]:
                    task.cancel()
                await asyncio.gather(*tasks, stop, return_exceptions=True)
                pipeline.close()
            await self._say_offline(client)
        except BaseException:
            # An error, a bug or a second signal: the clean DISCONNECT that follows
            # would keep the broker from sending our will, so say it ourselves.
            self._say_offline_now(client)
            raise
        finally:
            self.connected.clear()

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

    async def _say_offline(self, client: aiomqtt.Client) -> None:
        await client.publish(
            self.topics.state, OFFLINE, qos=1, retain=True, timeout=self.config.connect_timeout
        )
        logger.info("said offline; disconnecting from the broker")

    def _say_offline_now(self, client: aiomqtt.Client) -> None:
        """Queue ``offline`` (QoS 0: paho writes it at once, ahead of the DISCONNECT)."""
        try:
            paho_of(client).publish(self.topics.state, OFFLINE, qos=0, retain=True)
        except Exception as exc:  # the link may be gone: then the broker sends the will
            logger.debug("could not queue offline: %r", exc)

    def _lost(self, exc: BaseException) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        requeued = self.outbox.requeue_unacknowledged()
        if was_connected:
            logger.warning(
                "lost the broker (%s); %d messages wait for it (%d unacknowledged)",
                exc,
                len(self.outbox),
                requeued,
            )

    async def _receive_loop(self, client: aiomqtt.Client) -> None:
        """Wait for the link to drop (messages are handled by :meth:`_on_paho_message`)."""
        async for _ in client.messages:
            pass

    def _on_paho_message(
        self, client: paho_client.Client, userdata: object, message: paho_client.MQTTMessage
    ) -> None:
        try:
            self._dispatch(message)
        except Exception:
            # No message may end the link, and with it the daemon.
            logger.exception("failed to handle a message (mid %d)", message.mid)
        client.ack(message.mid, message.qos)

    def _dispatch(self, message: paho_client.MQTTMessage) -> None:
        topic = message.topic
        payload = bytes(message.payload)
        connection_id = self.topics.connection_id_of(topic)
        if connection_id is None:
            listener = self._listeners.get(topic)
            if listener is not None:
                listener(payload)
            return
        self.on_message(Inbound(connection_id, payload, bool(message.retain), _reply_to(message)))


def _reply_to(message: paho_client.MQTTMessage) -> ReplyTo | None:
    properties = message.properties
    topic = getattr(properties, "ResponseTopic", None) if properties else None
    if not topic:
        return None
    correlation = getattr(properties, "CorrelationData", None)
    return ReplyTo(str(topic), bytes(correlation) if correlation is not None else None)
