"""Tests of the Responses WebSocket simulator: its pure parts, then over real sockets."""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from bridge_tools.simulator import Simulator, SimulatorOptions, serve
from bridge_tools.simulator.events import IdFactory, resolve_model
from bridge_tools.simulator.faults import (
    Fault,
    FaultError,
    FaultKind,
    HandshakeFault,
    find_fault,
    parse_fault,
    parse_handshake_query,
)
from bridge_tools.simulator.handshake import decide, split_target
from bridge_tools.simulator.inbound import BadFrame, CreateRequest, SteerRequest, parse_message
from bridge_tools.simulator.plan import plan_request
from bridge_tools.simulator.rejections import Rejection
from bridge_tools.simulator.state import ConnectionState, Parent, Snapshot
from bridge_tools.simulator.steps import (
    Abort,
    Close,
    Hang,
    MutePongs,
    Pause,
    Plan,
    Send,
    Settings,
    Settle,
)
from bridge_tools.simulator.text import (
    count_tokens,
    extract_topic,
    generate_answer,
    strip_markers,
    tokenize,
)
from tests.helpers import SECOND, free_port

KEY = "sk-test-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
MIB = 1024 * 1024
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "response.done"}
RESP_ID = re.compile(r"resp_[0-9a-f]{48}")
MSG_ID = re.compile(r"msg_[0-9a-f]{48}")
CANONICAL = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]

# Helpers for the pure tests


def request(text: str = "What is MQTT?", **fields: Any) -> CreateRequest:
    frame = {"type": "response.create", "model": "gpt-4o", "input": text, **fields}
    parsed = parse_message(json.dumps(frame))
    assert isinstance(parsed, CreateRequest)
    return parsed


def plan(
    req: CreateRequest | None = None,
    parent: Parent | None = None,
    settings: Settings = Settings(),  # noqa: B008 -- frozen
) -> Plan:
    return plan_request(
        req or request(), parent, ids=IdFactory(0), now=1_700_000_000, settings=settings
    )


def sent(p: Plan) -> list[dict[str, Any]]:
    return [step.event for step in p.steps if isinstance(step, Send)]


def types(evs: list[dict[str, Any]]) -> list[str]:
    collapsed: list[str] = []
    for ev in evs:
        if not collapsed or ev["type"] != collapsed[-1] or not ev["type"].endswith(".delta"):
            collapsed.append(ev["type"])
    return collapsed


def deltas(evs: list[dict[str, Any]]) -> list[str]:
    return [ev["delta"] for ev in evs if ev["type"] == "response.output_text.delta"]


# Text


@given(st.text())
def test_tokenize_round_trips(text: str) -> None:
    """Joining the token pieces gives the text back, whatever it is."""
    assert "".join(tokenize(text)) == text


def test_answer_is_deterministic_and_mentions_the_topic() -> None:
    """The same prompt and seed give the same answer, which names the topic."""
    first = generate_answer("What is the capital of France?", seed=7)
    assert first == generate_answer("What is the capital of France?", seed=7)
    assert "the capital of France" in first
    assert count_tokens(first) > 20
    others = {generate_answer("What is the capital of France?", seed=s) for s in range(8)}
    assert len(others) > 1


def test_reply_with_exactly_scripts_the_answer() -> None:
    answer = '{"plant": "basil", "days": 2}'
    req = request(
        input=[
            {"role": "developer", "content": "Answer with JSON."},
            {"role": "user", "content": f"How often? Reply with exactly: {answer}\n"},
        ]
    )
    assert "".join(deltas(sent(plan(req)))) == answer
    assert "".join(deltas(sent(plan(request("What is MQTT?"))))) != answer


def test_markers_do_not_reach_the_answer() -> None:
    """Fault trigger phrases are instructions, not part of the topic."""
    answer = generate_answer("How do I reset my router? [[fault:close_1011]]", seed=0)
    assert "[[" not in answer
    assert "reset your router" in answer
    assert strip_markers("a [[fault:x]] b") == "a b"


@pytest.mark.parametrize(
    ("prompt", "topic"),
    [
        ("What is the capital of France?", "the capital of France"),
        ("Tell me about MQTT retained messages", "MQTT retained messages"),
        ("How do I reset my router?", "reset your router"),
        ("?", "your request"),
    ],
)
def test_extract_topic(prompt: str, topic: str) -> None:
    """Question scaffolding is dropped and pronouns are turned around."""
    assert extract_topic(prompt) == topic


# Faults


@pytest.mark.parametrize(
    ("name", "fault"),
    [
        ("drop_before_created", Fault(FaultKind.DROP_BEFORE_CREATED)),
        ("drop_mid_delta", Fault(FaultKind.DROP_MID_STREAM)),
        ("Close_1011", Fault(FaultKind.CLOSE, close_code=1011)),
        ("close_4000", Fault(FaultKind.CLOSE, close_code=4000)),
        ("gap_2.5", Fault(FaultKind.GAP, seconds=2.5)),
        (
            "incomplete_content_filter",
            Fault(FaultKind.INCOMPLETE, incomplete_reason="content_filter"),
        ),
        (" rate_limit ", Fault(FaultKind.RATE_LIMIT)),
    ],
)
def test_parse_fault(name: str, fault: Fault) -> None:
    """Fault names, with their arguments and aliases, parse to the right fault."""
    assert parse_fault(name) == fault


@pytest.mark.parametrize("name", ["explode", "close_1006", "close_99", "gap_x", "gap_-1", "close"])
def test_parse_fault_rejects_nonsense(name: str) -> None:
    """Unknown names and unsendable close codes are refused."""
    with pytest.raises(FaultError):
        parse_fault(name)


def test_metadata_fault_wins_over_trigger_phrase() -> None:
    """Metadata is checked first, then the input text."""
    assert find_fault({"simulator_fault": "failed"}, ["[[fault:hang]]"]) == Fault(FaultKind.FAILED)
    assert find_fault({}, ["hi [[ Fault : hang ]]"]) == Fault(FaultKind.HANG)
    assert find_fault({}, ["nothing here"]) is None


def test_handshake_query() -> None:
    """simulator_* query parameters parse, and bad values are refused."""
    query = {"simulator_status": "429", "simulator_retry_after": "7", "other": "x"}
    assert parse_handshake_query(query) == HandshakeFault(status=429, retry_after=7)
    for bad in (
        {"simulator_status": "200"},
        {"simulator_close": "1006"},
        {"simulator_status": "x"},
    ):
        with pytest.raises(FaultError):
            parse_handshake_query(bad)


# Inbound frames


@pytest.mark.parametrize("stream_id", ["", "a b", "x" * 257, 5, "é"])
def test_invalid_stream_id_is_rejected_at_once(stream_id: object) -> None:
    """A bad stream_id gets invalid_stream_id with no lane."""
    frame = {"type": "response.create", "model": "m", "stream_id": stream_id}
    parsed = parse_message(json.dumps(frame))
    assert isinstance(parsed, BadFrame)
    assert parsed.rejection.code == "invalid_stream_id"


def test_lane_errors_are_kept_for_the_lane() -> None:
    """background:true and a too-small max_output_tokens wait for the request's turn."""
    background = request(background=True).rejection
    assert background is not None
    assert background.param == "background"
    small = request(max_output_tokens=5).rejection
    assert small is not None
    assert small.code == "integer_below_min_value"
    assert request(stream=True, foo="bar").rejection is None


def test_legacy_mode_rejects_stream_id() -> None:
    """Without lanes, stream_id is an unknown parameter on the default lane."""
    frame = json.dumps({"type": "response.create", "model": "m", "stream_id": "a"})
    parsed = parse_message(frame, lanes=False)
    assert isinstance(parsed, CreateRequest)
    assert parsed.stream_id is None
    assert parsed.rejection is not None
    assert parsed.rejection.code == "unknown_parameter"


def test_other_frames() -> None:
    """Binary, non-JSON and unknown types are bad frames; steer is understood."""
    bad = [parse_message(b"\x00"), parse_message("{"), parse_message('{"type":"x.y"}')]
    codes = [frame.rejection.code for frame in bad if isinstance(frame, BadFrame)]
    assert codes == ["invalid_event", "invalid_json", "invalid_event"]
    steer = parse_message('{"type":"response.steer","previous_response_id":"r","input":"x"}')
    assert steer == SteerRequest("r", "x")


# Continuation state


def snap(response_id: str, lane: str | None, *, store: bool = False) -> Snapshot:
    return Snapshot(response_id, lane, context_tokens=100, turns=1, store=store)


def test_cache_keeps_each_lanes_latest() -> None:
    """A lane's new response replaces its old one; other lanes are untouched."""
    state = ConnectionState()
    state.remember(snap("r1", None))
    state.remember(snap("r2", "a"))
    state.remember(snap("r3", None))
    assert isinstance(state.resolve("r2", store=False, persisted={}), Parent)
    evicted = state.resolve("r1", store=False, persisted={})
    assert isinstance(evicted, Rejection)
    assert evicted.code == "previous_response_not_found"


def test_store_hydrates_only_stored_requests() -> None:
    """A persisted parent is used when the request keeps store=true."""
    state = ConnectionState()
    persisted = {"r9": snap("r9", None, store=True)}
    found = state.resolve("r9", store=True, persisted=persisted)
    assert isinstance(found, Parent)
    assert not found.cached
    assert not isinstance(state.resolve("r9", store=False, persisted=persisted), Parent)


def test_failed_same_lane_continuation_evicts_but_fork_does_not() -> None:
    """Eviction applies to the parent's own lane only."""
    state = ConnectionState()
    state.remember(snap("r1", "a"))
    state.forget_failed("b", "r1")
    assert state.cached("a") is not None
    state.forget_failed("a", "r1")
    assert state.cached("a") is None


def test_named_lane_limit() -> None:
    """The 33rd distinct name is refused; reusing a name is fine."""
    state = ConnectionState()
    for index in range(32):
        assert state.admit_lane(f"lane{index}") is None
    assert state.admit_lane("lane0") is None
    assert state.admit_lane(None) is None
    refused = state.admit_lane("one-more")
    assert refused is not None
    assert refused.code == "websocket_stream_limit_reached"


# Plans


def test_canonical_sequence() -> None:
    """Events come in the §6.2 order, numbered from 0 without gaps."""
    evs = sent(plan())
    assert types(evs) == CANONICAL
    assert [ev["sequence_number"] for ev in evs] == list(range(len(evs)))
    assert len(deltas(evs)) > 5
    assert all("stream_id" not in ev for ev in evs)


def test_output_text_equals_joined_deltas() -> None:
    """Every done event and the final response carry exactly the joined deltas."""
    evs = sent(plan())
    text = "".join(deltas(evs))
    by_type = {ev["type"]: ev for ev in evs}
    assert by_type["response.output_text.done"]["text"] == text
    assert by_type["response.content_part.done"]["part"]["text"] == text
    assert by_type["response.output_item.done"]["item"]["content"][0]["text"] == text
    final = by_type["response.completed"]["response"]
    assert final["output"][0]["content"][0]["text"] == text


def test_response_object() -> None:
    """Ids are shaped right, params are echoed, usage appears only at the end."""
    req = request(metadata={"k": "v"}, temperature=0.2, instructions="Be brief.", store=False)
    evs = sent(plan(req))
    created, final = evs[0]["response"], evs[-1]["response"]
    assert RESP_ID.fullmatch(created["id"])
    assert created["id"] == final["id"]
    assert MSG_ID.fullmatch(evs[2]["item"]["id"])
    assert created["usage"] is None
    assert created["completed_at"] is None
    assert created["model"] == final["model"] == resolve_model("gpt-4o") != "gpt-4o"
    assert (final["metadata"], final["temperature"], final["store"]) == ({"k": "v"}, 0.2, False)
    assert final["instructions"] == "Be brief."
    usage = final["usage"]
    assert usage["output_tokens"] == len(deltas(evs))
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert usage["input_tokens_details"] == {"cached_tokens": 0, "cache_write_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert final["completed_at"] >= final["created_at"]


def test_deltas_carry_logprobs_and_obfuscation_unless_disabled() -> None:
    """include_obfuscation:false drops the padding field."""
    delta = next(ev for ev in sent(plan()) if ev["type"].endswith(".delta"))
    assert delta["logprobs"] == []
    assert isinstance(delta["obfuscation"], str)
    quiet = request(stream_options={"include_obfuscation": False})
    assert all("obfuscation" not in ev for ev in sent(plan(quiet)))


def test_plans_are_deterministic_for_a_seed() -> None:
    """Same request, same seed: identical frames."""
    assert sent(plan()) == sent(plan())
    other = plan(settings=Settings(seed=1))
    assert sent(other) != sent(plan())


def test_named_lane_tags_every_event() -> None:
    """stream_id is on every event of a named lane."""
    evs = sent(plan(request(stream_id="main")))
    assert {ev["stream_id"] for ev in evs} == {"main"}


def test_max_output_tokens_ends_incomplete() -> None:
    """A short limit cuts the text and ends with response.incomplete."""
    evs = sent(plan(request(max_output_tokens=16)))
    assert len(deltas(evs)) == 16
    final = evs[-1]
    assert final["type"] == "response.incomplete"
    assert final["response"]["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["response"]["output"][0]["status"] == "incomplete"


def test_pacing_adds_pauses() -> None:
    """first_token_delay comes before the first delta, then one pause per delta."""
    paced = plan(settings=Settings(tokens_per_second=10, first_token_delay=0.5))
    pauses = [step.seconds for step in paced.steps if isinstance(step, Pause)]
    assert pauses[0] == 0.5
    assert len(pauses) == len(deltas(sent(paced)))
    assert sum(pauses) == pytest.approx(0.5 + (len(pauses) - 1) / 10)


def test_warm_up_plan() -> None:
    """generate:false gives created and completed with no output and zero usage."""
    p = plan(request(generate=False))
    evs = sent(p)
    assert [ev["type"] for ev in evs] == ["response.created", "response.completed"]
    assert evs[1]["response"]["output"] == []
    assert evs[1]["response"]["usage"]["total_tokens"] == 0
    assert p.snapshot is not None
    assert p.snapshot.response_id == evs[0]["response"]["id"]


def test_continuation_counts_the_chain_and_cached_tokens() -> None:
    """A cached parent's context shows up as input and cached tokens."""
    parent = Parent(Snapshot("resp_x", None, 2000, 3, True), cached=True)
    final = sent(plan(request(previous_response_id="resp_x"), parent))[-1]["response"]
    assert final["previous_response_id"] == "resp_x"
    assert final["usage"]["input_tokens"] > 2000
    assert final["usage"]["input_tokens_details"]["cached_tokens"] == 1920


def test_response_done_and_flat_error_variants() -> None:
    """Options swap the terminal event type and the error shape."""
    final = sent(plan(settings=Settings(response_done=True)))[-1]
    assert final["type"] == "response.done"
    assert final["response"]["status"] == "completed"
    flat = sent(plan(request(background=True), settings=Settings(flat_errors=True)))[0]
    assert flat["code"] == "unsupported_parameter"
    assert "error" not in flat


def fault_plan(name: str, **fields: Any) -> Plan:
    return plan(request(metadata={"simulator_fault": name}, **fields))


def test_fault_plans() -> None:
    """Each fault bends the sequence where it should."""
    assert fault_plan("drop_before_created").steps == (Abort(),)
    after = fault_plan("drop_after_created").steps
    assert isinstance(after[-1], Abort)
    assert len(sent(Plan(after))) == 1
    mid = fault_plan("close_1012")
    assert mid.steps[-1] == Close(1012, "service restart")
    assert 0 < len(deltas(sent(mid))) < len(deltas(sent(plan())))
    assert MutePongs() in fault_plan("no_pong").steps
    assert fault_plan("hang").steps[-2:] == (MutePongs(), Hang())
    gap = [s for s in fault_plan("gap_3").steps if isinstance(s, Pause)]
    assert gap == [Pause(3.0)]


def test_error_and_terminal_fault_plans() -> None:
    """Errors are settled as failures before they are sent."""
    limited = fault_plan("rate_limit")
    assert isinstance(limited.steps[0], Settle)
    assert not limited.steps[0].succeeded
    error = sent(limited)[0]
    assert (error["status"], error["error"]["code"]) == (429, "rate_limit_exceeded")
    assert error["error"]["headers"]["retry-after"] == "1"
    mid = sent(fault_plan("error_mid_stream"))
    assert mid[-1]["type"] == "error"
    assert mid[-1]["sequence_number"] == len(mid) - 1
    failed = sent(fault_plan("failed"))[-1]
    assert failed["type"] == "response.failed"
    assert failed["response"]["error"]["code"] == "server_error"
    cut = sent(fault_plan("incomplete"))
    assert cut[-1]["response"]["incomplete_details"]["reason"] == "max_output_tokens"


def test_huge_completed_is_the_only_frame_over_one_mib() -> None:
    """huge_completed trips a 1 MiB client limit on response.completed and nowhere else."""
    frames = [json.dumps(ev) for ev in sent(fault_plan("huge_completed"))]
    assert len(frames[-1]) > MIB
    assert max(len(frame) for frame in frames[:-1]) < MIB


# Handshake decisions


@pytest.mark.parametrize(
    ("target", "auth", "status"),
    [
        ("/v1/responses", f"Bearer {KEY}", None),
        ("/openai/v1/responses?api-version=x", f"Bearer {KEY}", None),
        ("/v1/chat", f"Bearer {KEY}", 404),
        ("/v1/responses", None, 401),
        ("/v1/responses", "Bearer wrong", 401),
        ("/v1/responses?simulator_status=503", f"Bearer {KEY}", 503),
        ("/v1/responses?simulator_status=abc", f"Bearer {KEY}", 400),
    ],
)
def test_handshake_decisions(target: str, auth: str | None, status: int | None) -> None:
    """Path, query, key and forced status are checked in that order."""
    refusal, _ = decide(split_target(target), auth, api_key=KEY, forced_status=None, retry_after=1)
    assert (refusal.rejection.status if refusal else None) == status


# Over real sockets


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorOptions(api_key=KEY)) as simulator:
        yield simulator


def open_ws(simulator: Simulator, query: str = "", **kwargs: Any) -> connect:
    kwargs.setdefault("additional_headers", AUTH)
    return connect(simulator.url + query, open_timeout=2 * SECOND, close_timeout=SECOND, **kwargs)


def create(text: str = "What is MQTT?", **fields: Any) -> str:
    return json.dumps({"type": "response.create", "model": "gpt-4o", "input": text, **fields})


async def recv(ws: ClientConnection, within: float = 2 * SECOND) -> dict[str, Any]:
    async with asyncio.timeout(within):
        event: dict[str, Any] = json.loads(await ws.recv())
        return event


async def until_terminal(ws: ClientConnection, count: int = 1) -> list[dict[str, Any]]:
    """Events until count terminal events (or request-scoped errors) have arrived."""
    evs: list[dict[str, Any]] = []
    while count:
        evs.append(await recv(ws, 5 * SECOND))
        if evs[-1]["type"] in TERMINAL or evs[-1]["type"] == "error":
            count -= 1
    return evs


async def until_closed(ws: ClientConnection) -> tuple[list[dict[str, Any]], ConnectionClosed]:
    evs: list[dict[str, Any]] = []
    async with asyncio.timeout(5 * SECOND):
        while True:
            try:
                evs.append(json.loads(await ws.recv()))
            except ConnectionClosed as exc:
                return evs, exc


async def test_canonical_stream_over_a_socket(sim: Simulator) -> None:
    """Nothing arrives before the first create; then the canonical stream does."""
    async with open_ws(sim) as ws:
        with pytest.raises(TimeoutError):
            await recv(ws, 0.2 * SECOND)
        await ws.send(create(stream=True))
        evs = await until_terminal(ws)
    assert types(evs) == CANONICAL
    assert [ev["sequence_number"] for ev in evs] == list(range(len(evs)))
    assert evs[-1]["response"]["output"][0]["content"][0]["text"] == "".join(deltas(evs))
    assert [r.type for r in sim.received] == ["response.create"]
    assert sim.received[0].json()["stream"] is True


async def test_frames_are_compact_json(sim: Simulator) -> None:
    """Frames are compact UTF-8 JSON, one event each, as OpenAI sends them."""
    async with open_ws(sim) as ws:
        await ws.send(create("Qu'est-ce que le café ?"))
        async with asyncio.timeout(2 * SECOND):
            frame = await ws.recv()
    assert isinstance(frame, str)
    assert frame.startswith('{"type":"response.created","sequence_number":0,')
    assert ", " not in frame.split('"instructions"')[0]


async def test_permessage_deflate_is_negotiated(sim: Simulator) -> None:
    """The server accepts the client's compression offer."""
    async with open_ws(sim) as ws:
        assert ws.response is not None
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")


async def test_handshakes_and_closes_are_recorded(sim: Simulator) -> None:
    """Headers and query are recorded; the client's close code too."""
    headers = {**AUTH, "OpenAI-Beta": "responses_websockets=2026-02-06"}
    async with open_ws(sim, "?model=x", additional_headers=headers) as ws:
        assert sim.open_connections == 1
        await ws.close(4001, "bye")
    await sim.wait_for(lambda: len(sim.closes) == 1, 2 * SECOND)
    handshake = sim.handshakes[0]
    assert (handshake.path, handshake.query, handshake.status) == (
        "/v1/responses",
        {"model": "x"},
        101,
    )
    assert handshake.header("openai-beta") == "responses_websockets=2026-02-06"
    closed = sim.closes[0]
    assert (closed.code, closed.reason, closed.server_initiated) == (4001, "bye", False)
    assert sim.open_connections == 0


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer sk-wrong-key-123456"}])
async def test_bad_key_gets_401_before_upgrade(sim: Simulator, headers: dict[str, str]) -> None:
    """A missing or wrong key is refused with an OpenAI-style JSON body."""
    with pytest.raises(InvalidStatus) as caught:
        async with open_ws(sim, additional_headers=headers):
            pass
    response = caught.value.response
    assert response.status_code == 401
    assert response.headers["Content-Type"] == "application/json"
    body = json.loads(response.body or b"")
    assert body["error"]["type"] == "invalid_request_error"
    assert "sk-wrong-key-123456" not in body["error"]["message"]
    assert sim.handshakes[0].status == 401
    assert sim.closes == []


async def test_other_paths_get_404(sim: Simulator) -> None:
    """Only <base>/responses is served."""
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://127.0.0.1:{sim.port}/v1/realtime", additional_headers=AUTH):
            pass
    assert caught.value.response.status_code == 404
    async with connect(f"ws://127.0.0.1:{sim.port}/openai/v1/responses", additional_headers=AUTH):
        pass


@pytest.mark.parametrize("status", [401, 403, 429, 500, 503])
async def test_handshake_status_from_query(sim: Simulator, status: int) -> None:
    """?simulator_status=N answers the upgrade with N and a JSON error body."""
    with pytest.raises(InvalidStatus) as caught:
        async with open_ws(sim, f"?simulator_status={status}&simulator_retry_after=9"):
            pass
    response = caught.value.response
    assert response.status_code == status
    assert "error" in json.loads(response.body or b"")
    if status in (429, 503):
        assert response.headers["Retry-After"] == "9"


async def test_handshake_status_from_options_and_for_the_next_few() -> None:
    """The option refuses every upgrade; reject_next_handshakes only the next ones."""
    async with Simulator(SimulatorOptions(handshake_status=426)) as everyone:
        with pytest.raises(InvalidStatus) as caught:
            async with open_ws(everyone):
                pass
        assert caught.value.response.status_code == 426
    async with Simulator() as sim:
        sim.reject_next_handshakes(503, count=1)
        with pytest.raises(InvalidStatus):
            async with open_ws(sim):
                pass
        async with open_ws(sim):
            pass
        assert [h.status for h in sim.handshakes] == [503, 101]


async def test_close_right_after_upgrade(sim: Simulator) -> None:
    """?simulator_close=1008 accepts, then closes at once."""
    async with open_ws(sim, "?simulator_close=1008") as ws:
        evs, closed = await until_closed(ws)
    assert evs == []
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1008


async def test_bad_frames_get_errors_and_the_connection_survives(sim: Simulator) -> None:
    """Background, unknown types, non-JSON and binary frames get 400 errors."""
    async with open_ws(sim) as ws:
        await ws.send(create(background=True))
        await ws.send(json.dumps({"type": "session.update"}))
        await ws.send("not json")
        await ws.send(b"\x01\x02")
        errors = [await recv(ws) for _ in range(4)]
        await ws.send(create())
        evs = await until_terminal(ws)
    assert [e["type"] for e in errors] == ["error"] * 4
    assert {e["status"] for e in errors} == {400}
    assert {e["error"]["type"] for e in errors} == {"invalid_request_error"}
    # The background error waits for its lane, so the order of the four may vary.
    assert sorted(str(e["error"]["code"]) for e in errors) == [
        "invalid_event",
        "invalid_event",
        "invalid_json",
        "unsupported_parameter",
    ]
    assert evs[-1]["type"] == "response.completed"
    assert sim.received[3].data == b"\x01\x02"
    assert sim.received[3].type is None


async def test_binary_frames_can_close_1003() -> None:
    """With binary_frames="close" a binary frame closes the connection with 1003."""
    async with Simulator(SimulatorOptions(binary_frames="close")) as sim, open_ws(sim) as ws:
        await ws.send(b"\x00")
        _, closed = await until_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1003


async def test_steer_fails_as_unsupported(sim: Simulator) -> None:
    """response.steer is understood but this model cannot be steered."""
    async with open_ws(sim) as ws:
        await ws.send(
            json.dumps({"type": "response.steer", "previous_response_id": "r", "input": "x"})
        )
        event = await recv(ws)
    assert event["type"] == "response.steer.failed"
    assert event["error"]["code"] == "steering_not_supported"


async def test_default_lane_errors_keep_lane_order() -> None:
    """A queued create's validation error comes after the earlier response ends."""
    options = SimulatorOptions(tokens_per_second=400 / SECOND)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await ws.send(create())
        await ws.send(create(background=True))
        evs = await until_terminal(ws, count=2)
    assert [ev["type"] for ev in evs[-2:]] == ["response.completed", "error"]


async def test_continuation_and_not_found(sim: Simulator) -> None:
    """A cached id continues; an unknown id with store=false is not found."""
    async with open_ws(sim) as ws:
        await ws.send(create(store=False))
        first = (await until_terminal(ws))[-1]["response"]["id"]
        await ws.send(create("And then?", store=False, previous_response_id=first))
        second = await until_terminal(ws)
        await ws.send(create(store=False, previous_response_id="resp_unknown"))
        missing = await until_terminal(ws)
    assert second[0]["type"] == "response.created"
    assert second[-1]["response"]["previous_response_id"] == first
    assert missing == [
        {
            "type": "error",
            "status": 400,
            "error": {
                "type": "invalid_request_error",
                "code": "previous_response_not_found",
                "message": "Previous response with id 'resp_unknown' not found.",
                "param": "previous_response_id",
            },
        }
    ]


async def test_failed_same_lane_continuation_evicts_the_parent(sim: Simulator) -> None:
    """After a failed continuation, the parent is gone from the connection cache."""
    async with open_ws(sim) as ws:
        await ws.send(create(store=False))
        parent = (await until_terminal(ws))[-1]["response"]["id"]
        failing = {"simulator_fault": "failed"}
        await ws.send(create(store=False, previous_response_id=parent, metadata=failing))
        assert (await until_terminal(ws))[-1]["type"] == "response.failed"
        await ws.send(create(store=False, previous_response_id=parent))
        again = await until_terminal(ws)
    assert again[-1]["error"]["code"] == "previous_response_not_found"


async def test_store_true_survives_the_connection(sim: Simulator) -> None:
    """store=true responses continue on a new connection; store=false ones do not."""
    async with open_ws(sim) as ws:
        await ws.send(create())
        stored = (await until_terminal(ws))[-1]["response"]["id"]
        await ws.send(create(store=False, stream_id="b"))
        unstored = (await until_terminal(ws))[-1]["response"]["id"]
    async with open_ws(sim) as ws:
        await ws.send(create("More?", previous_response_id=stored))
        assert (await until_terminal(ws))[-1]["type"] == "response.completed"
        await ws.send(create("More?", previous_response_id=unstored))
        assert (await until_terminal(ws))[-1]["error"]["code"] == "previous_response_not_found"


async def test_warm_up_is_chainable(sim: Simulator) -> None:
    """generate:false returns an id the next request continues from."""
    async with open_ws(sim) as ws:
        await ws.send(create(store=False, generate=False))
        warm = await until_terminal(ws)
        await ws.send(create(store=False, previous_response_id=warm[-1]["response"]["id"]))
        answer = await until_terminal(ws)
    assert [ev["type"] for ev in warm] == ["response.created", "response.completed"]
    assert answer[-1]["type"] == "response.completed"


async def test_lanes_interleave_and_are_tagged() -> None:
    """Two lanes stream at once; every event names its lane; numbering is per response."""
    options = SimulatorOptions(tokens_per_second=300 / SECOND)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await ws.send(create(stream_id="a"))
        await ws.send(create("Why is the sky blue?", stream_id="b"))
        evs = await until_terminal(ws, count=2)
    lanes = [ev["stream_id"] for ev in evs]
    first_done = next(i for i, ev in enumerate(evs) if ev["type"] in TERMINAL)
    assert {"a", "b"} <= set(lanes[:first_done])
    for lane in "ab":
        mine = [ev for ev in evs if ev["stream_id"] == lane]
        assert [ev["sequence_number"] for ev in mine] == list(range(len(mine)))


async def test_same_lane_is_fifo() -> None:
    """A second create on a busy lane waits for the first to finish."""
    options = SimulatorOptions(tokens_per_second=400 / SECOND)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await ws.send(create(stream_id="a"))
        await ws.send(create("Second question?", stream_id="a"))
        evs = await until_terminal(ws, count=2)
    created = [i for i, ev in enumerate(evs) if ev["type"] == "response.created"]
    completed = [i for i, ev in enumerate(evs) if ev["type"] == "response.completed"]
    assert created[1] > completed[0]


async def test_in_flight_cap_queues_instead_of_rejecting() -> None:
    """Beyond max_in_flight, a create on another lane waits for a free slot."""
    options = SimulatorOptions(tokens_per_second=400 / SECOND, max_in_flight=1)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await ws.send(create(stream_id="a"))
        await ws.send(create(stream_id="b"))
        evs = await until_terminal(ws, count=2)
    assert [ev["stream_id"] for ev in evs[: len(evs) // 2]] == ["a"] * (len(evs) // 2)
    assert evs[-1]["type"] == "response.completed"


async def test_invalid_stream_id_and_lane_limit(sim: Simulator) -> None:
    """A bad name is refused untagged; the 33rd distinct name is refused tagged."""
    async with open_ws(sim) as ws:
        await ws.send(create(stream_id="bad id"))
        bad = await recv(ws)
        for index in range(32):
            await ws.send(create(generate=False, store=False, stream_id=f"l{index}"))
        await until_terminal(ws, count=32)
        await ws.send(create(stream_id="l32"))
        over = await recv(ws)
    assert bad["error"]["code"] == "invalid_stream_id"
    assert "stream_id" not in bad
    assert over["error"]["code"] == "websocket_stream_limit_reached"
    assert (over["stream_id"], over["error"]["param"]) == ("l32", "stream_id")


async def test_legacy_single_lane_mode() -> None:
    """Legacy mode refuses stream_id and runs one response at a time."""
    async with Simulator(SimulatorOptions(legacy_single_lane=True)) as sim, open_ws(sim) as ws:
        await ws.send(create(stream_id="a"))
        error = await recv(ws)
    assert error["error"]["code"] == "unknown_parameter"
    assert "stream_id" not in error


async def test_connection_age_limit() -> None:
    """Past the maximum age, a create gets websocket_connection_limit_reached."""
    options = SimulatorOptions(max_connection_age=0.2 * SECOND)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        await asyncio.sleep(0.3 * SECOND)
        await ws.send(create(stream_id="a"))
        error = await recv(ws)
    assert error == {
        "type": "error",
        "status": 400,
        "error": {
            "type": "invalid_request_error",
            "code": "websocket_connection_limit_reached",
            "message": error["error"]["message"],
            "param": None,
        },
    }
    assert error["error"]["message"].startswith("Responses websocket connection limit reached")


async def test_age_limit_error_pushed_when_idle() -> None:
    """push_limit_error sends the error unsolicited, then closes with 1000."""
    options = SimulatorOptions(max_connection_age=0.2 * SECOND, push_limit_error=True)
    async with Simulator(options) as sim, open_ws(sim) as ws:
        evs, closed = await until_closed(ws)
    assert [ev["error"]["code"] for ev in evs] == ["websocket_connection_limit_reached"]
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


async def test_message_size_limit_closes_1009() -> None:
    """An inbound message above max_message_size closes the connection with 1009."""
    async with Simulator(SimulatorOptions(max_message_size=1024)) as sim:
        async with open_ws(sim) as ws:
            await ws.send(create("x " * 1000))
            _, closed = await until_closed(ws)
        await sim.wait_for(lambda: len(sim.closes) == 1, 2 * SECOND)
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1009
    assert sim.closes[0].server_initiated
    assert sim.closes[0].server_code == 1009


# Scripted faults over sockets


@pytest.mark.parametrize(
    ("fault", "events_seen"),
    [("drop_before_created", 0), ("drop_after_created", 1), ("drop_mid_stream", None)],
)
async def test_drops_look_like_1006(sim: Simulator, fault: str, events_seen: int | None) -> None:
    """A scripted drop aborts TCP: no close frame, so the client sees 1006."""
    async with open_ws(sim) as ws:
        await ws.send(create(metadata={"simulator_fault": fault}))
        evs, closed = await until_closed(ws)
        assert ws.close_code == 1006
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None
    if events_seen is None:
        assert evs[-1]["type"] == "response.output_text.delta"
    else:
        assert len(evs) == events_seen
    await sim.wait_for(lambda: len(sim.closes) == 1, 2 * SECOND)
    assert sim.closes[0].server_initiated


@pytest.mark.parametrize("code", [1001, 1011, 1012, 1013, 4000])
async def test_close_mid_stream(sim: Simulator, code: int) -> None:
    """A trigger phrase in the input closes with the given code after some deltas."""
    async with open_ws(sim) as ws:
        await ws.send(create(f"Tell me a story [[fault:close_{code}]]"))
        evs, closed = await until_closed(ws)
    assert closed.rcvd is not None
    assert closed.rcvd.code == code
    assert evs[-1]["type"] == "response.output_text.delta"
    assert "[[" not in "".join(deltas(evs))


@pytest.mark.parametrize(
    ("fault", "last"),
    [
        ("failed", "response.failed"),
        ("incomplete", "response.incomplete"),
        ("error_mid_stream", "error"),
    ],
)
async def test_terminal_faults_keep_the_connection(sim: Simulator, fault: str, last: str) -> None:
    """Failed, incomplete and mid-stream errors end the request, not the connection."""
    async with open_ws(sim) as ws:
        await ws.send(create(metadata={"simulator_fault": fault}))
        evs = await until_terminal(ws)
        await ws.send(create())
        after = await until_terminal(ws)
    assert evs[0]["type"] == "response.created"
    assert evs[-1]["type"] == last
    assert after[-1]["type"] == "response.completed"


async def test_rate_limit_before_created(sim: Simulator) -> None:
    """rate_limit sends a 429 error with rate-limit headers and nothing else."""
    async with open_ws(sim) as ws:
        await ws.send(create("Hi [[fault:rate_limit]]", stream_id="x"))
        evs = await until_terminal(ws)
    assert len(evs) == 1
    error = evs[0]
    assert (error["status"], error["error"]["code"], error["stream_id"]) == (
        429,
        "rate_limit_exceeded",
        "x",
    )
    assert {"retry-after", "x-ratelimit-remaining-requests"} <= set(error["error"]["headers"])


async def test_unknown_fault_is_reported(sim: Simulator) -> None:
    """A typo in a fault name comes back as an error instead of being ignored."""
    async with open_ws(sim) as ws:
        await ws.send(create("Hi [[fault:explode]]"))
        error = await recv(ws)
    assert error["error"]["code"] == "invalid_simulator_fault"


async def test_silent_gap_keeps_answering_pings(sim: Simulator) -> None:
    """During a gap longer than the client's ping timeout, pongs keep it alive."""
    gap = 0.6 * SECOND
    async with open_ws(sim, ping_interval=0.1 * SECOND, ping_timeout=0.3 * SECOND) as ws:
        await ws.send(create(metadata={"simulator_fault": f"gap_{gap}"}))
        loop = asyncio.get_running_loop()
        stamps: list[float] = []
        evs: list[dict[str, Any]] = []
        while not evs or evs[-1]["type"] not in TERMINAL:
            evs.append(await recv(ws, 3 * SECOND))
            stamps.append(loop.time())
    assert evs[-1]["type"] == "response.completed"
    assert max(b - a for a, b in itertools.pairwise(stamps)) >= gap * 0.9


@pytest.mark.parametrize("fault", ["no_pong", "hang"])
async def test_muted_pongs_trip_the_client_ping_timeout(sim: Simulator, fault: str) -> None:
    """no_pong and hang stop pongs, so the client's keepalive fails with 1011."""
    async with open_ws(sim, ping_interval=0.1 * SECOND, ping_timeout=0.2 * SECOND) as ws:
        await ws.send(create(metadata={"simulator_fault": fault}))
        evs, closed = await until_closed(ws)
    assert closed.sent is not None
    assert closed.sent.code == 1011
    if fault == "hang":
        assert [ev["type"] for ev in evs] == ["response.created"]


async def test_huge_completed_trips_the_default_client_limit(sim: Simulator) -> None:
    """A default client (1 MiB max_size) fails with 1009; an unlimited one gets it all."""
    huge = create(metadata={"simulator_fault": "huge_completed"})
    async with open_ws(sim) as ws:
        await ws.send(huge)
        evs, closed = await until_closed(ws)
    assert closed.sent is not None
    assert closed.sent.code == 1009
    assert evs[-1]["type"] == "response.output_item.done"
    async with open_ws(sim, max_size=None) as ws:
        await ws.send(huge)
        async with asyncio.timeout(5 * SECOND):
            frames = [await ws.recv() for _ in range(len(evs) + 1)]
    assert json.loads(frames[-1])["type"] == "response.completed"
    assert len(frames[-1]) > MIB


async def test_disconnect_all() -> None:
    """disconnect_all closes every connection with the given code."""
    async with Simulator() as sim, open_ws(sim) as first, open_ws(sim) as second:
        await sim.wait_for(lambda: sim.open_connections == 2, 2 * SECOND)
        await sim.disconnect_all(1012)
        for ws in (first, second):
            _, closed = await until_closed(ws)
            assert closed.rcvd is not None
            assert closed.rcvd.code == 1012


async def test_close_is_idempotent_and_closes_connections() -> None:
    """close() ends open connections with 1001 and can be called twice."""
    sim = Simulator()
    await sim.start()
    async with open_ws(sim) as ws:
        await sim.close()
        _, closed = await until_closed(ws)
    await sim.close()
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001


async def test_plain_http_get_is_recorded_with_its_real_status(sim: Simulator) -> None:
    """A GET without Upgrade is refused by websockets (426) and recorded as such."""
    reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
    writer.write(
        f"GET /v1/responses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    )
    async with asyncio.timeout(2 * SECOND):
        status_line = await reader.readline()
    writer.close()
    await writer.wait_closed()
    assert status_line.startswith(b"HTTP/1.1 426")
    assert [h.status for h in sim.handshakes] == [426]


class LogWatch(logging.Handler):
    """Sets an event when a log message contains some text."""

    def __init__(self, text: str) -> None:
        super().__init__(logging.INFO)
        self.text = text
        self.seen = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if self.text in record.getMessage():
            self.seen.set()


async def test_serve_runs_until_cancelled(caplog: pytest.LogCaptureFixture) -> None:
    """serve() logs its URL at INFO, answers requests, and stops when cancelled."""
    port = free_port()
    url = f"ws://127.0.0.1:{port}/v1/responses"
    caplog.set_level(logging.INFO, logger="bridge_tools.simulator")
    watch = LogWatch(url)
    logging.getLogger("bridge_tools.simulator").addHandler(watch)
    try:
        task = asyncio.create_task(serve("127.0.0.1", port, SimulatorOptions(api_key=KEY)))
        async with asyncio.timeout(2 * SECOND):
            await watch.seen.wait()
    finally:
        logging.getLogger("bridge_tools.simulator").removeHandler(watch)
    async with connect(url, additional_headers=AUTH) as ws:
        await ws.send(create())
        assert (await until_terminal(ws))[-1]["type"] == "response.completed"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    with pytest.raises(ConnectionRefusedError):
        async with connect(url, additional_headers=AUTH, open_timeout=SECOND):
            pass


def test_say_prompts_are_answered_by_saying_it() -> None:
    """ "Say X in one sentence" answers with X (the seed flow's question reads naturally)."""
    from bridge_tools.simulator.text import generate_answer, question_kind

    prompt = "Say hello from Responses websocket mode in one sentence."
    assert question_kind(prompt) == "say"
    answer = generate_answer(prompt, 0)
    assert answer.startswith("Hello from Responses websocket mode! ")
    assert answer == generate_answer(prompt, 0)
