"""A tiny Responses WebSocket endpoint for tests: it sends exactly the frames a script says.

The simulator is faithful; a hostile or broken upstream is not. This one answers
each ``response.create`` with ``response.created`` and a ``response.completed``
whose ``output`` (and ``usage``) the test's script returns, so a test can send
what no real model would: ten thousand calls at once, two calls with one
``call_id``, a call with none.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, Self

from websockets.asyncio.server import Server, ServerConnection, serve

# (the response.create as sent) -> the response's output items
Script = Callable[[dict[str, Any]], list[dict[str, Any]]]


def text_answer(text: str) -> list[dict[str, Any]]:
    """The output of a plain answer."""
    content = [{"type": "output_text", "text": text, "annotations": []}]
    return [{"type": "message", "role": "assistant", "status": "completed", "content": content}]


def function_call(call_id: str | None, name: str, arguments: str = "{}") -> dict[str, Any]:
    """A ``function_call`` output item (``call_id`` None: the item has none)."""
    item: dict[str, Any] = {"type": "function_call", "name": name, "arguments": arguments}
    if call_id is not None:
        item["call_id"] = call_id
    return item


def has_outputs(request: dict[str, Any]) -> bool:
    """Whether a request carries function_call_output items (a tool round's continuation)."""
    items = request.get("input")
    return isinstance(items, list) and any(
        isinstance(item, dict) and item.get("type") == "function_call_output" for item in items
    )


def user_text(request: dict[str, Any]) -> str:
    """The text of a request's user messages, joined (enough to pick a script's branch)."""
    items = request.get("input")
    if isinstance(items, str):
        return items
    return " ".join(
        item["content"]
        for item in items or []
        if isinstance(item, dict) and isinstance(item.get("content"), str)
    )


class ScriptedUpstream:
    """``ws://127.0.0.1:<port>/v1/responses``: every response.create is answered at once
    by ``script``; :attr:`requests` records them. Each response reports ``usage_tokens``
    output tokens."""

    def __init__(self, script: Script, *, usage_tokens: int = 10) -> None:
        self.script = script
        self.usage_tokens = usage_tokens
        self.requests: list[dict[str, Any]] = []
        self._server: Server | None = None
        self._ids = itertools.count(1)

    async def __aenter__(self) -> Self:
        self._server = await serve(self._serve, "127.0.0.1", 0, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        port = next(iter(self._server.sockets)).getsockname()[1]
        return f"http://127.0.0.1:{port}/v1"

    async def _serve(self, socket: ServerConnection) -> None:
        async for frame in socket:
            request = json.loads(frame)
            if request.get("type") != "response.create":
                continue
            self.requests.append(request)
            response_id = f"resp_{next(self._ids)}"
            base = {"id": response_id, "object": "response", "model": request.get("model")}
            await socket.send(
                json.dumps(
                    {"type": "response.created", "response": {**base, "status": "in_progress"}}
                )
            )
            usage = {
                "input_tokens": 0,
                "output_tokens": self.usage_tokens,
                "total_tokens": self.usage_tokens,
            }
            response = {
                **base,
                "status": "completed",
                "output": self.script(request),
                "usage": usage,
            }
            await socket.send(json.dumps({"type": "response.completed", "response": response}))
