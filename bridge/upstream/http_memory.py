"""Continuing conversations over HTTP: what the bridge replays where the server cannot.

Pure (no I/O). Over WebSocket a ``previous_response_id`` made on the same socket
continues from the server's connection-local cache, even with ``store: false``.
HTTP has no such cache: OpenAI continues only stored responses, and many
OpenAI-compatible servers (local models, gateways) keep nothing at all. A
:class:`ReplayBook`, one per endpoint, remembers the conversation behind each
response that completed through the bridge (its input and output items, bounded
in bytes, least recently used first out) and, where the server cannot continue a
response, sends that history as ``input`` instead of ``previous_response_id``:

- ``server``: the server continues what it stored (``store`` true); a response
  made with ``store: false`` is replayed, as the WebSocket cache would continue it;
- ``replay``: every continuation is replayed, and ``store`` is left out of the
  request (servers that keep nothing may refuse it);
- ``auto``: ``server`` until the endpoint answers ``previous_response_not_found``
  for a response in the book; then ``replay`` from there on (logged once).

A continuation of a response that is not in the book goes to the server as it is.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

Memory = Literal["server", "replay", "auto"]
NOT_FOUND: Final = "previous_response_not_found"


@dataclass(frozen=True, slots=True)
class _Chain:
    items: bytes  # the conversation up to and including the response, as JSON array items
    stored: bool  # the response was made with `store` true


@dataclass(slots=True)
class Prepared:
    """One request, ready to post, and what to remember when its response completes."""

    body: dict[str, Any]
    items: list[Any] | None  # the conversation it carries (None: not known to the book)
    replayed: bool  # its history replaced a previous_response_id
    parent: str | None  # the previous_response_id it was written with


class ReplayBook:
    """The conversations behind an endpoint's recent responses (see the module docstring)."""

    def __init__(self, memory: Memory, max_bytes: int) -> None:
        self.memory = memory
        self.max_bytes = max_bytes
        self.bytes = 0
        self._chains: OrderedDict[str, _Chain] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chains)

    @property
    def replays(self) -> bool:
        """Whether every continuation is replayed (configured, or learned)."""
        return self.memory == "replay"

    def prepare(self, event: Mapping[str, Any], *, replay: bool = False) -> Prepared:
        """The HTTP body of a ``response.create`` event (``stream`` set, ``type`` left out).

        ``replay`` replays even a stored parent (the server said it has not got it).
        """
        body = {key: value for key, value in event.items() if key != "type"}
        body["stream"] = True
        if self.replays:
            body.pop("store", None)
        items = _input_items(body.get("input"))
        parent = body.get("previous_response_id")
        chain = self._chains.get(parent) if isinstance(parent, str) else None
        if chain is None:
            known = None if isinstance(parent, str) else items
            return Prepared(body, known, replayed=False, parent=_text(parent))
        self._chains.move_to_end(str(parent))
        if chain.stored and not replay and not self.replays:
            return Prepared(body, _history(chain) + (items or []), replayed=False, parent=parent)
        history = _history(chain) + (items or [])
        del body["previous_response_id"]
        body["input"] = history
        return Prepared(body, history, replayed=True, parent=str(parent))

    def learned_not_found(self, prepared: Prepared) -> bool:
        """The endpoint answered ``previous_response_not_found`` to ``prepared``: True when
        the request can be sent again replayed (``auto`` then replays from now on)."""
        if prepared.replayed or prepared.parent not in self._chains:
            return False
        if self.memory == "auto":
            self.memory = "replay"
        return True

    def completed(self, prepared: Prepared, response: Mapping[str, Any]) -> None:
        """A response to ``prepared`` completed: remember its conversation."""
        response_id = response.get("id")
        if prepared.items is None or not isinstance(response_id, str):
            return
        output = response.get("output")
        items = prepared.items + replayable(output if isinstance(output, list) else [])
        encoded = json.dumps(items, ensure_ascii=False, separators=(",", ":"))[1:-1].encode()
        if len(encoded) > self.max_bytes:
            return
        stored = prepared.body.get("store", True) is not False and not self.replays
        self._chains[response_id] = _Chain(encoded, stored)
        self.bytes += len(encoded)
        while self.bytes > self.max_bytes:
            _, dropped = self._chains.popitem(last=False)
            self.bytes -= len(dropped.items)


def _history(chain: _Chain) -> list[Any]:
    if not chain.items:
        return []
    history: list[Any] = json.loads(b"[" + chain.items + b"]")
    return history


def _input_items(value: object) -> list[Any] | None:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, list):
        return list(value)
    return [] if value is None else None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def replayable(output: list[Any]) -> list[Any]:
    """The output items a later request can carry as input: messages as assistant turns,
    function calls as they were (their outputs follow in the next request's input)."""
    replay: list[Any] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            texts = [
                part.get("text", "")
                for part in item.get("content") or []
                if isinstance(part, dict) and part.get("type") in ("output_text", "refusal")
            ]
            replay.append({"role": "assistant", "content": "".join(texts)})
        elif item.get("type") == "function_call":
            call = {key: item.get(key) for key in ("call_id", "name", "arguments")}
            replay.append({"type": "function_call", **call})
    return replay
