"""Server events that lie, through the core without I/O: frames that only look like
events, ends that are not JSON, usage no budget can hold."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge.protocol import server_events
from bridge.protocol.actions import Action, SendUpstream
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.messages import Publish, ResponseCompleted, UsageDoubted
from bridge.protocol.output_options import OutputConfig
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from tests.protocol.test_core import UNLIMITED, URL, cmd, messages, open_core, relayed

DELTA = b'{"type":"response.output_text.delta","delta":"Hi"}'


def completed(usage: Any, text: str = "Hello") -> bytes:
    output = [{"type": "message", "content": [{"type": "output_text", "text": text}]}]
    response = {"id": "resp_1", "status": "completed", "output": output, "usage": usage}
    return json.dumps({"type": "response.completed", "response": response}).encode()


def asking_core(**output: Any) -> BridgeCore:
    """A core with an `ask` turn in flight on c1 (request id q1)."""
    profile = ProfileConfig(request={"model": "m"}, output=OutputConfig(**output))
    core = BridgeCore(
        Topics("ai"),
        url=URL,
        limits=LimitsConfig(**UNLIMITED),
        sessions=SessionsConfig(idle_timeout=0),
        profiles={"default": profile},
    )
    core.receive_command("c1", cmd("ask", input="Hi", request_id="q1"))
    core.upstream_opened("c1")
    return core


def what_an_event_does(core: BridgeCore, raw: bytes) -> list[Action]:
    """Every action one server event leads to (held back ones included)."""
    publish = core.upstream_event("c1", raw)
    return [publish] if isinstance(publish, Publish) else publish


# Frames that only look like events ---------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"type":"response.output_text.delta"',  # cut short
        b'{"type":"response.output_text.delta"garbage}',
        b'{"type":"response.output_text.delta","delta":"\xff\xfe"}',  # not UTF-8
        b'{"type":"response.output_text.delta","delta":"\xed\xa0\x80"}',  # a surrogate
        b'{"type":"response.\xc3","delta":"x"}',
        b"\x00garbage",
        b'{"type":"',
        b'{"type":"x"}' + b" " * 3,  # JSON with trailing space: read in full, still fine
    ],
)
def test_frames_that_are_not_events_are_not_relayed(raw: bytes) -> None:
    publish = relayed(open_core(), raw)
    if raw.rstrip() == b'{"type":"x"}':
        assert publish.relayed
        assert publish.payload == raw
        return
    assert not publish.relayed
    assert json.loads(publish.payload)["error"]["code"] == "invalid_server_event"


def test_utf8_is_checked_in_pieces_for_large_frames() -> None:
    text = "é" * 100_000
    event = {"type": "x", "delta": text}
    raw = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    assert server_events.server_event_type(raw) == "x"
    broken = raw[:-100] + b"\xff" + raw[-99:]  # far past the first piece
    assert server_events.server_event_type(broken) is None
    assert server_events.is_utf8(raw[:70_000]) is False  # cut inside a character


def test_a_delta_that_passes_the_cheap_checks_is_relayed_unread() -> None:
    publish = relayed(open_core(), DELTA)
    assert publish.relayed
    assert publish.payload == DELTA


# Ends that are not JSON ----------------------------------------------------------------

DEEP = 200_000
UNREADABLE_ENDS = [
    b'{"type":"error","error":{"code":"server_error"',
    b'{"type":"error","error":' + b"[" * DEEP + b"]" * DEEP + b"}",
    b'{"type":"response.completed","response":{"usage":{"input_tokens":' + b"9" * 4301 + b"}}}",
    b'{"type":"response.failed","response":{"id":"r","x":\xff}}',
]


@pytest.mark.parametrize("raw", UNREADABLE_ENDS, ids=["cut", "deep", "digits", "utf8"])
def test_an_end_that_is_not_json_ends_the_turn_with_its_request_id(raw: bytes) -> None:
    core = asking_core(answer=True, status=True)
    actions = what_an_event_does(core, raw)
    (error,) = messages(actions)
    assert error["error"]["code"] == "invalid_server_event"
    assert (error["action"], error["request_id"]) == ("ask", "q1")
    answers = [a for a in actions if isinstance(a, Publish) and a.topic == "ai/c1/answer"]
    assert json.loads(answers[0].payload)["error"]["code"] == "invalid_server_event"
    assert [a.payload for a in actions if isinstance(a, Publish) and a.topic == "ai/c1/status"][
        -1
    ] == b"ready"
    again = core.receive_command("c1", cmd("ask", input="Again", request_id="q2"))
    assert any(isinstance(action, SendUpstream) for action in again)  # the id goes on


def test_an_unreadable_response_counts_by_its_size() -> None:
    core = asking_core()
    raw = UNREADABLE_ENDS[2]
    what_an_event_does(core, raw)
    assert core.guardrails.usage.used_by("c1") == -(-len(raw) // 4)


def test_an_unreadable_error_outside_a_turn_names_no_request() -> None:
    core = open_core()
    (error,) = messages(what_an_event_does(core, UNREADABLE_ENDS[0]))
    assert error["error"]["code"] == "invalid_server_event"
    assert error["action"] is None
    assert "request_id" not in error


def test_a_retryable_error_still_sends_the_turn_again() -> None:
    core = asking_core()
    error = {"type": "error", "error": {"code": "previous_response_not_found", "message": "x"}}
    actions = what_an_event_does(core, json.dumps(error).encode())
    assert messages(actions) == []  # held back: the turn goes out again on a new socket


# Usage no budget can hold --------------------------------------------------------------


def test_usage_problems_are_reported_once_per_connection() -> None:
    core = open_core()
    lie = {"input_tokens": 10**4299, "output_tokens": -1}
    first = relayed(core, completed(lie))
    assert isinstance(first.outcome, ResponseCompleted)
    assert first.outcome.usage_problem is not None
    assert "more than 1,000,000,000" in first.outcome.usage_problem
    tokens = first.outcome.tokens
    assert tokens is not None
    assert 0 < tokens.total < 100
    second = relayed(core, completed(lie))
    assert isinstance(second.outcome, ResponseCompleted)
    assert second.outcome.usage_problem is None  # said once
    assert second.outcome.tokens == tokens
    failed = completed("lots").replace(b"response.completed", b"response.failed", 1)
    core.receive_command("c2", cmd("connect"))
    core.upstream_opened("c2")
    outcome = relayed(core, failed, "c2").outcome
    assert isinstance(outcome, UsageDoubted)
    assert outcome.problem.startswith("its usage is")


def test_a_huge_usage_leaves_the_budget_message_readable() -> None:
    core = BridgeCore(
        Topics("ai"),
        url=URL,
        limits=LimitsConfig(**UNLIMITED, budgets={"tokens_per_day": 1}),
    )
    core.receive_command("c1", cmd("connect"))
    core.upstream_opened("c1")
    relayed(core, completed({"input_tokens": 10**4299, "output_tokens": 10**4299}))
    (error,) = messages(core.receive_command("c1", cmd("send", event={"type": "response.create"})))
    assert error["error"]["code"] == "budget_exceeded"
    assert len(error["error"]["message"]) < 300
