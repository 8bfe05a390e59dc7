"""Spend guardrails, pure: model patterns, the cap, budgets and the day across zones and DST."""

from __future__ import annotations

import json
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.actions import SendUpstream
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.guardrails import (
    BudgetsConfig,
    Checked,
    Guardrails,
    GuardrailsConfig,
    Refusal,
    Tokens,
    local_time,
    model_allowed,
    next_midnight,
    usage_of,
)
from bridge.protocol.limits import LimitsConfig
from bridge.protocol.sessions import ProfileConfig, SessionsConfig
from bridge.protocol.shared_usage import SharedUsage
from tests.protocol.test_core import UNLIMITED, URL, cmd, error_codes, messages

BERLIN = ZoneInfo("Europe/Berlin")
NOON = datetime(2026, 6, 1, 12, 0, tzinfo=BERLIN)


@pytest.mark.parametrize(
    ("model", "patterns", "allowed"),
    [
        ("gpt-5.4-nano", ("gpt-5.4-nano",), True),
        ("gpt-5.4-nano", ("gpt-5.4-mini",), False),
        ("gpt-5.4-mini-2026-03-01", ("gpt-5.4-mini*",), True),
        ("gpt-5.4", ("gpt-5.4-*",), False),
        ("GPT-5.4-NANO", ("gpt-5.4-nano",), False),  # names are case-sensitive, as the API's
        ("o4-mini", ("gpt-*", "o?-mini"), True),
        ("anything", (), False),
    ],
)
def test_model_patterns(model: str, patterns: tuple[str, ...], allowed: bool) -> None:
    assert model_allowed(model, patterns) is allowed


def rules(**fields: Any) -> GuardrailsConfig:
    return GuardrailsConfig(**fields)


def check(bridge: GuardrailsConfig, request: dict[str, Any], **profiles: Any) -> Any:
    guardrails = Guardrails(bridge, profiles, SharedUsage())
    return guardrails.check("c1", "default", request, NOON)


@pytest.mark.parametrize(
    ("asked", "cap", "sent", "lowered"),
    [
        (None, 100, 100, None),  # filled in, not "lowered"
        (50, 100, 50, None),
        (100, 100, 100, None),
        (500, 100, 100, 100),
        (500, None, 500, None),
    ],
)
def test_the_cap(asked: int | None, cap: int | None, sent: int, lowered: int | None) -> None:
    request: dict[str, Any] = {"model": "m"}
    if asked is not None:
        request["max_output_tokens"] = asked
    verdict = check(rules(max_output_tokens=cap), request)
    assert isinstance(verdict, Checked)
    assert verdict.request["max_output_tokens"] == sent
    assert verdict.lowered_to == lowered


def test_the_lower_cap_of_bridge_and_profile_wins() -> None:
    verdict = check(
        rules(max_output_tokens=300),
        {"model": "m", "max_output_tokens": 1000},
        default=rules(max_output_tokens=200),
    )
    assert isinstance(verdict, Checked)
    assert verdict.lowered_to == 200


def test_both_scopes_must_allow_the_model() -> None:
    bridge = rules(allowed_models=("gpt-*",))
    profile = rules(allowed_models=("gpt-5.4-nano",))
    assert isinstance(check(bridge, {"model": "gpt-5.4-nano"}, default=profile), Checked)
    verdict = check(bridge, {"model": "gpt-5.4"}, default=profile)
    assert isinstance(verdict, Refusal)
    assert verdict.code == "model_not_allowed"
    assert "'gpt-5.4'" in verdict.message
    verdict = check(bridge, {})
    assert isinstance(verdict, Refusal)
    assert "no model" in verdict.message


@given(st.integers(0, 10_000), st.integers(0, 10_000))
def test_a_budget_refuses_once_used_up(limit: int, used: int) -> None:
    usage = SharedUsage()
    usage.roll(NOON.date())
    usage.charge("c1", "default", Tokens(0, used, used))
    guardrails = Guardrails(rules(budgets=BudgetsConfig(tokens_per_day=limit)), {}, usage)
    verdict = guardrails.check("c1", "default", {"model": "m"}, NOON)
    assert isinstance(verdict, Refusal) is (used >= limit)
    other = guardrails.check("c2", "default", {"model": "m"}, NOON)
    assert isinstance(other, Checked) is (limit > 0)


def test_a_new_day_restores_the_budget() -> None:
    usage = SharedUsage()
    usage.roll(NOON.date())
    usage.charge("c1", "default", Tokens(10, 90, 100))
    budgets = BudgetsConfig(global_tokens_per_day=100)
    guardrails = Guardrails(rules(budgets=budgets), {}, usage)
    verdict = guardrails.check("c1", "default", {"model": "m"}, NOON)
    assert isinstance(verdict, Refusal)
    assert verdict.resets_at == "2026-06-02T00:00:00+02:00"
    just_before = datetime(2026, 6, 1, 23, 59, 59, tzinfo=BERLIN)
    assert isinstance(guardrails.check("c9", "default", {"model": "m"}, just_before), Refusal)
    midnight = datetime(2026, 6, 2, 0, 0, tzinfo=BERLIN)
    assert isinstance(guardrails.check("c1", "default", {"model": "m"}, midnight), Checked)
    assert usage.used() == 0


@pytest.mark.parametrize(
    ("epoch", "zone", "day", "resets_at"),
    [
        # 2026-03-29 01:30 UTC: Berlin springs forward at 02:00 local that night.
        (1774747800, "Europe/Berlin", date(2026, 3, 29), "2026-03-30T00:00:00+02:00"),
        # The day before the change: midnight still comes at +01:00.
        (1774661400, "Europe/Berlin", date(2026, 3, 28), "2026-03-29T00:00:00+01:00"),
        # 2026-11-01 12:00 UTC: New York fell back that morning (a 25-hour day).
        (1793534400, "America/New_York", date(2026, 11, 1), "2026-11-02T00:00:00-05:00"),
        # The same instant is a different day on the other side of the date line.
        (1793534400, "Pacific/Kiritimati", date(2026, 11, 2), "2026-11-03T00:00:00+14:00"),
        (1793534400, "UTC", date(2026, 11, 1), "2026-11-02T00:00:00+00:00"),
    ],
)
def test_the_day_across_zones_and_dst(epoch: int, zone: str, day: date, resets_at: str) -> None:
    now = local_time(epoch, zone)
    assert now.date() == day
    assert next_midnight(now).isoformat() == resets_at


def test_system_local_time_is_aware() -> None:
    now = local_time(1793534400, None)
    assert now.tzinfo is not None
    assert next_midnight(now) > now


OUTPUT = [{"type": "message", "content": [{"type": "output_text", "text": "x" * 400}]}]
OUTPUT_ESTIMATE = -(-len(json.dumps(OUTPUT, separators=(",", ":"))) // 4)  # bytes / 4


@pytest.mark.parametrize(
    ("usage", "tokens", "problem"),
    [
        ({"input_tokens": 3, "output_tokens": 5, "total_tokens": 8}, Tokens(3, 5, 8), None),
        ({"input_tokens": 3, "output_tokens": 5}, Tokens(3, 5, 8), None),
        ({"input_tokens": 3, "output_tokens": 5, "total_tokens": 2}, Tokens(3, 5, 8), None),
        ({"input_tokens": 0, "output_tokens": 10**9}, Tokens(0, 10**9, 10**9), None),
        (
            {"input_tokens": -3, "output_tokens": True},
            Tokens(0, OUTPUT_ESTIMATE, OUTPUT_ESTIMATE),
            "input_tokens is negative; output_tokens is a boolean",
        ),
        (
            {"input_tokens": 7, "output_tokens": 12.5, "total_tokens": "19"},
            Tokens(7, OUTPUT_ESTIMATE, 7 + OUTPUT_ESTIMATE),
            "output_tokens is not an integer; total_tokens is a string",
        ),
        (
            {"input_tokens": 10**4299, "output_tokens": 10**9 + 1},
            Tokens(0, OUTPUT_ESTIMATE, OUTPUT_ESTIMATE),
            "input_tokens is more than 1,000,000,000; output_tokens is more than 1,000,000,000",
        ),
        (
            {"input_tokens": 1},
            Tokens(1, OUTPUT_ESTIMATE, 1 + OUTPUT_ESTIMATE),
            "output_tokens is missing",
        ),
        ("8", Tokens(0, OUTPUT_ESTIMATE, OUTPUT_ESTIMATE), "its usage is a string"),
        (None, Tokens(0, OUTPUT_ESTIMATE, OUTPUT_ESTIMATE), "it carried no usage"),
    ],
)
def test_usage_is_taken_when_sane_and_estimated_never_zero_otherwise(
    usage: object, tokens: Tokens, problem: str | None
) -> None:
    counted = usage_of({"usage": usage, "output": OUTPUT})
    assert counted is not None
    assert (counted.tokens, counted.problem) == (tokens, problem)
    assert counted.carried is (usage is not None)


def test_no_usage_and_no_output_count_nothing() -> None:
    assert usage_of({"usage": None, "output": []}) is None
    assert usage_of({}) is None


@given(
    usage=st.one_of(
        st.none(),
        st.integers(),
        st.floats(),
        st.text(max_size=5),
        st.dictionaries(
            st.sampled_from(["input_tokens", "output_tokens", "total_tokens", "x"]),
            st.one_of(
                st.integers(min_value=-(10**20), max_value=10**20),
                st.integers(min_value=1, max_value=4300).map(lambda digits: 10**digits - 1),
                st.floats(),
                st.booleans(),
                st.none(),
                st.text(max_size=5),
            ),
        ),
    ),
    output_text=st.text(max_size=50),
)
def test_any_usage_counts_as_bounded_non_negative_integers(usage: object, output_text: str) -> None:
    """Whatever the upstream says, the counts are plain integers a day's book can add up."""
    output = [{"type": "message", "content": [{"type": "output_text", "text": output_text}]}]
    counted = usage_of({"usage": usage, "output": output})
    assert counted is not None
    tokens = counted.tokens
    for count in (tokens.input, tokens.output, tokens.total):
        assert type(count) is int
        assert 0 <= count <= 2 * 10**9
    assert tokens.total >= tokens.input + tokens.output
    if counted.problem is not None:
        assert len(counted.problem) < 200
        sent = usage.get("output_tokens") if isinstance(usage, dict) else None
        if not (type(sent) is int and 0 <= sent <= 10**9):
            assert tokens.output > 0  # never zero: the output's size


# Through the core ---------------------------------------------------------------------

CREATE = {"type": "response.create", "model": "gpt-5.4", "input": "hi"}


def make_core(limits: dict[str, Any], profile: dict[str, Any] | None = None) -> BridgeCore:
    profiles = {"default": ProfileConfig(request={"model": "gpt-5.4-nano"}, **(profile or {}))}
    return BridgeCore(
        Topics("ai"),
        url=URL,
        qos=1,
        limits=LimitsConfig(**{**UNLIMITED, **limits}),
        sessions=SessionsConfig(idle_timeout=0),
        profiles=profiles,
    )


def opened(core: BridgeCore) -> None:
    core.receive_command("c1", cmd("connect"))
    core.upstream_opened("c1")


def test_a_refused_send_never_goes_upstream() -> None:
    core = make_core({"allowed_models": ["gpt-5.4-nano"]})
    opened(core)
    actions = core.receive_command("c1", cmd("send", event=CREATE, request_id="r"))
    assert error_codes(actions) == ["model_not_allowed"]
    assert not any(isinstance(a, SendUpstream) for a in actions)
    assert messages(actions)[0]["request_id"] == "r"


def test_a_lowered_send_says_so_in_its_ack() -> None:
    core = make_core({"max_output_tokens": 64})
    opened(core)
    actions = core.receive_command("c1", cmd("send", event={**CREATE, "max_output_tokens": 4096}))
    (ack,) = messages(actions)
    assert ack["max_output_tokens"] == 64
    (sent,) = [a for a in actions if isinstance(a, SendUpstream)]
    assert json.loads(sent.data)["max_output_tokens"] == 64


def test_budget_exceeded_carries_resets_at_and_other_ids_go_on() -> None:
    core = make_core({"budgets": {"tokens_per_day": 10, "timezone": "Europe/Berlin"}})
    wall = NOON.timestamp()
    core.receive_command("c1", cmd("ask", input="Hi"), wall=wall)
    core.upstream_opened("c1")
    completed = {
        "type": "response.completed",
        "response": {"id": "r1", "usage": {"input_tokens": 4, "output_tokens": 8}},
    }
    core.upstream_event("c1", json.dumps(completed).encode())
    actions = core.receive_command("c1", cmd("ask", input="More", request_id="q"), wall=wall)
    (error,) = messages(actions)
    assert error["error"]["code"] == "budget_exceeded"
    assert error["error"]["resets_at"] == "2026-06-02T00:00:00+02:00"
    assert error["request_id"] == "q"
    actions = core.receive_command("c2", cmd("ask", input="Hi"), wall=wall)
    assert error_codes(actions) == []
    assert core.guardrails.usage.used_by("c1") == 12
