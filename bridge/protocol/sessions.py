"""Conversations the bridge keeps for ``ask``: profiles, memory, and the request of a turn.

Pure: time comes in as ``now``. A :class:`Conversations` book holds, per
connection id that used ``ask``, the profile, the id of the last completed
response (usable as ``previous_response_id`` while the socket that made it is
open, or always when the profile stores responses), and a transcript of the
finished turns (their input items and output items), bounded in bytes, to
replay on a new socket when the profile does not store responses.
"""

from __future__ import annotations

import fnmatch
import json
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.protocol.contract import Ask
from bridge.protocol.encoding import compact
from bridge.protocol.guardrails import GuardrailsConfig
from bridge.protocol.output_options import OutputConfig

DEFAULT_PROFILE: Final = "default"
DEFAULT_MODEL: Final = "gpt-5.4-nano"  # the small current model of the `default` profile
# Most conversations kept at once (the least recently used go first).
MAX_CONVERSATIONS: Final = 2_000
# The bridge sets these in a turn's request; a profile may not.
_SET_BY_THE_BRIDGE: Final = frozenset({"type", "input", "previous_response_id"})


class ProfileConfig(BaseModel):
    """The defaults of a conversation (one entry of ``profiles``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    request: dict[str, Any] = Field(default_factory=dict)
    """Fields of every `response.create` of an `ask` (`model`, `instructions`, `max_output_tokens`,
    `store`, `reasoning`, `text`, `tools`, ...), but not `type`, `input` or
    `previous_response_id`, which the bridge sets."""
    output: OutputConfig = Field(default_factory=OutputConfig)
    """Device output of its connections: what they publish besides the events."""
    limits: GuardrailsConfig = Field(default_factory=GuardrailsConfig)
    """Spend guardrails of its connections, on top of the bridge's `limits`."""
    mqtt_tools: tuple[str, ...] = ()
    """Names of `tools` its `ask` turns offer the model (the bridge runs their calls)."""
    mcp_servers: tuple[str, ...] = ()
    """Names of `mcp_servers` whose allowed tools its `ask` turns offer the model (the bridge
    calls them)."""
    endpoint: str | None = None
    """The upstream its connections use: a name in `endpoints`; null: `openai`."""

    @field_validator("request")
    @classmethod
    def _json_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        taken = sorted(_SET_BY_THE_BRIDGE & value.keys())
        if taken:
            raise ValueError(f"{', '.join(taken)} are set by the bridge for each turn")
        json.dumps(value, allow_nan=False)  # ValueError unless plain JSON
        return value


def default_profiles() -> dict[str, ProfileConfig]:
    return {DEFAULT_PROFILE: ProfileConfig(request={"model": DEFAULT_MODEL, "store": False})}


class SessionsConfig(BaseModel):
    """How the bridge looks after connections and conversations (section ``sessions``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    idle_timeout: float = Field(600.0, ge=0)
    """Seconds with no command and no request in flight after which a connection is closed (1000,
    `disconnected` "idle timeout"); 0: never."""
    profile_by_id: dict[str, str] = Field(default_factory=dict)
    """Shell-style connection-id pattern → profile name; the first match wins."""
    max_transcript_bytes: int = Field(32 * 1024, ge=1024)
    """The most an `ask` conversation replays on a new socket, in UTF-8 bytes (oldest turns dropped
    first)."""
    conversation_ttl: float = Field(3600.0, gt=0)
    """Seconds an id's conversation is remembered after its last turn."""
    max_socket_age: float = Field(3300.0, gt=0)
    """An `ask` on a socket this old (seconds) is sent on a new one, before the server's 60-minute
    limit."""
    auto_connect: bool = False
    """A `send` for an id that is not open opens it (as `ask` does) instead of answering
    `not_open`."""
    max_tool_rounds: int = Field(5, ge=1, le=50)
    """Tool rounds one `ask` turn may take before it ends with `tool_rounds_exceeded`."""
    max_tool_calls: int = Field(16, ge=1, le=256)
    """Tool calls of one response that run; each call past them is answered `refused` and never
    run."""


def profile_for(
    profiles: Mapping[str, ProfileConfig],
    sessions: SessionsConfig,
    connection_id: str,
    named: str | None,
) -> str | None:
    """The profile a connection uses: ``named``, else the first pattern, else default.

    None when ``named`` is not a profile.
    """
    if named is not None:
        return named if named in profiles else None
    for pattern, profile in sessions.profile_by_id.items():
        if fnmatch.fnmatchcase(connection_id, pattern):
            return profile
    return DEFAULT_PROFILE


@dataclass(slots=True)
class _Turn:
    """A finished turn as compact JSON: its input items and answer, comma-separated.

    Kept as UTF-8 bytes (a third of the memory of the same items as Python
    objects): its size is then what it adds to a replay and what it holds in
    memory. As a str, one emoji would make every character of it 4 bytes.
    """

    json: bytes


@dataclass(slots=True)
class Conversation:
    profile: str
    last_response_id: str | None = None
    on_this_socket: bool = False  # the last response lives on the open socket
    # A list, not a deque: a deque costs 760 bytes even with one turn, a list 72.
    transcript: list[_Turn] = field(default_factory=list)
    transcript_bytes: int = 0  # UTF-8 bytes of the transcript's turns
    pending: list[Any] | None = None  # input items of the turn in flight
    last_turn_at: float = 0.0
    # Where the conversation stood when the turn in flight began: a turn whose tool
    # loop breaks off goes back there (its calls would have no outputs).
    before_turn: tuple[str | None, bool] | None = None


class Conversations:
    """The conversations of every id that used ``ask``."""

    def __init__(self, profiles: Mapping[str, ProfileConfig], sessions: SessionsConfig) -> None:
        self.profiles = profiles
        self.sessions = sessions
        self._book: OrderedDict[str, Conversation] = OrderedDict()

    def profile_for(self, connection_id: str, named: str | None) -> str | None:
        return profile_for(self.profiles, self.sessions, connection_id, named)

    def profile_limits(self) -> dict[str, GuardrailsConfig]:
        """Each profile's own guardrails (its ``limits``), by name."""
        return {name: profile.limits for name, profile in self.profiles.items()}

    def __contains__(self, connection_id: str) -> bool:
        return connection_id in self._book

    def __len__(self) -> int:
        return len(self._book)

    def get(self, connection_id: str) -> Conversation | None:
        return self._book.get(connection_id)

    def request(
        self, ask: Ask, profile: str, now: float, fields: Mapping[str, Any] | None = None
    ) -> str:
        """The ``response.create`` of this turn, as compact JSON; the turn is now in flight.

        ``fields``: the profile's request as the guardrails let it go (None: as it is).
        """
        conversation = self._book.get(ask.connection_id)
        if conversation is None or ask.new_conversation or conversation.profile != profile:
            conversation = Conversation(profile)
        self._book[ask.connection_id] = conversation
        self._book.move_to_end(ask.connection_id)
        if len(self._book) > MAX_CONVERSATIONS:
            self._book.popitem(last=False)
        items = input_items(ask.input)
        if fields is None:
            known = self.profiles.get(profile)
            fields = known.request if known is not None else {}
        stored = fields.get("store") is True
        event: dict[str, Any] = {"type": "response.create", **fields}
        conversation.pending = items
        conversation.last_turn_at = now
        conversation.before_turn = (conversation.last_response_id, conversation.on_this_socket)
        return _request(conversation, event, items, stored)

    def continuation(
        self, connection_id: str, fields: Mapping[str, Any], calls: list[Any], outputs: list[Any]
    ) -> str | None:
        """The ``response.create`` that goes on after a tool round: the outputs of the
        ``calls`` of the last response (None if the conversation is gone)."""
        conversation = self._book.get(connection_id)
        if conversation is None or conversation.pending is None:
            return None
        conversation.pending += calls + outputs
        event: dict[str, Any] = {"type": "response.create", **fields}
        return _request(conversation, event, outputs, fields.get("store") is True)

    def tool_round(self, connection_id: str, response_id: str | None) -> None:
        """A response of the turn made tool calls: the turn goes on from it."""
        conversation = self._book.get(connection_id)
        if conversation is not None and conversation.pending is not None:
            conversation.last_response_id = response_id
            conversation.on_this_socket = True

    def broken_off(self, connection_id: str) -> None:
        """The turn in flight ends without an answer: the conversation is as it was."""
        conversation = self._book.get(connection_id)
        if conversation is None:
            return
        if conversation.before_turn is not None:
            conversation.last_response_id, conversation.on_this_socket = conversation.before_turn
        conversation.pending = None

    def completed(self, connection_id: str, response: Mapping[str, Any], now: float) -> None:
        """A response of this id completed: remember it, and its turn in the transcript."""
        conversation = self._book.get(connection_id)
        if conversation is None or conversation.pending is None:
            return
        response_id = response.get("id")
        output = response.get("output")
        items = conversation.pending + _replayable(output if isinstance(output, list) else [])
        conversation.pending = None
        conversation.before_turn = None
        conversation.last_response_id = response_id if isinstance(response_id, str) else None
        conversation.on_this_socket = True
        conversation.last_turn_at = now
        turn = _Turn(compact(items)[1:-1].encode("utf-8", "surrogatepass"))
        conversation.transcript.append(turn)
        conversation.transcript_bytes += len(turn.json)
        while (
            conversation.transcript_bytes > self.sessions.max_transcript_bytes
            and conversation.transcript
        ):
            conversation.transcript_bytes -= len(conversation.transcript.pop(0).json)

    def ended(self, connection_id: str) -> None:
        """The turn in flight ended without completing (failed, error): no transcript
        entry, and the conversation is where the turn found it (see :meth:`broken_off`)."""
        conversation = self._book.get(connection_id)
        if conversation is not None and conversation.pending is not None:
            self.broken_off(connection_id)

    def socket_ended(self, connection_id: str) -> None:
        """The socket of this id is gone: its responses cannot be continued there."""
        conversation = self._book.get(connection_id)
        if conversation is not None:
            if conversation.pending is not None and conversation.before_turn is not None:
                conversation.last_response_id = conversation.before_turn[0]  # no half loops
            conversation.on_this_socket = False
            conversation.pending = None

    def forget(self, connection_id: str) -> None:
        self._book.pop(connection_id, None)

    def expire(self, now: float) -> None:
        """Forget conversations whose last turn is older than ``conversation_ttl``."""
        ttl = self.sessions.conversation_ttl
        for connection_id in [
            cid for cid, c in self._book.items() if c.pending is None and now - c.last_turn_at > ttl
        ]:
            del self._book[connection_id]


def _request(
    conversation: Conversation, event: dict[str, Any], items: list[Any], stored: bool
) -> str:
    """``event`` continuing the conversation with ``items``: by id while the server can
    look it up, else replaying the transcript and the turn so far."""
    if conversation.last_response_id and (conversation.on_this_socket or stored):
        event["previous_response_id"] = conversation.last_response_id
    elif conversation.transcript or conversation.pending is not items:
        kept = b",".join(turn.json for turn in conversation.transcript)
        turns = kept.decode("utf-8", "surrogatepass")
        so_far = compact(conversation.pending or items)[1:-1]
        history = ",".join(part for part in (turns, so_far) if part)
        head = compact(event)[:-1]  # the object without its closing brace
        return f'{head},"input":[{history}]}}'
    event["input"] = items
    return compact(event)


def input_items(turn_input: str | tuple[Any, ...]) -> list[Any]:
    """A turn's input as Responses input items (text becomes one user message)."""
    if isinstance(turn_input, str):
        return [{"role": "user", "content": turn_input}]
    return list(turn_input)


def _replayable(output: list[Any]) -> list[Any]:
    """The output items a later request can carry as input: messages, as assistant turns,
    and the calls of the client's own tools (the next ``ask`` carries their outputs)."""
    replay: list[Any] = []
    for item in output:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "function_call":
            replay.append({key: item.get(key) for key in ("type", "call_id", "name", "arguments")})
            continue
        if item.get("type") != "message":
            continue
        texts = [
            part.get("text", "")
            for part in item.get("content") or []
            if isinstance(part, dict) and part.get("type") in ("output_text", "refusal")
        ]
        replay.append({"role": "assistant", "content": "".join(texts)})
    return replay
