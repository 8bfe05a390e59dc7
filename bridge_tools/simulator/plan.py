"""What the server does for one request, planned ahead as a list of steps (no I/O).

:func:`plan_request` turns a validated request, its resolved parent and the scripted
fault into a :class:`Plan`: frames to send, pauses, and transport actions (abort,
close, mute pongs). The server only executes the steps, so every detail of the event
sequence can be unit-tested without sockets or clocks.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from bridge_tools.simulator import events, rejections
from bridge_tools.simulator.events import JSON, IdFactory
from bridge_tools.simulator.faults import Fault, FaultKind, close_reason
from bridge_tools.simulator.inbound import CreateRequest, SteerRequest
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import Parent, Snapshot
from bridge_tools.simulator.text import (
    chunk_tokens,
    count_tokens,
    generate_answer,
    long_text,
    tokenize,
)

# huge_completed: response.completed must exceed 1 MiB (Python websockets' default
# max_size) while every earlier frame stays below it.
HUGE_REASONING_CHARS = 600 * 1024
HUGE_TEXT_CHARS = 500 * 1024
HUGE_DELTA_CHARS = 16 * 1024
HUGE_REASONING_TOKENS = 1024
CACHE_MIN_TOKENS = 1024  # prompt caching starts at 1024 tokens
CACHE_BLOCK_TOKENS = 128  # and grows in blocks of 128


@dataclass(frozen=True, slots=True)
class Send:
    """Send one event as a JSON text frame."""

    event: JSON


@dataclass(frozen=True, slots=True)
class Pause:
    """Send nothing for a while (pings are still answered)."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Abort:
    """Drop the TCP connection without a Close frame (the client sees 1006)."""


@dataclass(frozen=True, slots=True)
class Close:
    """Close the WebSocket with this code and reason."""

    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class MutePongs:
    """Stop answering pings on this connection."""


@dataclass(frozen=True, slots=True)
class Hang:
    """Send nothing more until the connection ends."""


@dataclass(frozen=True, slots=True)
class Settle:
    """The outcome is final: update the caches before the terminal frame goes out.

    Doing it first means a client that reacts to the terminal event at once (say, by
    forking from it on another lane) always finds the response cached.
    """

    succeeded: bool


Step = Send | Pause | Abort | Close | MutePongs | Hang | Settle


@dataclass(frozen=True, slots=True)
class Plan:
    """The steps for one request and what to cache if it succeeds."""

    steps: tuple[Step, ...]
    snapshot: Snapshot | None = None


@dataclass(frozen=True, slots=True)
class Settings:
    """The server-wide options that shape a plan."""

    seed: int = 0
    tokens_per_second: float | None = None
    first_token_delay: float = 0.0
    response_done: bool = False
    flat_errors: bool = False
    fixed_reply: str | None = None


@dataclass(slots=True)
class _Stream:
    """Accumulates the steps of one response, numbering its events from 0."""

    stream_id: str | None
    settings: Settings
    steps: list[Step] = field(default_factory=list)
    sequence_number: int = 0

    def send(self, event_type: str, **fields: Any) -> None:
        event: JSON = {"type": event_type, "sequence_number": self.sequence_number, **fields}
        if self.stream_id is not None:
            event["stream_id"] = self.stream_id
        self.sequence_number += 1
        self.steps.append(Send(event))

    def send_error(self, rejection: Rejection) -> None:
        """A mid-stream ``error`` event, which takes the next sequence number."""
        self.steps.append(Settle(succeeded=False))
        self.steps.append(
            Send(
                events.error_event(
                    rejection,
                    stream_id=self.stream_id,
                    sequence_number=self.sequence_number,
                    flat=self.settings.flat_errors,
                )
            )
        )
        self.sequence_number += 1

    def terminal(self, event_type: str) -> str:
        return "response.done" if self.settings.response_done else event_type

    def elapsed(self) -> int:
        return int(sum(step.seconds for step in self.steps if isinstance(step, Pause)))


def plan_error(rejection: Rejection, stream_id: str | None, settings: Settings) -> Plan:
    """A request-scoped error sent instead of ``response.created``."""
    event = events.error_event(rejection, stream_id=stream_id, flat=settings.flat_errors)
    return Plan((Settle(succeeded=False), Send(event)))


def plan_steer(request: SteerRequest) -> Plan:
    """Steering is for GPT-6 models only: every steer fails with steering_not_supported."""
    event: JSON = {
        "type": "response.steer.failed",
        "steer": {"previous_response_id": request.previous_response_id, "input": request.input},
        "error": {
            "type": "invalid_request_error",
            "code": "steering_not_supported",
            "message": "Steering is not supported for this model.",
        },
    }
    return Plan((Send(event),))


def plan_request(
    request: CreateRequest,
    parent: Parent | Rejection | None,
    *,
    ids: IdFactory,
    now: int,
    settings: Settings,
) -> Plan:
    """Plan everything the server sends for one ``response.create``.

    Args:
        request: The validated request.
        parent: Its resolved ``previous_response_id`` (a Rejection when not found).
        ids: Where new ids come from.
        now: Unix time in seconds, used for ``created_at``.
        settings: Pacing and protocol variants.
    """
    fault = request.fault
    if request.rejection is not None:
        return plan_error(request.rejection, request.stream_id, settings)
    if fault is not None and fault.kind is FaultKind.RATE_LIMIT:
        return plan_error(rejections.rate_limited(), request.stream_id, settings)
    if fault is not None and fault.kind is FaultKind.DROP_BEFORE_CREATED:
        return Plan((Abort(),))
    if isinstance(parent, Rejection):
        return plan_error(parent, request.stream_id, settings)
    if not request.generate:
        return _plan_warm_up(request, parent, ids=ids, now=now, settings=settings)
    return _plan_answer(request, parent, ids=ids, now=now, settings=settings)


def _snapshot(
    request: CreateRequest, parent: Parent | None, response_id: str, tokens: int
) -> Snapshot:
    context = parent.snapshot.context_tokens if parent else 0
    turns = parent.snapshot.turns if parent else 0
    return Snapshot(response_id, request.stream_id, context + tokens, turns + 1, request.store)


def _input_usage(request: CreateRequest, parent: Parent | None) -> tuple[int, int]:
    """Input tokens (the chain so far plus the new input) and the cached part of them."""
    context = parent.snapshot.context_tokens if parent else 0
    cached = 0
    if parent is not None and parent.cached and context >= CACHE_MIN_TOKENS:
        cached = context // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS
    return context + request.input_tokens, cached


def _plan_warm_up(
    request: CreateRequest, parent: Parent | None, *, ids: IdFactory, now: int, settings: Settings
) -> Plan:
    """``generate: false``: created, then completed with no output and zero usage."""
    stream = _Stream(request.stream_id, settings)
    response_id = ids.new("resp")
    response = functools.partial(
        events.response_object, request.body, response_id=response_id, created_at=now
    )
    stream.send("response.created", response=response(status="in_progress"))
    stream.steps.append(Settle(succeeded=True))
    completed = response(status="completed", usage=events.usage(0, 0), completed_at=now)
    stream.send(stream.terminal("response.completed"), response=completed)
    return Plan(tuple(stream.steps), _snapshot(request, parent, response_id, request.input_tokens))


def _answer_tokens(request: CreateRequest, parent: Parent | None, settings: Settings) -> list[str]:
    if settings.fixed_reply is not None:
        return tokenize(settings.fixed_reply)
    if request.fault is not None and request.fault.kind is FaultKind.HUGE_COMPLETED:
        return tokenize(long_text(request.prompt, settings.seed, HUGE_TEXT_CHARS))
    follow_up = parent is not None or request.has_history
    return tokenize(generate_answer(request.prompt, settings.seed, follow_up=follow_up))


def _cut(tokens: list[str], request: CreateRequest) -> tuple[list[str], str | None]:
    """The tokens actually produced and the incomplete reason, if any."""
    fault = request.fault
    if fault is not None and fault.kind is FaultKind.INCOMPLETE:
        return tokens[: max(1, len(tokens) // 2)], fault.incomplete_reason
    limit = request.max_output_tokens
    if limit is not None and len(tokens) > limit:
        return tokens[:limit], "max_output_tokens"
    return tokens, None


def _plan_answer(
    request: CreateRequest, parent: Parent | None, *, ids: IdFactory, now: int, settings: Settings
) -> Plan:
    """The canonical text sequence (§6.2), bent by the request's fault."""
    fault = request.fault
    kind = fault.kind if fault is not None else None
    stream = _Stream(request.stream_id, settings)
    response_id = ids.new("resp")
    response = functools.partial(
        events.response_object, request.body, response_id=response_id, created_at=now
    )
    stream.send("response.created", response=response(status="in_progress"))
    if kind is FaultKind.DROP_AFTER_CREATED:
        return Plan((*stream.steps, Abort()))
    if kind in (FaultKind.NO_PONG, FaultKind.HANG):
        stream.steps.append(MutePongs())
        if kind is FaultKind.HANG:
            return Plan((*stream.steps, Hang()))
    stream.send("response.in_progress", response=response(status="in_progress"))
    input_tokens, cached_tokens = _input_usage(request, parent)
    if kind is FaultKind.FAILED:
        stream.steps.append(Settle(succeeded=False))
        error = {"code": "server_error", "message": rejections.server_error().message}
        stream.send(
            stream.terminal("response.failed"), response=response(status="failed", error=error)
        )
        return Plan(tuple(stream.steps))

    output: list[JSON] = []
    reasoning_tokens = 0
    if kind is FaultKind.HUGE_COMPLETED:
        reasoning_tokens = HUGE_REASONING_TOKENS
        output.append(_send_reasoning(stream, ids.new("rs"), response_id))
    output_index = len(output)
    message_id = ids.new("msg")
    tokens, incomplete_reason = _cut(_answer_tokens(request, parent, settings), request)
    text = "".join(tokens)
    where: JSON = {"item_id": message_id, "output_index": output_index, "content_index": 0}
    stream.send(
        "response.output_item.added",
        output_index=output_index,
        item=events.message_item(message_id, "in_progress"),
    )
    stream.send("response.content_part.added", **where, part=events.output_text_part(""))
    if settings.first_token_delay > 0:
        stream.steps.append(Pause(settings.first_token_delay))
    huge = kind is FaultKind.HUGE_COMPLETED
    deltas = chunk_tokens(tokens, HUGE_DELTA_CHARS) if huge else tokens
    if not _send_deltas(stream, deltas, where, fault, request, response_id):
        return Plan(tuple(stream.steps))

    item_status = "incomplete" if incomplete_reason else "completed"
    stream.send("response.output_text.done", **where, text=text, logprobs=[])
    stream.send("response.content_part.done", **where, part=events.output_text_part(text))
    message = events.message_item(message_id, item_status, text)
    stream.send("response.output_item.done", output_index=output_index, item=message)
    output.append(message)
    output_tokens = len(tokens) + reasoning_tokens
    usage = events.usage(
        input_tokens,
        output_tokens,
        cached_tokens=cached_tokens,
        reasoning_tokens=reasoning_tokens,
    )
    stream.steps.append(Settle(succeeded=True))
    if incomplete_reason is not None:
        final = response(
            status="incomplete",
            output=output,
            usage=usage,
            incomplete_details={"reason": incomplete_reason},
        )
        stream.send(stream.terminal("response.incomplete"), response=final)
    else:
        completed_at = now + stream.elapsed()
        final = response(status="completed", output=output, usage=usage, completed_at=completed_at)
        stream.send(stream.terminal("response.completed"), response=final)
    snapshot = _snapshot(request, parent, response_id, request.input_tokens + output_tokens)
    return Plan(tuple(stream.steps), snapshot)


def _send_reasoning(stream: _Stream, item_id: str, response_id: str) -> JSON:
    """A reasoning item with a large ``encrypted_content`` at output index 0."""
    stream.send("response.output_item.added", output_index=0, item=events.reasoning_item(item_id))
    blob = events.encrypted_blob(response_id, HUGE_REASONING_CHARS)
    done = events.reasoning_item(item_id, blob)
    stream.send("response.output_item.done", output_index=0, item=done)
    return done


def _send_deltas(
    stream: _Stream,
    deltas: list[str],
    where: JSON,
    fault: Fault | None,
    request: CreateRequest,
    response_id: str,
) -> bool:
    """Add the delta events, and the fault halfway; False if the stream ends there."""
    cut = len(deltas) // 2
    pace = stream.settings.tokens_per_second
    for index in range(len(deltas) + 1):
        if index == cut and fault is not None and not _mid_stream_fault(stream, fault):
            return False
        if index == len(deltas):
            break
        delta = deltas[index]
        if index > 0 and pace:
            stream.steps.append(Pause(count_tokens(delta) / pace))
        fields: JSON = {**where, "delta": delta, "logprobs": []}
        if request.include_obfuscation:
            fields["obfuscation"] = events.obfuscation(f"{response_id}:{index}")
        stream.send("response.output_text.delta", **fields)
    return True


def _mid_stream_fault(stream: _Stream, fault: Fault) -> bool:
    """Apply a mid-stream fault; False if the stream ends with it."""
    match fault.kind:
        case FaultKind.DROP_MID_STREAM:
            stream.steps.append(Abort())
            return False
        case FaultKind.CLOSE:
            code = fault.close_code if fault.close_code is not None else 1011
            stream.steps.append(Close(code, close_reason(code)))
            return False
        case FaultKind.ERROR_MID_STREAM:
            stream.send_error(rejections.server_error())
            return False
        case FaultKind.GAP:
            stream.steps.append(Pause(fault.seconds or 0.0))
            return True
        case _:
            return True
