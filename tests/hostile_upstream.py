"""A Responses endpoint that lies: a WebSocket server on 127.0.0.1 that answers each
client event with exactly the frames a test scripts, however wrong they are.

``str`` frames go as text frames, ``bytes`` as binary frames, and
:class:`TextBytes` as a text frame of any bytes (invalid UTF-8 included).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed


@dataclass(frozen=True)
class TextBytes:
    """A text frame whose payload is these bytes, UTF-8 or not."""

    data: bytes


Frame = str | bytes | TextBytes
# The frames that answer one client event, given the event and its number (0, 1, ...
# over the whole server).
Script = Callable[[dict[str, Any], int], Sequence[Frame]]


@dataclass
class HostileUpstream:
    """``async with HostileUpstream(script) as upstream:``; ``upstream.base_url``."""

    script: Script
    received: list[dict[str, Any]] = field(default_factory=list)
    sockets: int = 0
    _server: Server | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        (sock, *_) = self._server.sockets
        port = sock.getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def __aenter__(self) -> HostileUpstream:
        self._server = await serve(self._serve, "127.0.0.1", 0, max_size=None, compression=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._server.wait_closed(), 5)

    async def _serve(self, websocket: ServerConnection) -> None:
        self.sockets += 1
        with contextlib.suppress(ConnectionClosed):
            async for message in websocket:
                event = json.loads(message)
                number = len(self.received)
                self.received.append(event)
                for frame in self.script(event, number):
                    if isinstance(frame, TextBytes):
                        await websocket.send(frame.data, text=True)
                    else:
                        await websocket.send(frame)


# Events as OpenAI writes them (`type` first) --------------------------------------------


def event(event_type: str, **fields: Any) -> str:
    return json.dumps({"type": event_type, **fields}, separators=(",", ":"))


def answer(text: str, usage: Any, *, response_id: str = "resp_1", **extra: Any) -> list[str]:
    """created, one delta, and completed with ``usage`` (any value: it is the lie)."""
    output = [
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": text}],
        }
    ]
    response = {"id": response_id, "status": "completed", "output": output, "usage": usage}
    return [
        event("response.created", response={"id": response_id, "status": "in_progress"}),
        event("response.output_text.delta", item_id="msg_1", delta=text),
        event("response.completed", response={**response, **extra}),
    ]
