"""Continuation state: the connection-local cache and named-lane accounting (no I/O).

Rules (protocol reference §4, §5):

- each lane (``None`` is the default lane) caches only its latest finished response;
- a ``previous_response_id`` found in any lane's cache continues at once (a fork when
  it is another lane's); otherwise a request with ``store`` left true may hydrate it
  from the persisted store that outlives connections; otherwise the request gets
  ``previous_response_not_found``;
- a same-lane continuation that fails evicts its parent; a failed fork keeps it;
- at most 32 distinct named lanes per connection, over its whole life.

A snapshot also carries the response's :class:`ToolMemory`: the function calls it made
(the next turn must answer each of them with a ``function_call_output``), the names of
every call in the chain, and the latest user message, whose call phrases
(:mod:`~bridge_tools.simulator.tool_calls`) a continuation without new user input still
follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge_tools.simulator import rejections
from bridge_tools.simulator.rejections import Rejection

Lane = str | None


@dataclass(frozen=True, slots=True)
class ToolMemory:
    """What a continuation needs to know about the chain's function calls."""

    pending: tuple[str, ...] = ()  # call_ids this response made, each owed an output
    names: tuple[tuple[str, str], ...] = ()  # (call_id, name) of every call in the chain
    user_text: str | None = None  # the chain's latest user message
    answered: bool = False  # calls were made for user_text already (only repeats remain)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What a later turn needs from a finished response."""

    response_id: str
    lane: Lane
    context_tokens: int  # input plus output tokens of the whole chain so far
    turns: int  # responses in the chain, this one included
    store: bool
    tools: ToolMemory = field(default_factory=ToolMemory)


@dataclass(frozen=True, slots=True)
class Parent:
    """A resolved ``previous_response_id``."""

    snapshot: Snapshot
    cached: bool  # found in the connection cache (the fast path), not the store


class ConnectionState:
    """Lanes and cache of one connection. Drop it when the connection ends."""

    def __init__(self, *, max_named_lanes: int = rejections.MAX_NAMED_LANES) -> None:
        self._max_named_lanes = max_named_lanes
        self._named: set[str] = set()
        self._cache: dict[Lane, Snapshot] = {}

    @property
    def named_lanes(self) -> frozenset[str]:
        """The distinct named lanes used so far."""
        return frozenset(self._named)

    def cached(self, lane: Lane) -> Snapshot | None:
        """The latest finished response of lane, if still cached."""
        return self._cache.get(lane)

    def admit_lane(self, stream_id: str | None) -> Rejection | None:
        """Count a request's lane; refuse a new name beyond the limit."""
        if stream_id is None or stream_id in self._named:
            return None
        if len(self._named) >= self._max_named_lanes:
            return rejections.stream_limit_reached(self._max_named_lanes)
        self._named.add(stream_id)
        return None

    def resolve(
        self, previous_id: str | None, *, store: bool, persisted: Mapping[str, Snapshot]
    ) -> Parent | Rejection | None:
        """Find the parent of a request; None when the request starts a new chain."""
        if previous_id is None:
            return None
        for snapshot in self._cache.values():
            if snapshot.response_id == previous_id:
                return Parent(snapshot, cached=True)
        stored = persisted.get(previous_id)
        if store and stored is not None:
            return Parent(stored, cached=False)
        return rejections.previous_response_not_found(previous_id)

    def remember(self, snapshot: Snapshot) -> None:
        """Make snapshot its lane's latest response, replacing the previous one."""
        self._cache[snapshot.lane] = snapshot

    def forget_failed(self, lane: Lane, previous_id: str | None) -> None:
        """Apply the eviction rule after a request on lane failed.

        Only a same-lane continuation evicts its parent; a failed fork keeps it.
        """
        cached = self._cache.get(lane)
        if previous_id is not None and cached is not None and cached.response_id == previous_id:
            del self._cache[lane]

    def clear(self) -> None:
        """Drop every lane's cache (the connection ended)."""
        self._cache.clear()
