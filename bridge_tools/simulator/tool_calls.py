"""Deterministic function calling, so a client's tool loop runs offline (no I/O).

**Asking for calls.** When a ``response.create`` offers function tools
(``"tools": [{"type": "function", "name": "set_light", ...}]``) and its latest user
message says ``call <name> with <arguments>``, the response calls that tool instead of
answering in text. Several phrases make several calls, in order, in one response::

    Please call set_light with {"state":"off"} and call read_sensor with {"sensor":"hall"}

- ``<arguments>`` is copied verbatim into the call's ``arguments`` string, spacing and
  all. It is never checked against the tool's ``parameters`` (validating is the
  client's job). Text that is not JSON is passed on as it is: up to its balanced closing
  brace when it starts with ``{``, otherwise up to the end of the sentence (``.``, ``!``
  or ``?`` before a space, a line break, or the next ``call ... with``). So
  ``call set_light with {state: off}`` gets the invalid arguments ``{state: off}``.
- Names that are not offered tools make no call; with none left the answer is ordinary
  text. ``tool_choice: "none"`` makes no calls; ``parallel_tool_calls: false`` makes only
  the first.
- Calls come only from the user message of the current turn. Once outputs come back for
  it, the model answers in text instead of calling again. ``call <name> with
  <arguments> repeatedly`` makes that call again in every round, so a client's round
  limit can be hit.

**Answering with outputs.** A request whose input carries ``function_call_output`` items
after its latest user message (or has no user message at all, as a
``previous_response_id`` continuation) is answered with text quoting each output in
order: ``The tool set_light returned: {"state":"OFF"}.`` The name comes from the
``function_call`` items in the input or the chain; a call item without a name gives
``The tool returned: ...``.

**Pairing.** Like the real API, a request is rejected before ``response.created`` with a
400 ``invalid_request_error`` (``param: "input"``, no ``code``) when a
``function_call_output`` answers no known call (``No tool call found for function call
output with call_id call_...``), or when a call made by the parent response, or a
``function_call`` item in the input, has no output in the input (``No tool output found
for function call call_...``). As for any failed same-lane continuation, the parent is
then evicted from the connection cache.

**Streaming.** Each call is one ``function_call`` output item: ``output_item.added``
(``status: "in_progress"``, empty ``arguments``), ``function_call_arguments.delta``
events (one per token, with ``obfuscation`` unless disabled), ``function_call_arguments.done``
(``item_id``, ``name``, ``output_index``, ``arguments``), ``output_item.done``
(``status: "completed"``). There is no message item; mid-stream faults hit the first
call's arguments halfway; the ``incomplete`` and ``huge_completed`` faults and
``max_output_tokens`` apply to text answers only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from bridge_tools.simulator import events, rejections
from bridge_tools.simulator.events import JSON, IdFactory
from bridge_tools.simulator.faults import Fault
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import ToolMemory
from bridge_tools.simulator.steps import Pause, Stream, send_deltas
from bridge_tools.simulator.text import content_text, count_tokens, tokenize

_CALL_RE = re.compile(r"\bcall\s+([A-Za-z0-9_-]+)\s+with\s+", re.IGNORECASE)
_REPEAT_RE = re.compile(r"\s*repeatedly\b", re.IGNORECASE)
_SENTENCE_END_RE = re.compile(r"[.!?](?=\s|$)|\n")
_TRAILING_JOIN_RE = re.compile(r"(?:[\s,;]+(?:and|then))?[\s,;]*$", re.IGNORECASE)
_WORD_CHAR_RE = re.compile(r"\w")
_DECODER = json.JSONDecoder()


@dataclass(frozen=True, slots=True)
class CallSpec:
    """One ``call <name> with <arguments>`` phrase."""

    name: str
    arguments: str
    repeat: bool = False  # "... repeatedly": call again in every round


@dataclass(frozen=True, slots=True)
class ToolOutput:
    """A ``function_call_output`` input item."""

    call_id: str
    output: str
    recent: bool  # after the input's latest user message


@dataclass(frozen=True, slots=True)
class ToolInput:
    """What a request says about tools: offers, its latest user message, call items."""

    offered: tuple[str, ...] = ()
    calls_allowed: bool = True  # tool_choice is not "none"
    parallel: bool = True  # parallel_tool_calls is not false
    user_text: str | None = None  # the input's latest user message
    after_user: bool = False  # call or output items follow that message
    calls: tuple[tuple[str, str], ...] = ()  # (call_id, name) of function_call items
    outputs: tuple[ToolOutput, ...] = ()


@dataclass(frozen=True, slots=True)
class ToolTurn:
    """What one response does about tools."""

    calls: tuple[CallSpec, ...]  # the calls to make (then no text)
    quote: str | None  # the text answer quoting the new outputs, if there are any
    memory: ToolMemory  # the chain's tool state, before this response's own calls

    def after(self, items: list[JSON]) -> ToolMemory:
        """The memory of a response that made these ``function_call`` items."""
        made = tuple((item["call_id"], item["name"]) for item in items)
        if not made:
            return self.memory
        return replace(
            self.memory,
            pending=tuple(call_id for call_id, _ in made),
            names=self.memory.names + made,
            answered=True,
        )


def find_calls(text: str) -> tuple[CallSpec, ...]:
    """Every ``call <name> with <arguments> [repeatedly]`` phrase in text, in order."""
    specs: list[CallSpec] = []
    position = 0
    while (match := _CALL_RE.search(text, position)) is not None:
        arguments, end = _arguments(text, match.end())
        repeat = _REPEAT_RE.match(text, end)
        position = repeat.end() if repeat else end
        if arguments:
            specs.append(CallSpec(match.group(1), arguments, repeat is not None))
    return tuple(specs)


def _arguments(text: str, start: int) -> tuple[str, int]:
    """The arguments written at start, verbatim, and where they end."""
    try:
        _, json_end = _DECODER.raw_decode(text, start)
    except (ValueError, RecursionError):
        pass
    else:
        if not _WORD_CHAR_RE.match(text, json_end):  # not "null" of "nullable"
            return text[start:json_end], json_end
    if text.startswith("{", start):
        brace_end = _balanced_end(text, start)
        if brace_end is not None:
            return text[start:brace_end], brace_end
    limit = len(text)
    for pattern in (_SENTENCE_END_RE, _CALL_RE):
        found = pattern.search(text, start)
        if found is not None:
            limit = min(limit, found.start())
    raw = _TRAILING_JOIN_RE.sub("", text[start:limit])
    return raw, start + len(raw)


def _balanced_end(text: str, start: int) -> int | None:
    """Just past the brace closing the one at start (quotes respected), if any."""
    depth = 0
    in_string = escaped = False
    for index in range(start, len(text)):
        char = text[index]
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index + 1
    return None


def read_input(frame: Mapping[str, object]) -> ToolInput:
    """Read a ``response.create`` frame's tools and tool-related input items."""
    tools = frame.get("tools")
    offered = tuple(
        tool["name"]
        for tool in (tools if isinstance(tools, list) else [])
        if isinstance(tool, dict) and tool.get("type") == "function"
        if isinstance(tool.get("name"), str)
    )
    value = frame.get("input")
    user_text = value if isinstance(value, str) else None
    after_user = False
    calls: list[tuple[str, str]] = []
    outputs: list[tuple[str, str]] = []
    recent_from = 0
    for item in value if isinstance(value, list) else []:
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        call_id = item.get("call_id")
        if kind == "message" and item.get("role", "user") == "user":
            user_text = content_text(item.get("content"))
            after_user = False
            recent_from = len(outputs)
        elif kind == "function_call" and isinstance(call_id, str):
            name = item.get("name")
            calls.append((call_id, name if isinstance(name, str) else ""))
            after_user = True
        elif kind == "function_call_output" and isinstance(call_id, str):
            outputs.append((call_id, _output_text(item.get("output"))))
            after_user = True
    return ToolInput(
        offered=offered,
        calls_allowed=frame.get("tool_choice") != "none",
        parallel=frame.get("parallel_tool_calls") is not False,
        user_text=user_text,
        after_user=after_user and user_text is not None,
        calls=tuple(calls),
        outputs=tuple(
            ToolOutput(call_id, output, index >= recent_from)
            for index, (call_id, output) in enumerate(outputs)
        ),
    )


def _output_text(output: object) -> str:
    """A ``function_call_output``'s ``output``: a string, or text parts joined."""
    if isinstance(output, str):
        return output
    text = content_text(output)
    return text or json.dumps(output, ensure_ascii=False)


def plan_turn(tools: ToolInput, parent: ToolMemory | None) -> ToolTurn | Rejection:
    """Decide what a response does about tools, or why the request is rejected.

    Args:
        tools: What the request says about tools.
        parent: The tool memory of its ``previous_response_id``, if any.
    """
    names = dict(parent.names) if parent is not None else {}
    names.update(tools.calls)
    for output in tools.outputs:
        if output.call_id not in names:
            return rejections.no_tool_call(output.call_id)
    answered_ids = {output.call_id for output in tools.outputs}
    owed = [*(parent.pending if parent is not None else ()), *(c for c, _ in tools.calls)]
    for call_id in owed:
        if call_id not in answered_ids:
            return rejections.no_tool_output(call_id)

    user_text: str | None
    if tools.user_text is not None:
        user_text, answered = tools.user_text, tools.after_user
    elif parent is not None:
        user_text, answered = parent.user_text, parent.answered or bool(tools.outputs)
    else:
        user_text, answered = None, bool(tools.outputs)
    specs: tuple[CallSpec, ...] = ()
    if user_text and tools.offered and tools.calls_allowed:
        specs = tuple(
            spec
            for spec in find_calls(user_text)
            if spec.name in tools.offered and (spec.repeat or not answered)
        )
    if not tools.parallel:
        specs = specs[:1]
    recent = [output for output in tools.outputs if output.recent]
    quote = quote_outputs(recent, names) if recent else None
    memory = ToolMemory(names=tuple(names.items()), user_text=user_text, answered=answered)
    return ToolTurn(specs, quote, memory)


def quote_outputs(outputs: list[ToolOutput], names: Mapping[str, str]) -> str:
    """The deterministic answer to tool outputs: one sentence quoting each."""
    sentences = []
    for output in outputs:
        name = names.get(output.call_id)
        tool = f"The tool {name}" if name else "The tool"
        sentences.append(f"{tool} returned: {output.output}.")
    return " ".join(sentences)


def send_calls(
    stream: Stream,
    calls: tuple[CallSpec, ...],
    *,
    ids: IdFactory,
    response_id: str,
    fault: Fault | None,
    obfuscate: bool,
) -> tuple[list[JSON], int] | None:
    """Stream one ``function_call`` item per call from output index 0.

    Returns:
        The finished items and their output tokens; None if a fault ended the stream.
    """
    items: list[JSON] = []
    output_tokens = 0
    for index, call in enumerate(calls):
        item_id, call_id = ids.new("fc"), ids.new("call")
        added = events.function_call_item(item_id, call_id, call.name, "", "in_progress")
        stream.send("response.output_item.added", output_index=index, item=added)
        if index == 0 and stream.settings.first_token_delay > 0:
            stream.steps.append(Pause(stream.settings.first_token_delay))
        where: JSON = {"item_id": item_id, "output_index": index}
        pieces = tokenize(call.arguments)
        if not send_deltas(
            stream,
            "response.function_call_arguments.delta",
            pieces,
            where,
            fault=fault if index == 0 else None,
            obfuscation=f"{response_id}:{item_id}" if obfuscate else None,
            logprobs=False,
        ):
            return None
        stream.send(
            "response.function_call_arguments.done",
            item_id=item_id,
            name=call.name,
            output_index=index,
            arguments=call.arguments,
        )
        done = events.function_call_item(item_id, call_id, call.name, call.arguments, "completed")
        stream.send("response.output_item.done", output_index=index, item=done)
        items.append(done)
        output_tokens += len(pieces) + count_tokens(call.name)
    return items, output_tokens
