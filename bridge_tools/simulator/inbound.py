"""Parsing and validating client frames (no I/O).

:func:`parse_message` turns one WebSocket message into a :class:`CreateRequest`, a
:class:`SteerRequest` or a :class:`BadFrame`. Errors that belong to a lane (such as
``background: true``) are kept on the request and reported when its lane reaches it,
so a client that correlates errors by lane order is never confused. Errors that have
no lane (bad JSON, an invalid ``stream_id``) come back at once as :class:`BadFrame`.

A request's offered tools, its latest user message and its ``function_call`` /
``function_call_output`` items are read into :class:`~bridge_tools.simulator.tool_calls.ToolInput`
(``CreateRequest.tools``); whether they pair up is checked once the parent is known.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from bridge_tools.simulator import rejections
from bridge_tools.simulator.faults import METADATA_KEY, Fault, FaultError, find_fault
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.text import content_text, count_tokens
from bridge_tools.simulator.tool_calls import ToolInput, read_input

JSON = dict[str, Any]

CREATE = "response.create"
STEER = "response.steer"
_STREAM_ID_RE = re.compile(r"[A-Za-z0-9_.-]{1,256}")
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators around each message


@dataclass(frozen=True, slots=True)
class CreateRequest:
    """A ``response.create`` frame, with the fields the simulator acts on pulled out.

    ``body`` keeps the whole frame so the response object can echo what was sent.
    """

    body: JSON
    stream_id: str | None = None
    previous_response_id: str | None = None
    store: bool = True
    generate: bool = True
    model: str = ""
    max_output_tokens: int | None = None
    include_obfuscation: bool = True
    prompt: str = ""
    has_history: bool = False  # the input carries earlier turns (a replayed conversation)
    input_tokens: int = 0
    fault: Fault | None = None
    rejection: Rejection | None = None
    tools: ToolInput = field(default_factory=ToolInput)


@dataclass(frozen=True, slots=True)
class SteerRequest:
    """A ``response.steer`` frame (answered with ``response.steer.failed``)."""

    previous_response_id: str | None
    input: object


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A frame rejected before it reaches any lane; the error carries no ``stream_id``."""

    rejection: Rejection


ClientMessage = CreateRequest | SteerRequest | BadFrame


def parse_message(data: str | bytes, *, lanes: bool = True) -> ClientMessage:
    """Parse one client message.

    Args:
        data: The message as received (bytes means a binary frame).
        lanes: False for legacy single-lane mode, where ``stream_id`` is unknown.
    """
    if isinstance(data, bytes):
        return BadFrame(rejections.binary_frame())
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError) as exc:
        return BadFrame(rejections.invalid_json(str(exc)))
    if not isinstance(frame, dict):
        return BadFrame(rejections.invalid_event("Expected a JSON object with a 'type' field."))
    kind = frame.get("type")
    if kind == CREATE:
        return parse_create(frame, lanes=lanes)
    if kind == STEER:
        previous = frame.get("previous_response_id")
        return SteerRequest(previous if isinstance(previous, str) else None, frame.get("input"))
    if not isinstance(kind, str):
        return BadFrame(rejections.invalid_event("Missing required parameter: 'type'."))
    return BadFrame(
        rejections.invalid_event(
            f"Invalid value: '{kind}'. Supported values are: '{CREATE}' and '{STEER}'."
        )
    )


def parse_create(frame: JSON, *, lanes: bool = True) -> CreateRequest | BadFrame:
    """Validate a ``response.create`` frame (see :func:`parse_message`)."""
    stream_id: str | None = None
    rejection: Rejection | None = None
    if "stream_id" in frame:
        raw = frame["stream_id"]
        if not lanes:
            rejection = rejections.unknown_parameter("stream_id")
        elif not is_valid_stream_id(raw):
            return BadFrame(rejections.invalid_stream_id(raw))
        else:
            stream_id = raw
    texts, input_tokens = input_text(frame.get("input"))
    instructions = frame.get("instructions")
    if isinstance(instructions, str):
        input_tokens += count_tokens(instructions) + MESSAGE_OVERHEAD_TOKENS
    fault: Fault | None = None
    try:
        fault = find_fault(_metadata(frame), texts)
    except FaultError as exc:
        param = f"metadata.{METADATA_KEY}" if METADATA_KEY in _metadata(frame) else "input"
        rejection = rejection or rejections.bad_fault(str(exc), param=param)
    previous = frame.get("previous_response_id")
    return CreateRequest(
        body=frame,
        stream_id=stream_id,
        previous_response_id=previous if isinstance(previous, str) else None,
        store=frame.get("store") is not False,
        generate=frame.get("generate") is not False,
        model=frame["model"] if isinstance(frame.get("model"), str) else "",
        max_output_tokens=_int_or_none(frame.get("max_output_tokens")),
        include_obfuscation=_include_obfuscation(frame),
        prompt=texts[-1] if texts else "",
        has_history=len(texts) > 1,
        input_tokens=input_tokens,
        fault=fault,
        rejection=rejection or _field_errors(frame),
        tools=read_input(frame),
    )


def is_valid_stream_id(value: object) -> bool:
    """Whether value is 1-256 characters of ``[A-Za-z0-9_.-]``."""
    return isinstance(value, str) and _STREAM_ID_RE.fullmatch(value) is not None


def _field_errors(frame: JSON) -> Rejection | None:
    """The first problem with the fields the simulator checks, in the API's order."""
    if frame.get("background") is True:
        return rejections.background_not_supported()
    model = frame.get("model")
    if model is None:
        return rejections.missing_parameter("model")
    if not isinstance(model, str):
        return rejections.invalid_type("model", "a string", model)
    for name in ("store", "generate", "background", "stream"):
        value = frame.get(name)
        if value is not None and not isinstance(value, bool):
            return rejections.invalid_type(name, "a boolean", value)
    previous = frame.get("previous_response_id")
    if previous is not None and not isinstance(previous, str):
        return rejections.invalid_type("previous_response_id", "a string", previous)
    limit = frame.get("max_output_tokens")
    if limit is not None:
        if _int_or_none(limit) is None:
            return rejections.invalid_type("max_output_tokens", "an integer", limit)
        if limit < rejections.MIN_MAX_OUTPUT_TOKENS:
            return rejections.below_minimum(
                "max_output_tokens", rejections.MIN_MAX_OUTPUT_TOKENS, limit
            )
    metadata = frame.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
        return rejections.invalid_type("metadata", "an object", metadata)
    return None


def input_text(value: object) -> tuple[list[str], int]:
    """The user texts in an ``input`` value and the token count of the whole input.

    ``input`` is a string or a list of items (messages with string or part-list
    content, ``function_call_output`` items, anything else counted as JSON).
    """
    if value is None:
        return [], 0
    if isinstance(value, str):
        return [value], count_tokens(value) + MESSAGE_OVERHEAD_TOKENS
    if not isinstance(value, list):
        return [], count_tokens(json.dumps(value))
    texts: list[str] = []
    tokens = 0
    for item in value:
        if not isinstance(item, dict):
            tokens += count_tokens(json.dumps(item))
            continue
        kind = item.get("type", "message")
        if kind == "message":
            text = content_text(item.get("content"))
            if item.get("role", "user") == "user":
                texts.append(text)
            tokens += count_tokens(text) + MESSAGE_OVERHEAD_TOKENS
        elif kind == "function_call_output" and isinstance(item.get("output"), str):
            tokens += count_tokens(item["output"]) + MESSAGE_OVERHEAD_TOKENS
        else:
            tokens += count_tokens(json.dumps(item))
    return texts, tokens


def _metadata(frame: JSON) -> dict[str, object]:
    metadata = frame.get("metadata")
    return metadata if isinstance(metadata, dict) else {}


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _include_obfuscation(frame: JSON) -> bool:
    options = frame.get("stream_options")
    return not (isinstance(options, dict) and options.get("include_obfuscation") is False)
