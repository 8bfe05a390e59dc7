"""Every example in the README and the manual is what the bridge takes or says.

YAML config snippets are loaded by the bridge's config loader; JSON commands
go through its command parser; messages of the bridge must have their
object's shape, built from the code's own replies; ``bridge_tools/docs/
snippets.py`` says how a block is named when it is something else.
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config.settings import load_settings, parse_config
from bridge.errors import ConfigError
from bridge.ops.info import Tally, info_document
from bridge.protocol import contract, replies
from bridge.protocol.device_output import OBJECT_ANSWER
from bridge.protocol.error_codes import ERROR_CODES
from bridge.protocol.limits import MIB
from bridge.protocol.shared_usage import SharedUsage
from bridge.protocol.tool_rounds import (
    INVALID_ARGUMENTS,
    OBJECT_TOOL_CALL,
    PUBLISHED,
    REFUSED,
    REPLIED,
    TIMEOUT,
)
from bridge_tools.docs.snippets import Block, fenced_blocks, inline_json, json_values

ROOT = Path(__file__).parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
BLOCKS = [block for page in PAGES for block in fenced_blocks(page)]
NOT_BRIDGE_CONFIG = {"home-assistant", "prometheus", "esphome", "mkdocs"}
JSON_DOCUMENTS = {  # kinds of JSON that are neither commands nor the bridge's messages
    "bridge-info",
    "bridge-usage",
    "instance-usage",
    "log-line",
    "tool-reply",
    "simulator",
}


def _ids(blocks: list[Block]) -> list[str]:
    return [f"{block.path.relative_to(ROOT)}:{block.line}" for block in blocks]


YAML = [block for block in BLOCKS if block.lang in ("yaml", "yml")]
JSON = [block for block in BLOCKS if block.lang == "json"]


def test_the_pages_have_examples() -> None:
    assert len(YAML) >= 10
    assert len(JSON) >= 5


def test_every_marker_says_why_it_is_not_checked() -> None:
    for block in BLOCKS:
        if block.kind == "not-checked":
            assert block.why, f"{block.where}: say why"
            assert len(block.why) > 10, f"{block.where}: say why"
        elif block.kind is not None:
            known = NOT_BRIDGE_CONFIG | JSON_DOCUMENTS
            assert block.kind in known, f"{block.where}: unknown kind {block.kind!r}"


@pytest.mark.parametrize("block", YAML, ids=_ids(YAML))
def test_yaml_example_loads(block: Block) -> None:
    document = yaml.safe_load(block.text)  # every YAML block parses, whoever reads it
    if block.kind is not None:
        return  # another program's YAML, or named not-checked (and says why)
    try:  # what load_settings validates with; secrets and files named are not read here
        parse_config(document)
    except ConfigError as exc:
        pytest.fail(f"{block.where}: the bridge refuses this config: {exc}")
    assert isinstance(document, dict)


@pytest.mark.parametrize("block", JSON, ids=_ids(JSON))
def test_json_example_speaks_the_contract(block: Block) -> None:
    if block.kind == "not-checked":
        return
    try:
        values = json_values(block.text)
    except ValueError as exc:
        pytest.fail(f"{block.where}: not JSON: {exc}")
    for value in values:
        check_json(value, block.kind, block.where)


def _inline() -> Iterator[tuple[str, str]]:
    for page in PAGES:
        for line, code in inline_json(page):
            yield f"{page.relative_to(ROOT)}:{line}", code


INLINE = list(_inline())


@pytest.mark.parametrize(("where", "code"), INLINE, ids=[where for where, _ in INLINE])
def test_inline_json_speaks_the_contract(where: str, code: str) -> None:
    if not code.startswith(CONTRACT_JSON):
        return  # a payload of another program (a tool's reply, an item): not the contract's
    try:
        value = json.loads(code)
    except ValueError as exc:
        pytest.fail(f"{where}: not JSON: {exc}")
    check_json(value, None, where)


CONTRACT_JSON = ('{"action"', '{"object"', '{"type":"response.')


# The contract, from the code ------------------------------------------------------------


def check_json(value: Any, kind: str | None, where: str) -> None:
    assert isinstance(value, dict), f"{where}: a JSON object"
    if kind == "bridge-info":
        check_info(value, where)
    elif kind in JSON_DOCUMENTS:
        return
    elif "object" in value:
        check_message(value, where)
    elif "action" in value:
        check_command(value, where)
    elif "type" in value:
        assert isinstance(value["type"], str), f"{where}: a server event's type is a string"
    else:
        pytest.fail(f"{where}: name this JSON with <!-- example: KIND --> ({JSON_DOCUMENTS})")


def check_command(value: dict[str, Any], where: str) -> None:
    parsed = contract.parse_command(
        value.get("connection_id", "kitchen"),
        json.dumps(value).encode(),
        max_bytes=MIB,
        allowed_event_types=frozenset({"response.create", "response.cancel"}),
    )
    assert not isinstance(parsed, contract.Rejection), f"{where}: {parsed.code}: {parsed.message}"


_ACK = replies.connect_ack("c", "u", "r")
_SEND = replies.send_ack("c", "response.create", "r")
_CLOSE = replies.close_ack("c", 1000, "OK", "r")
_ERROR = replies.error_event("c", "not_open", "m", action="send", request_id="r", status=1)
# What each object may hold: the keys the code's own builders write, and the extras
# they add (profile: a connect ack that names one; max_output_tokens: a lowered cap).
SHAPES: dict[tuple[str, str | None], set[str]] = {
    (contract.OBJECT_CONNECTION, contract.CONNECT): {*_ACK, "profile"},
    (contract.OBJECT_CONNECTION, contract.CLOSE): set(_CLOSE),
    (contract.OBJECT_CONNECTION, contract.DISCONNECTED): set(
        replies.disconnected_notice("c", 1000, "x")
    ),
    (contract.OBJECT_CLIENT_EVENT, contract.SEND): {*_SEND, "max_output_tokens"},
    (contract.OBJECT_CLIENT_EVENT, contract.ASK): {*_SEND, "max_output_tokens"},
    (OBJECT_ANSWER, None): {
        "object",
        "connection_id",
        "request_id",
        "response_id",
        "status",
        "text",
        "usage",
        "truncated",
        "error",
    },
    (contract.OBJECT_STATUS, None): {
        "object",
        "action",
        "connection_id",
        "state",
        "profile",
        "requests_in_flight",
        "conversation",
        "output_status",
        "request_id",
    },
    (OBJECT_TOOL_CALL, None): {
        "object",
        "connection_id",
        "name",
        "call_id",
        "topic",
        "server",
        "tool",
        "status",
        "output",
        "error",
        "calls",
    },
}
REQUIRED = {"object", "connection_id"}


def check_message(value: dict[str, Any], where: str) -> None:
    obj, action = value["object"], value.get("action")
    if obj == contract.OBJECT_ERROR:
        assert set(value) <= set(_ERROR), f"{where}: unknown keys {set(value) - set(_ERROR)}"
        assert action is None or action in contract.ACTIONS, f"{where}: action {action!r}"
        error = value["error"]
        assert error["code"] in ERROR_CODES, f"{where}: {error['code']!r} is no error code"
        assert set(error) <= {"code", "message", "status", "resets_at"}, where
        return
    key = (
        obj,
        action if obj in (contract.OBJECT_CONNECTION, contract.OBJECT_CLIENT_EVENT) else None,
    )
    assert key in SHAPES, f"{where}: no message of the bridge is {key}"
    assert set(value) >= REQUIRED, f"{where}: lacks {REQUIRED - set(value)}"
    assert set(value) <= SHAPES[key], f"{where}: unknown keys {set(value) - SHAPES[key]}"
    if obj == OBJECT_TOOL_CALL:
        statuses = {PUBLISHED, REPLIED, TIMEOUT, INVALID_ARGUMENTS, REFUSED}
        assert value["status"] in statuses, f"{where}: status {value['status']!r}"
    if obj == OBJECT_ANSWER:
        assert value["status"] in {"completed", "incomplete", "failed", "cancelled", "error"}
    if "request_id" in value and obj != OBJECT_ANSWER:
        assert isinstance(value["request_id"], str), where


def check_info(value: dict[str, Any], where: str) -> None:
    settings = load_settings(None, {})
    real = info_document(
        settings,
        Tally(),
        SharedUsage(),
        started_at=0.0,
        uptime=1.0,
        connections=0,
        broker_connects=1,
        buffer_waits=0,
    )
    assert set(value) <= set(real), f"{where}: not in P/bridge/info: {set(value) - set(real)}"
    for section, keys in value.get("config", {}).items():
        if isinstance(keys, dict) and isinstance(real["config"][section], dict):
            unknown = set(keys) - set(real["config"][section]) - {"..."}
            assert not unknown, f"{where}: config.{section} has no {unknown}"
    assert datetime.datetime.fromisoformat(value["started_at"].replace("Z", "+00:00"))
