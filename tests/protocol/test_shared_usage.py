"""The day's usage of every instance, pure: sums, merges, the clock rules, strict documents."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.protocol.guardrails import (
    MAX_USAGE_IDS,
    OTHER_IDS,
    BudgetsConfig,
    Checked,
    Guardrails,
    GuardrailsConfig,
    Refusal,
    Tokens,
    UsageBook,
)
from bridge.protocol.shared_usage import MAX_INSTANCES, SharedUsage
from bridge.protocol.usage_documents import (
    MAX_DOCUMENT_BYTES,
    SavedUsage,
    UsageDocumentError,
    file_document,
    instance_document,
    read_file_document,
    read_instance_document,
)

BERLIN = ZoneInfo("Europe/Berlin")
DAY = date(2026, 6, 1)


def book(day: date | None = DAY, **ids: int) -> UsageBook:
    """A book of ``day`` with these ids' totals (all in profile "default")."""
    usage = UsageBook(day=day)
    for connection_id, total in ids.items():
        usage.charge(connection_id, "default", Tokens(0, total, total))
    return usage


def shared(**ids: int) -> SharedUsage:
    usage = SharedUsage(name="me")
    usage.roll(DAY)
    for connection_id, total in ids.items():
        usage.charge(connection_id, "default", Tokens(0, total, total))
    return usage


# Sums over instances ---------------------------------------------------------------------


def test_the_budgets_read_every_instance_of_the_day() -> None:
    usage = shared(kitchen=100)
    assert usage.merge_peer("b", book(kitchen=50, hall=7))
    assert usage.merge_peer("c", book(DAY - timedelta(days=1), kitchen=1000))  # yesterday's
    assert (usage.used(), usage.used_by("kitchen"), usage.used_by("hall")) == (157, 150, 7)
    assert usage.used_by_profile("default") == 157
    assert {name: t.total for name, t in usage.shares().items()} == {"me": 100, "b": 57}
    totals = usage.totals()
    assert (totals.bridge.total, totals.ids["kitchen"].total, len(totals.ids)) == (157, 150, 2)
    usage.forget_peer("b")  # its retained document was cleared by hand
    assert usage.used() == 100


def test_a_peer_document_replaces_the_last_and_never_loses_what_it_said() -> None:
    usage = shared()
    usage.merge_peer("b", book(kitchen=50))
    usage.merge_peer("b", book(kitchen=80, hall=5))
    assert (usage.used(), usage.used_by("kitchen")) == (85, 80)
    usage.merge_peer("b", book(kitchen=10))  # it restarted and lost its count: 80 were spent
    assert (usage.used(), usage.used_by("kitchen"), usage.used_by("hall")) == (85, 80, 5)
    usage.merge_peer("b", book(DAY + timedelta(days=1), kitchen=3))  # its next day: not ours
    assert usage.used() == 0
    usage.roll(DAY + timedelta(days=1))  # ours too now
    assert usage.used() == 3


def test_the_number_of_instances_kept_is_bounded() -> None:
    usage = shared()
    for n in range(MAX_INSTANCES):
        assert usage.merge_peer(f"i{n}", book(x=1))
    assert not usage.merge_peer("one-too-many", book(x=1))
    assert usage.merge_peer("i0", book(x=2))  # a known one still updates
    assert usage.used() == MAX_INSTANCES + 1


def test_budgets_hold_over_instances_and_a_per_id_budget_follows_the_id() -> None:
    usage = shared(kitchen=40)
    bridge = GuardrailsConfig(budgets=BudgetsConfig(global_tokens_per_day=100, tokens_per_day=60))
    guardrails = Guardrails(bridge, {}, usage)
    noon = datetime(2026, 6, 1, 12, tzinfo=BERLIN)
    assert isinstance(guardrails.check("kitchen", "default", {}, noon), Checked)
    usage.merge_peer("b", book(kitchen=20))  # the id spent 20 on another instance
    verdict = guardrails.check("kitchen", "default", {}, noon)
    assert isinstance(verdict, Refusal)
    assert "this id's daily budget of 60 tokens is used up (60 used)" in verdict.message
    assert isinstance(guardrails.check("hall", "default", {}, noon), Checked)
    usage.merge_peer("c", book(hall=40))  # 40 + 20 + 40: the prefix's 100 are spent
    verdict = guardrails.check("hall", "default", {}, noon)
    assert isinstance(verdict, Refusal)
    assert "the bridge's daily budget of 100 tokens is used up (100 used)" in verdict.message


# Our own document after a restart -----------------------------------------------------------


def test_our_retained_document_is_merged_by_the_larger_count() -> None:
    usage = shared(kitchen=10, hall=50)  # what the file said
    usage.unpublished = False
    usage.merge_own(book(kitchen=30, hall=20))  # the broker's copy: newer for one id
    assert (usage.used_by("kitchen"), usage.used_by("hall"), usage.used()) == (30, 50, 60)
    assert usage.unpublished  # the merged book goes out again
    usage.unpublished = False
    usage.merge_own(book(kitchen=30))  # our own echo: nothing new
    assert not usage.unpublished
    usage.merge_own(book(DAY - timedelta(days=1), kitchen=999))  # yesterday's: over
    assert usage.used() == 60


def test_a_restart_with_no_file_takes_the_day_from_the_broker() -> None:
    usage = SharedUsage(name="me")  # usage.json was missing, or not writable
    usage.roll(DAY)
    usage.merge_own(book(kitchen=70))
    assert usage.used() == 70


# The clock -------------------------------------------------------------------------------


def test_a_day_back_a_year_ahead_then_today_is_one_budget() -> None:
    """The issue's sequence: every token of the real day counts against that day."""
    usage = shared(a=10)
    usage.roll(DAY - timedelta(days=1))  # a day back: counting goes on into the latest day
    assert usage.day == DAY
    usage.charge("a", "default", Tokens(0, 5, 5))
    usage.roll(DAY + timedelta(days=365))  # a year ahead: a fresh day, today's set aside
    assert (usage.day, usage.used()) == (DAY + timedelta(days=365), 0)
    usage.charge("a", "default", Tokens(0, 7, 7))
    usage.roll(DAY)  # today again: the book set aside comes back, with what came since
    assert (usage.day, usage.used(), usage.used_by("a")) == (DAY, 22, 22)
    assert usage.earlier is None


def test_a_future_dated_file_is_counted_into_and_ends_with_its_day() -> None:
    future = DAY + timedelta(days=2)
    usage = SharedUsage(book(future, a=90), name="me")
    guardrails = Guardrails(
        GuardrailsConfig(budgets=BudgetsConfig(global_tokens_per_day=100)), {}, usage
    )
    noon = datetime(2026, 6, 1, 12, tzinfo=BERLIN)
    assert isinstance(guardrails.check("a", "default", {}, noon), Checked)
    usage.charge("a", "default", Tokens(0, 10, 10))
    verdict = guardrails.check("a", "default", {}, noon)
    assert isinstance(verdict, Refusal)
    assert verdict.resets_at == "2026-06-04T00:00:00+02:00"  # when its day ends
    assert usage.day == future


def test_a_restart_across_a_fold_counts_the_later_day_once() -> None:
    """Stopped while the clock was a year ahead, started with the clock right: the file's
    books fold back; our retained document of the later day then adds only what is new."""
    usage = shared(a=10)
    later = DAY + timedelta(days=365)
    usage.roll(later)
    usage.charge("a", "default", Tokens(0, 7, 7))
    retained = read_instance_document("me", instance_document("me", usage.own))
    saved = read_file_document(json.loads(json.dumps(file_document("me", usage))))
    restarted = SharedUsage(saved.own, saved.earlier, saved.folded, name="me")
    restarted.roll(DAY)
    assert (restarted.day, restarted.used()) == (DAY, 17)
    restarted.merge_own(retained)
    assert restarted.used() == 17  # not 24
    saved = read_file_document(json.loads(json.dumps(file_document("me", restarted))))
    again = SharedUsage(saved.own, saved.earlier, saved.folded, name="me")
    again.roll(DAY)
    again.merge_own(book(later, a=9))  # 2 more were spent before the stop than the file knew
    assert again.used() == 19


def test_a_later_retained_document_folds_into_today() -> None:
    """The file is today's (the disk failed since); the broker has a later day, written
    while the clock was ahead: both count today."""
    usage = shared(a=10)
    usage.merge_own(book(DAY + timedelta(days=30), a=4))
    usage.roll(DAY)
    assert (usage.day, usage.used()) == (DAY, 14)


steps = st.lists(
    st.one_of(
        st.tuples(st.just("day"), st.sampled_from([-365, -2, -1, 0, 1, 2, 365])),
        st.tuples(st.just("charge"), st.integers(0, 1000)),
    ),
    max_size=30,
)


@given(steps)
def test_days_move_forward_only_and_no_charge_is_lost(script: list[tuple[str, int]]) -> None:
    """Whatever the clock does: a charge always counts; the day counted goes back only to
    the book set aside, with nothing lost; otherwise a move back changes nothing."""
    usage = shared()
    for step, value in script:
        before_day, before_used = usage.day, usage.used()
        assert before_day is not None
        if step == "charge":
            usage.charge("a", "default", Tokens(0, value, value))
            assert usage.used() == before_used + value
            continue
        earlier = usage.earlier
        earlier_day = earlier.day if earlier is not None else None
        earlier_used = earlier.bridge.total if earlier is not None else 0
        usage.roll(DAY + timedelta(days=value))
        assert usage.day is not None
        if usage.day > before_day:
            assert usage.used() == 0
            assert usage.earlier is not None
            assert usage.earlier.bridge.total == before_used
        elif usage.day < before_day:
            assert usage.day == earlier_day
            assert usage.used() == before_used + earlier_used
        else:
            assert usage.used() == before_used


# Documents -------------------------------------------------------------------------------


def encoded(document: object) -> bytes:
    return json.dumps(document).encode()


GOOD = {
    "instance": "b",
    "day": "2026-06-01",
    "tokens": {"input": 1, "output": 2, "total": 3},
    "profiles": {"default": {"input": 1, "output": 2, "total": 3}},
    "ids": {"kitchen": {"input": 1, "output": 2, "total": 3}},
}


def test_a_document_reads_back_as_written() -> None:
    written = book(kitchen=5, hall=6)
    read = read_instance_document("b", instance_document("b", written))
    assert read == written
    assert read_instance_document("b", encoded(GOOD)).used_by("kitchen") == 3


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"instance": "c"}, "names the instance 'c'"),
        ({"day": "yesterday"}, "is not a date"),
        ({"day": None}, "has no day"),
        ({"tokens": {"input": -1, "output": 2, "total": 3}}, "not an integer"),
        ({"tokens": {"input": 1.5, "output": 2, "total": 3}}, "not an integer"),
        ({"tokens": {"input": True, "output": 2, "total": 3}}, "not an integer"),
        ({"tokens": {"input": 10**16, "output": 2, "total": 3}}, "not an integer"),
        ({"tokens": {"input": 1, "output": 2}}, "not an integer"),
        ({"tokens": "3"}, "not an object"),
        ({"ids": {"a/b": {"input": 1, "output": 2, "total": 3}}}, "forbidden character"),
        ({"ids": {"bridge": {"input": 1, "output": 2, "total": 3}}}, "reserved"),
        ({"ids": []}, "ids is not an object"),
        ({"profiles": {"": {"input": 1, "output": 2, "total": 3}}}, "a bad name"),
    ],
)
def test_a_bad_document_is_refused_with_its_reason(change: dict[str, object], problem: str) -> None:
    with pytest.raises(UsageDocumentError, match=problem):
        read_instance_document("b", encoded({**GOOD, **change}))


def test_hostile_shapes_are_refused() -> None:
    for payload in (
        b"\xff\xfe",
        b"[" * 200_000 + b"]" * 200_000,  # deeper than the parser goes
        b"[]",
        b"x" * (MAX_DOCUMENT_BYTES + 1),
    ):
        with pytest.raises(UsageDocumentError):
            read_instance_document("b", payload)
    ids = {f"id-{n}": {"input": 0, "output": 1, "total": 1} for n in range(MAX_USAGE_IDS + 1)}
    read_instance_document("b", encoded({**GOOD, "ids": ids}))  # 10,000 ids and "(other)"
    ids["one-more"] = {"input": 0, "output": 1, "total": 1}
    with pytest.raises(UsageDocumentError, match="more than"):
        read_instance_document("b", encoded({**GOOD, "ids": ids}))


def test_our_document_stays_within_the_bound_and_keeps_its_totals() -> None:
    """10,000 ids of 128 characters do not fit in 1 MiB: the smallest become "(other)"."""
    big = UsageBook(day=DAY)
    for n in range(MAX_USAGE_IDS):
        big.charge(f"{n:05d}".ljust(128, "x"), "default", Tokens(0, n, n))
    payload = instance_document("me", big)
    assert len(payload) <= MAX_DOCUMENT_BYTES
    read = read_instance_document("me", payload)
    assert read.bridge == big.bridge
    assert sum(tokens.total for tokens in read.ids.values()) == big.bridge.total
    assert OTHER_IDS in read.ids
    busiest = f"{MAX_USAGE_IDS - 1:05d}".ljust(128, "x")
    assert read.used_by(busiest) == MAX_USAGE_IDS - 1


def test_the_file_keeps_the_books_and_its_writer() -> None:
    usage = shared(a=2)
    usage.roll(DAY + timedelta(days=1))
    usage.charge("a", "default", Tokens(0, 1, 1))
    document = json.loads(json.dumps(file_document("me", usage)))
    assert document["bridge"] == {"input": 0, "output": 1, "total": 1}  # older readers' key
    assert read_file_document(document) == SavedUsage("me", usage.own, usage.earlier, None)
    older = {"version": 1, "day": "2026-06-01", "bridge": GOOD["tokens"], "profiles": {}, "ids": {}}
    assert read_file_document(older) == SavedUsage(None, UsageBook(DAY, Tokens(1, 2, 3)))
