"""One bridge, reached through Home Assistant's MQTT integration: its state, and turns.

A turn is one ``ask`` on ``<prefix>/<id>/cmd`` with a fresh ``request_id``. What the
bridge answers arrives on ``<prefix>/<id>/events`` (acks, errors, the server's
events) and, because the ask asks for it (``"output": {"answer": true}``), one
object on ``<prefix>/<id>/answer`` when the turn has ended, tool rounds the bridge
ran itself included. :meth:`BridgeLink.turn` yields those messages in order until
the turn's end. Only one turn per connection id runs at a time.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from homeassistant.components import mqtt
from homeassistant.core import HomeAssistant, callback

from .const import SUBSCRIBE_TIMEOUT, TURN_TIMEOUT

ANSWER = "response.websocket.answer"
ERROR = "response.websocket.error"
CONNECTION = "response.websocket.connection"


class TurnFailed(Exception):
    """A turn ended without an answer: ``code`` is the bridge's or the server's code."""

    def __init__(self, code: str, message: str, details: Mapping[str, Any] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = dict(details or {})


@dataclass
class _Listener:
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=asyncio.Queue)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    unsubscribe: list[Callable[[], None]] = field(default_factory=list)


class BridgeLink:
    """The bridge on ``prefix``: whether it is online, and its connections' messages."""

    def __init__(self, hass: HomeAssistant, prefix: str) -> None:
        self.hass = hass
        self.prefix = prefix
        self.online: bool | None = None  # None: no retained state seen yet
        self._listeners: dict[str, _Listener] = {}
        self._unsubscribe: list[Callable[[], None]] = []

    async def async_start(self) -> None:
        self._unsubscribe.append(
            await mqtt.async_subscribe(self.hass, f"{self.prefix}/bridge/state", self._state, 1)
        )

    @callback
    def _state(self, message: mqtt.ReceiveMessage) -> None:
        self.online = message.payload == "online"

    async def async_stop(self) -> None:
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        for listener in self._listeners.values():
            for unsubscribe in listener.unsubscribe:
                unsubscribe()
        self._listeners.clear()

    async def _listener(self, connection_id: str) -> _Listener:
        listener = self._listeners.get(connection_id)
        if listener is not None:
            return listener
        listener = self._listeners[connection_id] = _Listener()

        @callback
        def received(message: mqtt.ReceiveMessage) -> None:
            try:
                document = json.loads(message.payload)
            except ValueError:
                return
            if isinstance(document, dict):
                listener.queue.put_nowait(document)

        for topic in (f"{self.prefix}/{connection_id}/{t}" for t in ("events", "answer")):
            # HA's MQTT client sends SUBSCRIBE a moment later, in a batch: the first ask
            # must wait for the broker's SUBACK, or the start of its answer is lost.
            subscribed = asyncio.Event()
            stop_watching = mqtt.async_on_subscribe_done(self.hass, topic, 1, subscribed.set)
            listener.unsubscribe.append(await mqtt.async_subscribe(self.hass, topic, received, 1))
            try:
                await asyncio.wait_for(subscribed.wait(), SUBSCRIBE_TIMEOUT)
            except TimeoutError:
                del self._listeners[connection_id]
                for unsubscribe in listener.unsubscribe:
                    unsubscribe()
                raise TurnFailed("timeout", "the broker did not confirm the subscription") from None
            finally:
                stop_watching()
        return listener

    async def turn(
        self,
        connection_id: str,
        turn_input: str | Sequence[Mapping[str, Any]],
        *,
        profile: str,
        tools: Sequence[Mapping[str, Any]] = (),
        new_conversation: bool = False,
    ) -> AsyncIterator[dict[str, Any]]:
        """The messages of one ``ask``, up to and including its answer.

        Raises :class:`TurnFailed` when the bridge refuses it or it ends in an error.
        """
        if self.online is False:
            raise TurnFailed("bridge_offline", f"the bridge on {self.prefix} is offline")
        listener = await self._listener(connection_id)
        async with listener.lock:
            while not listener.queue.empty():  # what a turn given up on left behind
                listener.queue.get_nowait()
            request_id = uuid.uuid4().hex
            command: dict[str, Any] = {
                "action": "ask",
                "input": turn_input if isinstance(turn_input, str) else list(turn_input),
                "profile": profile,
                "request_id": request_id,
                "output": {"answer": True},
            }
            if tools:
                command["tools"] = list(tools)
            if new_conversation:
                command["new_conversation"] = True
            await mqtt.async_publish(
                self.hass,
                f"{self.prefix}/{connection_id}/cmd",
                json.dumps(command, separators=(",", ":")),
                qos=1,
            )
            while True:
                try:
                    message = await asyncio.wait_for(listener.queue.get(), TURN_TIMEOUT)
                except TimeoutError:
                    raise TurnFailed(
                        "timeout", f"no word from the bridge for {TURN_TIMEOUT:.0f} s"
                    ) from None
                ended = _ends_turn(message, request_id)
                if ended is None:
                    continue
                yield message
                if ended:
                    return


def _ends_turn(message: Mapping[str, Any], request_id: str) -> bool | None:
    """Whether ``message`` is the turn's answer (True) or one of its messages (False);
    None: another turn's answer. Raises :class:`TurnFailed` for the turn's error."""
    kind = message.get("object")
    if kind == ERROR and message.get("request_id") == request_id:
        error = message.get("error") or {}
        raise TurnFailed(str(error.get("code", "error")), str(error.get("message", "")), error)
    if kind == CONNECTION and message.get("action") == "disconnected":
        raise TurnFailed("upstream_lost", str(message.get("reason", "")))
    if kind != ANSWER:
        return False
    if message.get("request_id") not in (request_id, None):
        return None
    if message.get("status") != "completed":
        error = message.get("error") or {}
        raise TurnFailed(
            str(error.get("code") or message.get("status")), str(error.get("message", "")), error
        )
    return True


async def async_discover(hass: HomeAssistant, seconds: float) -> dict[str, dict[str, Any]]:
    """The bridges on the broker, by topic prefix: their retained ``<prefix>/bridge/info``."""
    found: dict[str, dict[str, Any]] = {}

    @callback
    def received(message: mqtt.ReceiveMessage) -> None:
        prefix = message.topic.removesuffix("/bridge/info")
        try:
            info = json.loads(message.payload)
        except ValueError:
            return
        if isinstance(info, dict) and prefix != message.topic:
            found[prefix] = info

    # Prefixes of one to three levels ("ai", "home/ai", ...).
    unsubscribe = [
        await mqtt.async_subscribe(hass, topic, received, 1)
        for topic in ("+/bridge/info", "+/+/bridge/info", "+/+/+/bridge/info")
    ]
    try:
        await asyncio.sleep(seconds)
    finally:
        for stop in unsubscribe:
            stop()
    return found
