"""What the server does for one request, planned ahead as a list of steps (no I/O).

:func:`plan_request` turns a validated request, its resolved parent and the scripted
fault into a :class:`Plan`: frames to send, pauses, and transport actions (abort,
close, mute pongs). The server only executes the steps, so every detail of the event
sequence can be unit-tested without sockets or clocks.

The answer is text (``message`` item), or ``function_call`` items when the request's
user message asks for tool calls, or text quoting the tool outputs it carries; see
:mod:`~bridge_tools.simulator.tool_calls`, which also rejects outputs that do not pair
up with calls. The step types and the shared streaming helpers live in
:mod:`~bridge_tools.simulator.steps`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from bridge_tools.simulator import events, rejections, tool_calls
from bridge_tools.simulator.events import JSON, IdFactory
from bridge_tools.simulator.faults import FaultKind
from bridge_tools.simulator.inbound import CreateRequest, SteerRequest
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import Parent, Snapshot, ToolMemory
from bridge_tools.simulator.steps import (
    Abort,
    Hang,
    MutePongs,
    Pause,
    Plan,
    Send,
    Settings,
    Settle,
    Stream,
    send_deltas,
)
from bridge_tools.simulator.text import (
    chunk_tokens,
    generate_answer,
    long_text,
    scripted_reply,
    tokenize,
)
from bridge_tools.simulator.tool_calls import ToolTurn

# huge_completed: response.completed must exceed 1 MiB (Python websockets' default
# max_size) while every earlier frame stays below it.
HUGE_REASONING_CHARS = 600 * 1024
HUGE_TEXT_CHARS = 500 * 1024
HUGE_DELTA_CHARS = 16 * 1024
HUGE_REASONING_TOKENS = 1024
CACHE_MIN_TOKENS = 1024  # prompt caching starts at 1024 tokens
CACHE_BLOCK_TOKENS = 128  # and grows in blocks of 128


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
    turn = tool_calls.plan_turn(request.tools, parent.snapshot.tools if parent else None)
    if isinstance(turn, Rejection):
        return plan_error(turn, request.stream_id, settings)
    if not request.generate:
        return _plan_warm_up(request, parent, turn, ids=ids, now=now, settings=settings)
    return _plan_answer(request, parent, turn, ids=ids, now=now, settings=settings)


def _snapshot(
    request: CreateRequest,
    parent: Parent | None,
    response_id: str,
    tokens: int,
    tools: ToolMemory,
) -> Snapshot:
    context = parent.snapshot.context_tokens if parent else 0
    turns = parent.snapshot.turns if parent else 0
    return Snapshot(
        response_id, request.stream_id, context + tokens, turns + 1, request.store, tools
    )


def _input_usage(request: CreateRequest, parent: Parent | None) -> tuple[int, int]:
    """Input tokens (the chain so far plus the new input) and the cached part of them."""
    context = parent.snapshot.context_tokens if parent else 0
    cached = 0
    if parent is not None and parent.cached and context >= CACHE_MIN_TOKENS:
        cached = context // CACHE_BLOCK_TOKENS * CACHE_BLOCK_TOKENS
    return context + request.input_tokens, cached


def _plan_warm_up(
    request: CreateRequest,
    parent: Parent | None,
    turn: ToolTurn,
    *,
    ids: IdFactory,
    now: int,
    settings: Settings,
) -> Plan:
    """``generate: false``: created, then completed with no output and zero usage."""
    stream = Stream(request.stream_id, settings)
    response_id = ids.new("resp")
    response = functools.partial(
        events.response_object, request.body, response_id=response_id, created_at=now
    )
    stream.send("response.created", response=response(status="in_progress"))
    stream.steps.append(Settle(succeeded=True))
    completed = response(status="completed", usage=events.usage(0, 0), completed_at=now)
    stream.send(stream.terminal("response.completed"), response=completed)
    snapshot = _snapshot(request, parent, response_id, request.input_tokens, turn.memory)
    return Plan(tuple(stream.steps), snapshot)


def _answer_tokens(
    request: CreateRequest, parent: Parent | None, turn: ToolTurn, settings: Settings
) -> list[str]:
    if settings.fixed_reply is not None:
        return tokenize(settings.fixed_reply)
    if request.fault is not None and request.fault.kind is FaultKind.HUGE_COMPLETED:
        return tokenize(long_text(request.prompt, settings.seed, HUGE_TEXT_CHARS))
    if turn.quote is not None:
        return tokenize(turn.quote)
    scripted = scripted_reply(request.prompt)
    if scripted is not None:
        return tokenize(scripted)
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
    request: CreateRequest,
    parent: Parent | None,
    turn: ToolTurn,
    *,
    ids: IdFactory,
    now: int,
    settings: Settings,
) -> Plan:
    """The canonical sequence (§6.2, or §6.3 for function calls), bent by the fault."""
    fault = request.fault
    kind = fault.kind if fault is not None else None
    stream = Stream(request.stream_id, settings)
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
    if turn.calls:
        made = tool_calls.send_calls(
            stream,
            turn.calls,
            ids=ids,
            response_id=response_id,
            fault=fault,
            obfuscate=request.include_obfuscation,
        )
        if made is None:
            return Plan(tuple(stream.steps))
        items, call_tokens = made
        usage = events.usage(input_tokens, call_tokens, cached_tokens=cached_tokens)
        _finish(stream, response, now, items, usage, None)
        chain_tokens = request.input_tokens + call_tokens
        snapshot = _snapshot(request, parent, response_id, chain_tokens, turn.after(items))
        return Plan(tuple(stream.steps), snapshot)

    output: list[JSON] = []
    reasoning_tokens = 0
    if kind is FaultKind.HUGE_COMPLETED:
        reasoning_tokens = HUGE_REASONING_TOKENS
        output.append(_send_reasoning(stream, ids.new("rs"), response_id))
    output_index = len(output)
    message_id = ids.new("msg")
    tokens, incomplete_reason = _cut(_answer_tokens(request, parent, turn, settings), request)
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
    obfuscation = response_id if request.include_obfuscation else None
    delta_type = "response.output_text.delta"
    if not send_deltas(stream, delta_type, deltas, where, fault=fault, obfuscation=obfuscation):
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
    _finish(stream, response, now, output, usage, incomplete_reason)
    tokens_so_far = request.input_tokens + output_tokens
    snapshot = _snapshot(request, parent, response_id, tokens_so_far, turn.memory)
    return Plan(tuple(stream.steps), snapshot)


def _finish(
    stream: Stream,
    response: Callable[..., JSON],
    now: int,
    output: list[JSON],
    usage: JSON,
    incomplete_reason: str | None,
) -> None:
    """Settle, then the terminal event: ``response.incomplete`` or ``response.completed``."""
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


def _send_reasoning(stream: Stream, item_id: str, response_id: str) -> JSON:
    """A reasoning item with a large ``encrypted_content`` at output index 0."""
    stream.send("response.output_item.added", output_index=0, item=events.reasoning_item(item_id))
    blob = events.encrypted_blob(response_id, HUGE_REASONING_CHARS)
    done = events.reasoning_item(item_id, blob)
    stream.send("response.output_item.done", output_index=0, item=done)
    return done
