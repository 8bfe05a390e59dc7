"""Tools over MQTT: what the owner declares, and one call checked and rendered (pure).

A tool is a fixed MQTT topic the model may publish to, with a JSON Schema its
arguments must pass (checked with the ``jsonschema`` library) and a payload:
the arguments as JSON, or a fixed JSON shape in which a string that is exactly
``"{{name}}"`` stands for the argument ``name``. The model never chooses a
topic and never writes a key. :class:`ToolBox` holds the declared tools, their
definitions for a request, and turns one ``function_call`` into the message to
publish, or into the short error the model is told.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Final

import jsonschema
from jsonschema.protocols import Validator
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from bridge.errors import CommandError
from bridge.protocol.encoding import compact
from bridge.protocol.error_codes import INVALID_COMMAND
from bridge.protocol.strict_json import elide, load_json

# The most a rendered payload may be: the model writes the arguments.
MAX_TOOL_PAYLOAD_BYTES: Final = 16 * 1024
# The most of a reply the model is given (longer replies are cut).
MAX_TOOL_OUTPUT_BYTES: Final = 8 * 1024
_NAME: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
_PLACEHOLDER: Final = re.compile(r"\{\{\s*([A-Za-z0-9_-]+)\s*\}\}")


def _plain_topic(value: str) -> str:
    problem = topic_problem(value)
    if problem is not None:
        raise ValueError(problem)
    return value


# A fixed topic: no wildcards, no $ (checked at start, like every key).
ToolTopic = Annotated[str, AfterValidator(_plain_topic)]


class ToolPublish(BaseModel):
    """Where a call goes: a fixed topic, and the payload's shape."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    topic: ToolTopic
    """The fixed topic a call is published on: no wildcards, no `$`, nothing under the bridge's
    prefix or Home Assistant's discovery prefix."""
    payload: Any = None
    """null: the arguments as JSON; else a JSON shape in which every string that is exactly
    `"{{name}}"` is replaced by that argument's value."""
    qos: int = Field(1, ge=0, le=2)
    """QoS of the call's message."""
    retain: bool = False
    """Whether the call's message is retained."""


class ToolReply(BaseModel):
    """Where the result of a call comes back, and how long the model waits for it."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    topic: ToolTopic
    """The topic the call's result comes back on (a fixed topic, like `publish.topic`)."""
    timeout: float = Field(10.0, gt=0, le=600)
    """Seconds to wait for the reply; then the model is told `no reply on <topic> within N s
    (timeout)`."""


class ToolConfig(BaseModel):
    """One entry of ``tools``."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    name: str
    """The function name the model calls: 1-64 of `A-Z a-z 0-9 _ -`, unique among the tools."""
    description: str = ""
    """What the tool does, told to the model."""
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """JSON Schema of the arguments: told to the model, and checked on every call before anything
    is published."""
    publish: ToolPublish
    """Where a call goes."""
    reply: ToolReply | None = None
    """Where the call's result comes back; null: the call is done once published."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("a tool name is 1-64 letters, digits, '_' or '-'")
        return value

    @field_validator("parameters")
    @classmethod
    def _schema(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            jsonschema.Draft202012Validator.check_schema(value)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        if value.get("type") != "object":
            raise ValueError('the parameters schema must be {"type": "object", ...}')
        return value


def check_tools(
    tools: Sequence[ToolConfig], profiles: Mapping[str, Any], reserved: Sequence[str]
) -> None:
    """Names unique, topics away from the ``reserved`` prefixes (the bridge's own, Home
    Assistant's discovery), every profile's tools declared (ValueError naming the first
    problem)."""
    names = [tool.name for tool in tools]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise ValueError(f"tools: {', '.join(twice)} declared twice")
    for tool in tools:
        topics = [tool.publish.topic] + ([tool.reply.topic] if tool.reply else [])
        for topic in topics:
            for prefix in reserved:
                if topic == prefix or topic.startswith(prefix + "/"):
                    raise ValueError(f"tools.{tool.name}: {topic!r} is under {prefix}/")
    for name, profile in profiles.items():
        unknown = sorted(set(profile.mqtt_tools) - set(names))
        if unknown:
            raise ValueError(f"profiles.{name}.mqtt_tools: {', '.join(unknown)} not in tools")


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be a tool's topic (wildcards, $, empty), or None."""
    if not topic or len(topic.encode()) > 65535:
        return "a topic is 1-65535 bytes"
    if "+" in topic or "#" in topic or "\x00" in topic:
        return f"{topic!r}: a tool's topic is fixed: no wildcards"
    if topic.startswith("$"):
        return f"{topic!r}: $ topics belong to the broker"
    return None


@dataclass(frozen=True, slots=True)
class Call:
    """A ``function_call`` item the model made."""

    call_id: str  # "": the item had none (or not a string)
    name: str
    arguments: str


def calls_of(output: Sequence[Any]) -> list[Call]:
    """The ``function_call`` items of a response's output, as the bridge runs them (a call
    id that is no string: "")."""
    calls = []
    for item in output:
        if isinstance(item, dict) and item.get("type") == "function_call":
            call_id, arguments = item.get("call_id"), item.get("arguments")
            calls.append(
                Call(
                    call_id if isinstance(call_id, str) else "",
                    str(item.get("name", "")),
                    arguments if isinstance(arguments, str) else json.dumps(arguments),
                )
            )
    return calls


def call_id_refusals(calls: Sequence[Call]) -> list[str | None]:
    """For each call of one response, why it is refused before anything else is looked
    at, or None: a call needs an id of its own to get its output (and its reply)."""
    uses = Counter(call.call_id for call in calls)
    refusals: list[str | None] = []
    for call in calls:
        if not call.call_id:
            refusals.append("refused: this call has no call_id; it was not run")
        elif uses[call.call_id] > 1:
            refusals.append(
                f"refused: call_id {elide(call.call_id)!r} is used by {uses[call.call_id]} "
                "calls in this response; none of them was run"
            )
        else:
            refusals.append(None)
    return refusals


@dataclass(frozen=True, slots=True)
class Rendered:
    """A valid call: what to publish."""

    topic: str
    payload: bytes
    qos: int
    retain: bool


class ToolBox:
    """The declared tools, ready to be offered and called."""

    def __init__(self, tools: Sequence[ToolConfig]) -> None:
        self.tools = {tool.name: tool for tool in tools}
        self._validators = {
            tool.name: jsonschema.Draft202012Validator(tool.parameters) for tool in tools
        }

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def definitions(self, names: Sequence[str]) -> list[dict[str, Any]]:
        """The ``tools`` entries of a request offering ``names``."""
        return [
            {
                "type": "function",
                "name": name,
                "description": self.tools[name].description,
                "parameters": self.tools[name].parameters,
            }
            for name in names
        ]

    def render(self, call: Call) -> Rendered | str:
        """The message a call publishes, or what is wrong with it (for the model)."""
        tool = self.tools[call.name]
        arguments, problem = checked_arguments(self._validators[call.name], call.arguments)
        if problem is not None:
            return problem
        shape = tool.publish.payload
        body = arguments if shape is None else _fill(shape, arguments)
        text = compact(body, allow_nan=False)
        try:
            payload = text.encode()
        except UnicodeEncodeError:  # "\ud800" is valid JSON, but no UTF-8
            return "invalid arguments: a string holds a lone surrogate (not UTF-8)"
        if len(payload) > MAX_TOOL_PAYLOAD_BYTES:
            return f"the payload would be {len(payload)} bytes, over {MAX_TOOL_PAYLOAD_BYTES}"
        publish = tool.publish
        return Rendered(publish.topic, payload, publish.qos, publish.retain)


def checked_arguments(validator: Validator, text: str) -> tuple[Any, str | None]:
    """A call's arguments parsed and checked against its tool's schema: (the arguments,
    None), or (None, what is wrong with them, for the model)."""
    try:  # strictly: NaN, Infinity and 1e999 pass {"type": "number"} in Python
        arguments = load_json(text.encode())
    except ValueError as exc:  # a lone surrogate in the text is one too
        return None, f"invalid arguments: not JSON ({elide(str(exc), 200)})"
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.path))
    if errors:
        where = "/".join(str(part) for part in errors[0].absolute_path) or "(arguments)"
        return None, f"invalid arguments: {where}: {errors[0].message}"[:500]
    return arguments, None


def _fill(shape: Any, arguments: Mapping[str, Any]) -> Any:
    """``shape`` with each ``"{{name}}"`` string replaced by that argument (null if absent)."""
    if isinstance(shape, str):
        match = _PLACEHOLDER.fullmatch(shape)
        return arguments.get(match.group(1)) if match else shape
    if isinstance(shape, list):
        return [_fill(item, arguments) for item in shape]
    if isinstance(shape, dict):
        return {key: _fill(value, arguments) for key, value in shape.items()}
    return shape


def reply_text(payload: bytes) -> str:
    """A reply as the model gets it: UTF-8 text, cut to a bound."""
    text = payload[:MAX_TOOL_OUTPUT_BYTES].decode("utf-8", "replace")
    return text + (" [cut]" if len(payload) > MAX_TOOL_OUTPUT_BYTES else "")


MAX_CLIENT_TOOLS: Final = 128  # OpenAI's own limit on the tools of one request


def client_tools(tools: object) -> tuple[Mapping[str, Any], ...]:
    """An ask's ``tools``: function tools of the client's own (Home Assistant's Assist API);
    CommandError (``invalid_command``) for anything else."""
    if tools is None:
        return ()
    if not isinstance(tools, list) or len(tools) > MAX_CLIENT_TOOLS:
        raise CommandError(
            INVALID_COMMAND, f"tools must be an array of at most {MAX_CLIENT_TOOLS} function tools"
        )
    for tool in tools:
        if (
            not isinstance(tool, dict)
            or tool.get("type") != "function"
            or not isinstance(tool.get("name"), str)
            or not tool["name"]
        ):
            raise CommandError(
                INVALID_COMMAND, 'each of tools must be {"type":"function","name":...}'
            )
    return tuple(tools)
