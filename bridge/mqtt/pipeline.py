"""The publish path: the outbox handed to paho directly, many messages in flight.

aiomqtt's ``publish`` costs a coroutine, an ``asyncio.Event``, a future and a
scan of its pending calls per message; at thousands of events per second that
was most of the daemon's CPU time outside paho itself (README, Performance).
So the hot path skips it: aiomqtt still owns the link (connect, last will,
TLS, subscribe, receive, disconnect), and :class:`PublishPipeline` publishes
the outbox through the paho client that aiomqtt wraps. One task hands
messages to paho, up to a window, without awaiting anything per message.
Two paho callbacks complete them:

- ``on_publish``: the broker acknowledged a QoS 1 or 2 message. It is set only
  while such a message is in flight, because paho builds a reason code and a
  properties object for every QoS 0 message it writes whenever the callback
  is set (a fifth of the CPU time of a QoS 0 relay).
- ``on_socket_unregister_write``: paho wrote out everything it held, so every
  QoS 0 message handed to it is on the wire.

While the pipeline lives it owns those callbacks, so every publish goes
through it; :meth:`PublishPipeline.close` gives them back to aiomqtt. This is
the one place that reaches into aiomqtt (``Client._client``, stable through
aiomqtt 2.x, which ``pyproject.toml`` pins); :func:`paho_of` fails loudly at
the first connect if that ever changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.errors import BrokerError
from bridge.mqtt.outbox import Entry, Outbox
from bridge.protocol.contract import UserProperties

logger = logging.getLogger(__name__)

# Messages handed to paho and not yet completed. Enough to keep the broker's
# in-flight window full (Mosquitto's Receive Maximum is 20) and writes
# batched; not more, because paho scans every message it holds on every
# acknowledgement (Client._update_inflight): bench.relay_throughput measured
# 52-55 us of CPU per QoS 1 event with 256, 45-51 with 64, worse again with 16.
PUBLISH_WINDOW: Final = 64


def paho_of(client: aiomqtt.Client) -> paho_client.Client:
    """The paho client inside an aiomqtt 2.x client."""
    paho = getattr(client, "_client", None)
    if not isinstance(paho, paho_client.Client):
        raise BrokerError(
            "this aiomqtt does not wrap a paho client the way 2.x does; "
            "install a version that pyproject.toml admits"
        )
    return paho


class _PackedOnce(Properties):
    """Properties that encode themselves once: paho packs them again for every publish,
    and relayed events share them (the cache below), so this saves most of the cost."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = bytes(super().pack())  # type: ignore[no-untyped-call]  # paho
            # paho's __setattr__ only admits MQTT property names
            object.__setattr__(self, "_packed", packed)
        return packed


def properties_of(user: UserProperties, correlation: bytes | None) -> Properties | None:
    """paho properties for a publish.

    Only those without Correlation Data are cached: relayed events repeat
    them, while correlation data is a client's choice, and a cache keyed by
    it would let clients pin memory (up to 64 KiB an entry).
    """
    if correlation is None:
        return _cached_properties(user)
    properties = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
    _fill(properties, user)
    properties.CorrelationData = correlation
    return properties


@functools.lru_cache(maxsize=4096)
def _cached_properties(user: UserProperties) -> Properties | None:
    if not user:
        return None
    properties = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
    _fill(properties, user)
    return properties


def _fill(properties: Properties, user: UserProperties) -> None:
    if user:
        properties.UserProperty = list(user)
        properties.ContentType = "application/json"


class PublishPipeline:
    """Publishes what the outbox holds, in order, over one connected aiomqtt client."""

    def __init__(
        self,
        client: aiomqtt.Client,
        outbox: Outbox,
        *,
        window: int = PUBLISH_WINDOW,
        on_published: Callable[[float], None] | None = None,
    ) -> None:
        self._paho = paho = paho_of(client)
        self._outbox = outbox
        self._window = window
        self._observe = on_published
        self._acknowledged: dict[int, tuple[Entry, float]] = {}  # QoS 1-2, by message id
        self._unwritten: deque[tuple[Entry, paho_client.MQTTMessageInfo, float]] = deque()
        self._room = asyncio.Event()
        on_publish, on_drained = paho.on_publish, paho.on_socket_unregister_write
        if on_publish is None or on_drained is None:
            raise BrokerError("aiomqtt set no paho callbacks; this aiomqtt is not 2.x")
        self._aiomqtt_on_publish: Callable[..., None] = on_publish
        self._aiomqtt_on_drained: Callable[..., None] = on_drained
        paho.on_publish = None  # until a QoS 1 message is in flight
        paho.on_socket_unregister_write = self._on_drained

    @property
    def in_flight(self) -> int:
        return len(self._acknowledged) + len(self._unwritten)

    def close(self) -> None:
        """Give the callbacks back to aiomqtt (what is in flight stays unacknowledged)."""
        self._paho.on_publish = self._aiomqtt_on_publish
        self._paho.on_socket_unregister_write = self._aiomqtt_on_drained
        self._acknowledged.clear()
        self._unwritten.clear()

    async def run(self) -> None:
        """Hand messages to paho until cancelled; raise ``MqttError`` if the link is gone."""
        outbox = self._outbox
        window = self._window
        while True:
            if self.in_flight >= window:
                self._room.clear()
                await self._room.wait()
            elif (entry := outbox.take_nowait()) is not None:
                self._hand(entry)
            else:
                await outbox.wait_pending()

    def _hand(self, entry: Entry) -> None:
        publish = entry.publish
        # Under MQTT 3.1.1 the core gives no properties, so this is None.
        properties = properties_of(publish.properties, publish.correlation_data)
        if publish.qos and not self._acknowledged:
            self._paho.on_publish = self._on_publish
        try:
            info = self._paho.publish(
                publish.topic, publish.payload, publish.qos, publish.retain, properties
            )
        except (ValueError, UnicodeError) as exc:
            # A topic MQTT cannot carry (wildcards, bad UTF-8): drop this message only.
            logger.warning("cannot publish to %r: %s", publish.topic, exc)
            self._outbox.done(entry)
            self._settle()
            return
        if info.rc != paho_client.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        started = time.monotonic() if self._observe else 0.0
        if publish.qos:
            self._acknowledged[info.mid] = (entry, started)
        else:
            self._unwritten.append((entry, info, started))
            if info.is_published():  # written at once (paho without an event loop)
                self._written()

    def _on_publish(self, client: paho_client.Client, userdata: Any, mid: int, *args: Any) -> None:
        found = self._acknowledged.pop(mid, None)
        if found is None:
            return  # a QoS 0 message written while an ack is awaited: _on_drained has it
        entry, started = found
        self._complete(entry, started)
        self._settle()

    def _on_drained(self, client: paho_client.Client, userdata: Any, sock: Any) -> None:
        self._aiomqtt_on_drained(client, userdata, sock)
        self._written()

    def _written(self) -> None:
        unwritten = self._unwritten
        while unwritten and unwritten[0][1].is_published():
            entry, _, started = unwritten.popleft()
            self._complete(entry, started)

    def _complete(self, entry: Entry, started: float) -> None:
        self._outbox.done(entry)
        if self._observe is not None:
            self._observe(time.monotonic() - started)
        self._room.set()

    def _settle(self) -> None:
        """No acknowledgement awaited: stop paying for paho's on_publish on every write."""
        if not self._acknowledged:
            self._paho.on_publish = None
