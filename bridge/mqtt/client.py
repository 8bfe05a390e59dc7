"""The one owner of the paho client: paho driven from the event loop, with no thread.

:class:`BrokerConnection` is one connection to the broker. It has the
paho client built, opens the socket (in an executor: DNS, TCP and TLS block), then
drives it the way Home Assistant's MQTT client does: paho's socket callbacks
register ``loop.add_reader``/``add_writer``, so paho reads and writes on the
event loop thread, and a one-second timer runs ``loop_misc`` (keepalive).
The paho client's callbacks stay in this module (:mod:`bridge.mqtt.paho_client`
builds the client, :mod:`bridge.mqtt.properties` the MQTT 5 properties of what
it publishes).

Inbound: each message is handled in ``on_message`` as paho reads it and
acknowledged once handled (manual acks), so no queue of commands builds up
however fast a client publishes (README, Security).

Outbound: :meth:`BrokerConnection.publish_outbox` hands the outbox to paho,
up to :data:`PUBLISH_WINDOW` messages in flight, awaiting nothing per
message. The socket callbacks complete them, in order:

- the reader: paho marks a QoS 1 or 2 message published when the broker
  acknowledges it (brokers acknowledge in order). paho's ``on_publish`` is
  never set: whenever it is, paho builds a reason code and a properties
  object for every QoS 0 message it writes (a fifth of the CPU time of a
  QoS 0 relay).
- the writer: paho writes its queue into a
  :class:`~bridge.mqtt.write_buffer.WriteBuffer`, which sends it with one
  system call, not one per packet. Once paho holds nothing and the buffer
  is empty, every QoS 0 message handed to paho is on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import ssl
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Literal

from paho.mqtt import client as paho
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from bridge.config.sections import MqttConfig
from bridge.mqtt.errors import BrokerRefusedConnection, BrokerUnavailable, LinkLost
from bridge.mqtt.outbox import Entry, Outbox
from bridge.mqtt.paho_client import connect_packet_properties, paho_client
from bridge.mqtt.properties import correlation_of, properties_of, reply_to_of
from bridge.mqtt.write_buffer import no_delay
from bridge.protocol.messages import ReplyTo

logger = logging.getLogger(__name__)

# Messages handed to paho and not yet completed. Enough to keep the broker's
# in-flight window full (Mosquitto's Receive Maximum is 20) and writes
# batched; not more, because paho scans every message it holds on every
# acknowledgement (Client._update_inflight): bench.relay_throughput measured
# 52-55 us of CPU per QoS 1 event with 256, 45-51 with 64, worse again with 16.
PUBLISH_WINDOW: Final = 64
MISC_INTERVAL: Final = 1.0  # seconds between paho's keepalive checks

# A message handed to paho: its outbox entry, paho's handle on it, when (for on_published)
_Handed = tuple[Entry, paho.MQTTMessageInfo, float]
# topic, payload, retained, where a v5 command wants its reply, the message's Correlation Data
OnMessage = Callable[[str, bytes, bool, ReplyTo | None, bytes | None], None]


class BrokerConnection:
    """One connection to the broker, through one paho client that nothing else touches."""

    def __init__(
        self,
        config: MqttConfig,
        *,
        clean_start: bool,
        will: tuple[str, bytes] | None,
        on_message: OnMessage,
        password: str | None = None,
        tls: ssl.SSLContext | None = None,
        connect_properties: dict[str, int] | None = None,
    ) -> None:
        self.config = config
        self._v5 = config.protocol == "5"
        self._clean_start = clean_start
        self._on_message = on_message
        self._loop = asyncio.get_running_loop()
        self._connack: asyncio.Future[ReasonCode] = self._loop.create_future()
        self._lost: asyncio.Future[str] = self._loop.create_future()
        self._subscribes: dict[int, asyncio.Future[list[ReasonCode]]] = {}
        self._misc: asyncio.TimerHandle | None = None
        self._client = client = paho_client(
            config, clean_start=clean_start, will=will, password=password, tls=tls
        )
        self._buffer, self._reads = client.write_buffer, client.read_buffer
        self._connect_properties = connect_packet_properties(config, connect_properties)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_paho_message
        client.on_socket_close = self._on_socket_close
        # The publish path (see the module docstring).
        self._outbox: Outbox | None = None
        self._observe: Callable[[float], None] | None = None
        self._unacknowledged: deque[_Handed] = deque()  # QoS 1-2
        self._unwritten: deque[_Handed] = deque()  # QoS 0
        self._room = asyncio.Event()

    # Connecting and disconnecting -----------------------------------------------------

    async def open(self) -> None:
        """Connect and wait for the CONNACK; raise BrokerError, OSError or TimeoutError."""
        client = self._client
        # While paho connects in the executor, its socket callbacks come from that thread.
        client.on_socket_open = self._from_thread(self._on_socket_open)
        client.on_socket_register_write = self._from_thread(self._on_socket_register_write)
        try:
            clean: bool | Literal[3] = (
                self._clean_start if self._v5 else paho.MQTT_CLEAN_START_FIRST_ONLY
            )
            rc = await self._loop.run_in_executor(
                None,
                functools.partial(
                    client.connect,
                    self.config.host,
                    self.config.port,
                    self.config.keepalive,
                    clean_start=clean,
                    properties=self._connect_properties,
                ),
            )
        finally:
            client.on_socket_open = self._on_socket_open
            client.on_socket_register_write = self._on_socket_register_write
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise LinkLost(f"cannot connect: {paho.error_string(rc)}")
        async with asyncio.timeout(self.config.connect_timeout):
            waits: list[asyncio.Future[Any]] = [self._connack, self._lost]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        if not self._connack.done():
            raise LinkLost(f"the broker closed the connection first: {self._lost.result()}")
        reason = self._connack.result()
        if reason.is_failure:
            # paho gives 3.1.1's CONNACK codes in MQTT 5 numbering too.
            raise BrokerRefusedConnection(int(reason.value), str(reason))

    async def subscribe(self, topic: str, *, retain_as_published: bool = False) -> None:
        """Subscribe at QoS 1 and wait for the SUBACK; raise BrokerError if refused."""
        if self._v5:
            options = SubscribeOptions(qos=1, retainAsPublished=retain_as_published)
            rc, mid = self._client.subscribe(topic, options=options)
        else:
            rc, mid = self._client.subscribe(topic, qos=1)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise LinkLost(f"cannot subscribe to {topic}: {paho.error_string(rc)}")
        future = self._subscribes[mid] = self._loop.create_future()
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                waits: list[asyncio.Future[Any]] = [future, self._lost]
                done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._subscribes.pop(mid, None)
        if future not in done:
            raise LinkLost(f"lost the broker while subscribing: {self._lost.result()}")
        if any(code.is_failure for code in future.result()):
            raise BrokerUnavailable(f"the broker refused the subscription to {topic}")

    def unsubscribe(self, topic: str) -> None:
        """Unsubscribe from ``topic`` without waiting for the UNSUBACK (nothing waits on it)."""
        self._client.unsubscribe(topic)

    async def lost(self) -> str:
        """Wait until the connection ends; how it ended."""
        return await asyncio.shield(self._lost)

    async def close(self, *, say: tuple[str, bytes] | None = None, grace: float = 5.0) -> None:
        """Publish ``say`` (retained, QoS 0: written ahead of the DISCONNECT), then disconnect.

        Waits up to ``grace`` seconds for the DISCONNECT to be written; then
        drops the socket. Safe to call on a connection that is already lost.
        """
        client = self._client
        if not self._lost.done() and client.socket() is not None:
            if say is not None:
                with contextlib.suppress(ValueError, OSError):
                    client.publish(say[0], say[1], qos=0, retain=True)
            if client.disconnect() == MQTTErrorCode.MQTT_ERR_SUCCESS:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(grace):
                        await asyncio.shield(self._lost)
        self._stop_misc()
        sock = client.socket()
        if sock is not None:  # the broker never answered: let go of it
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            with contextlib.suppress(OSError):
                sock.close()

    # The publish path ------------------------------------------------------------------

    async def publish_outbox(
        self,
        outbox: Outbox,
        *,
        window: int = PUBLISH_WINDOW,
        on_published: Callable[[float], None] | None = None,
    ) -> None:
        """Hand ``outbox`` to paho until cancelled, in order; raise LinkLost when the link ends."""
        self._outbox, self._observe = outbox, on_published
        try:
            while not self._lost.done():
                room = window - self.in_flight
                if room <= 0:
                    self._room.clear()
                    await self._room.wait()  # set by an acknowledgement, or the link's end
                elif not self._hand_some(outbox, room):
                    await outbox.wait_pending()  # woken by a message, or the link's end
            raise LinkLost(self._lost.result())
        finally:
            self._unacknowledged.clear()
            self._unwritten.clear()
            self._outbox = None

    @property
    def in_flight(self) -> int:
        return len(self._unacknowledged) + len(self._unwritten)

    @property
    def awaits_acknowledgements(self) -> bool:
        """Whether QoS 1-2 messages wait for the broker's acknowledgement."""
        return bool(self._unacknowledged)

    def _hand_some(self, outbox: Outbox, most: int) -> bool:
        """Hand up to ``most`` waiting messages to paho; False if none waited."""
        take, hand = outbox.take_nowait, self._hand
        for handed in range(most):
            entry = take()
            if entry is None:
                return handed > 0
            hand(entry)
        return True

    def _hand(self, entry: Entry) -> None:
        publish = entry.publish
        assert self._outbox is not None
        # MQTT 3.1.1 carries no properties (paho would not send them).
        properties = (
            properties_of(publish.properties, publish.correlation_data, publish.response_topic)
            if self._v5
            else None
        )
        try:
            info = self._client.publish(
                publish.topic, publish.payload, publish.qos, publish.retain, properties
            )
        except (ValueError, UnicodeError) as exc:
            # A topic MQTT cannot carry (wildcards, bad UTF-8): drop this message only.
            logger.warning("cannot publish to %r: %s", publish.topic[:200], exc)
            self._outbox.done(entry)
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return  # the link is gone; the entry stays unacknowledged and is sent again
        started = time.monotonic() if self._observe else 0.0
        # Never written at once: paho only queues it (its writer callback is set).
        (self._unacknowledged if publish.qos else self._unwritten).append((entry, info, started))

    def _written(self) -> None:
        """Complete the QoS 0 messages on the wire (called when the write buffer is empty)."""
        if self._unwritten:
            # paho holds none: all of them are (and no lock per message to ask).
            self._complete(self._unwritten, every=not self._client.want_write())

    def _complete(self, handed: deque[_Handed], *, every: bool = False) -> None:
        """Complete the messages at the front of ``handed`` that paho marked published
        (QoS 0: written; QoS 1-2: acknowledged), or all of them if ``every``."""
        observe = self._observe
        now = time.monotonic() if observe is not None else 0.0
        finished: list[Entry] = []
        while handed and (every or handed[0][1].is_published()):
            entry, _, started = handed.popleft()
            finished.append(entry)
            if observe is not None:
                observe(now - started)
        if finished:
            if self._outbox is not None:
                self._outbox.done(*finished)
            self._room.set()

    # paho's callbacks, on the event loop ---------------------------------------------

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, *args: Any
    ) -> None:
        if not self._connack.done():
            self._connack.set_result(reason)

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: ReasonCode, *args: Any
    ) -> None:
        if not self._lost.done():
            self._lost.set_result(str(reason))
        self._room.set()  # a publish path waiting for room or for a message sees the end
        if self._outbox is not None:
            self._outbox.wake()

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, codes: list[ReasonCode], *args: Any
    ) -> None:
        future = self._subscribes.get(mid)
        if future is not None and not future.done():
            future.set_result(list(codes))

    def _on_paho_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        try:
            self._on_message(
                message.topic,
                bytes(message.payload),
                bool(message.retain),
                reply_to_of(message),
                correlation_of(message),
            )
        except Exception:
            # No message may end the link, and with it the daemon.
            logger.exception("failed to handle a message (mid %d)", message.mid)
        client.ack(message.mid, message.qos)

    def _from_thread(self, callback: Callable[..., None]) -> Callable[..., None]:
        def in_loop(*args: Any) -> None:
            self._loop.call_soon_threadsafe(callback, *args)

        return in_loop

    def _on_socket_open(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() > -1:
            no_delay(sock)
            self._loop.add_reader(sock, self._read, client)
        if self._misc is None:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._run_misc)

    def _on_socket_close(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() > -1:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
        self._buffer.clear()  # its messages were not completed: they go again after reconnecting
        self._reads.clear()
        self._stop_misc()

    def _on_socket_register_write(self, client: paho.Client, userdata: Any, sock: Any) -> None:
        if sock.fileno() > -1:
            self._loop.add_writer(sock, self._write, client)

    def _read(self, client: paho.Client) -> None:
        # A failure closes the socket and calls on_disconnect. TLS may hold decrypted
        # bytes the selector cannot see: read on while it does.
        while True:
            self._reads.next_pass()
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                break
            sock = client.socket()
            if not (isinstance(sock, ssl.SSLSocket) and sock.pending()):
                break
        # paho takes a few packets a call: the rest of what was read waits in the read
        # buffer, which the selector cannot see either, and is read next time round.
        if self._reads and client.socket() is not None:
            self._loop.call_soon(self._read, client)
        if self._unacknowledged:  # acknowledgements come in with what was read
            self._complete(self._unacknowledged)

    def _write(self, client: paho.Client) -> None:
        # The one place paho writes from (no on_socket_unregister_write: this decides).
        sock = client.socket()
        if sock is None or not self._buffer.write_pass(sock, client.loop_write):
            return  # the socket took only part: the writer stays registered for the rest
        if client.socket() is sock:  # not closed by a DISCONNECT
            self._written()  # what paho marked written is on the wire now
            if not client.want_write():
                self._loop.remove_writer(sock)

    def _run_misc(self) -> None:
        self._misc = None
        if self._client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._misc = self._loop.call_later(MISC_INTERVAL, self._run_misc)

    def _stop_misc(self) -> None:
        if self._misc is not None:
            self._misc.cancel()
            self._misc = None
