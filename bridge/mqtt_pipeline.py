"""The publish path: the outbox handed to paho directly, many messages in flight.

aiomqtt's ``publish`` costs a coroutine, an ``asyncio.Event``, a future and a
scan of its pending calls per message; at thousands of events per second that
was most of the daemon's CPU time outside paho itself (README, Performance).
So the hot path skips it: aiomqtt still owns the link (connect, last will,
TLS, subscribe, receive, disconnect), and :class:`PublishPipeline` publishes
the outbox through the paho client that aiomqtt wraps. One task hands
messages to paho, up to a window, without awaiting anything per message;
paho's ``on_publish`` (the broker's PUBACK at QoS 1, the socket write at
QoS 0) completes them in the outbox.

This is the one place that reaches into aiomqtt (``Client._client``, stable
through aiomqtt 2.x, which ``pyproject.toml`` pins); :func:`paho_of` fails
loudly at the first connect if that ever changes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, Final

import aiomqtt
from paho.mqtt import client as paho_client
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.contract import UserProperties
from bridge.errors import BrokerError
from bridge.outbox import Entry, Outbox

logger = logging.getLogger(__name__)

# Messages handed to paho and not yet completed. A little more than the
# broker's in-flight window (Mosquitto's Receive Maximum is 20, our
# max_inflight 100) keeps it full; more only grows paho's own queue.
PUBLISH_WINDOW: Final = 256


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


@functools.lru_cache(maxsize=4096)
def properties_of(user: UserProperties, correlation: bytes | None) -> Properties | None:
    """paho properties for a publish; cached because relayed events repeat them."""
    if not user and correlation is None:
        return None
    properties = _PackedOnce(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho
    if user:
        properties.UserProperty = list(user)
        properties.ContentType = "application/json"
    if correlation is not None:
        properties.CorrelationData = correlation
    return properties


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
        self._paho = paho_of(client)
        self._outbox = outbox
        self._window = window
        self._observe = on_published
        self._entries: dict[int, tuple[Entry, float]] = {}  # by paho's message id
        self._room = asyncio.Event()
        # aiomqtt completes its own publishes (online, announcements) in its callback.
        on_publish = self._paho.on_publish
        if on_publish is None:
            raise BrokerError("aiomqtt set no on_publish callback; this aiomqtt is not 2.x")
        self._aiomqtt_on_publish: Callable[..., None] = on_publish
        self._paho.on_publish = self._on_publish

    @property
    def in_flight(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        """Give ``on_publish`` back to aiomqtt (what is in flight stays unacknowledged)."""
        self._paho.on_publish = self._aiomqtt_on_publish
        self._entries.clear()

    async def run(self) -> None:
        """Hand messages to paho until cancelled; raise ``MqttError`` if the link is gone."""
        outbox = self._outbox
        entries = self._entries
        window = self._window
        while True:
            if len(entries) >= window:
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
        try:
            info = self._paho.publish(
                publish.topic, publish.payload, publish.qos, False, properties
            )
        except (ValueError, UnicodeError) as exc:
            # A topic MQTT cannot carry (wildcards, bad UTF-8): drop this message only.
            logger.warning("cannot publish to %r: %s", publish.topic, exc)
            self._outbox.done(entry)
            return
        if info.rc != paho_client.MQTT_ERR_SUCCESS:
            raise aiomqtt.MqttCodeError(info.rc, "could not publish")
        self._entries[info.mid] = (entry, time.monotonic() if self._observe else 0.0)
        if info.is_published():  # paho completed it before we knew its id
            self._completed(info.mid)

    def _on_publish(self, client: paho_client.Client, userdata: Any, mid: int, *args: Any) -> None:
        if mid in self._entries:
            self._completed(mid)
        else:
            self._aiomqtt_on_publish(client, userdata, mid, *args)

    def _completed(self, mid: int) -> None:
        entry, started = self._entries.pop(mid)
        self._outbox.done(entry)
        if self._observe is not None:
            self._observe(time.monotonic() - started)
        self._room.set()
