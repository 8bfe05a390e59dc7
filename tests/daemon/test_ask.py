"""`ask` on a real Mosquitto: one short command gets an answer; the bridge keeps the memory."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client
from tests.helpers import SECOND

pytestmark = pytest.mark.integration


async def ask(client: Client, connection_id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
    """Publish an ask; every message on the id's events topic until its response completed."""
    await client.command(connection_id, {"action": "ask", "input": text, **fields})
    return await client.until(lambda m: m.get("type") == "response.completed")


def requests(simulator: Simulator) -> list[dict[str, Any]]:
    """What the upstream was sent, as JSON."""
    return [received.json() for received in simulator.received]


def response_id(messages: list[dict[str, Any]]) -> str:
    completed = messages[-1]
    assert completed["type"] == "response.completed"
    value: str = completed["response"]["id"]
    return value


async def test_ask_without_connect_opens_and_answers(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """One short command: the connect ack (with its profile), the ask ack, then the answer."""
    await start_bridge(broker, simulator)
    seen = await ask(client, "kitchen", "Describe tulips.", request_id="a1")
    assert seen[0] == {
        "object": "response.websocket.connection",
        "action": "connect",
        "connection_id": "kitchen",
        "url": simulator.url,
        "profile": "default",
        "request_id": "a1",
    }
    assert seen[1] == {
        "object": "response.websocket.client_event",
        "action": "ask",
        "connection_id": "kitchen",
        "event_type": "response.create",
        "request_id": "a1",
    }
    (request,) = requests(simulator)
    assert request == {
        "type": "response.create",
        "model": "gpt-5.4-nano",
        "store": False,
        "input": [{"role": "user", "content": "Describe tulips."}],
    }


async def test_a_second_ask_continues_and_a_new_socket_replays(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """Same socket: previous_response_id. Socket gone (store false): the transcript replayed."""
    await start_bridge(broker, simulator)
    first = await ask(client, "c1", "Describe tulips.")
    second = await ask(client, "c1", "And roses?")
    assert requests(simulator)[1]["previous_response_id"] == response_id(first)
    assert requests(simulator)[1]["input"] == [{"role": "user", "content": "And roses?"}]
    await simulator.disconnect_all(1012, "service restart")
    notice = await client.until(lambda m: m.get("action") == "disconnected")
    assert notice[-1]["code"] == 1012
    third = await ask(client, "c1", "Which is easier to grow?")
    assert third[0]["action"] == "connect"  # reopened on demand
    replay = requests(simulator)[2]
    assert "previous_response_id" not in replay
    said = [item["content"] for item in replay["input"]]
    assert said[0] == "Describe tulips."
    assert said[2] == "And roses?"
    assert said[-1] == "Which is easier to grow?"
    assert [item["role"] for item in replay["input"]] == ["user", "assistant"] * 2 + ["user"]
    answers = [first, second]
    assert said[1] == "".join(
        m["delta"] for m in answers[0] if m.get("type") == "response.output_text.delta"
    )
    # One answer per ask, nothing duplicated.
    assert sum(m.get("type") == "response.completed" for m in first + second + third) == 3


async def test_new_conversation_and_close_forget(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator)
    await ask(client, "c1", "Describe tulips.")
    await ask(client, "c1", "Something else.", new_conversation=True)
    fresh = requests(simulator)[1]
    assert "previous_response_id" not in fresh
    assert fresh["input"] == [{"role": "user", "content": "Something else."}]
    await client.command("c1", {"action": "close"})
    await client.until(lambda m: m.get("action") == "close")
    await ask(client, "c1", "Hello again.")
    after_close = requests(simulator)[2]
    assert "previous_response_id" not in after_close
    assert len(after_close["input"]) == 1


async def test_profiles_by_id_pattern_and_unknown_profile(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(
        broker,
        simulator,
        profiles={
            "default": {"request": {"model": "m-default"}},
            "kitchen": {"request": {"model": "m-kitchen", "instructions": "Be brief."}},
        },
        sessions={"profile_by_id": {"kitchen-*": "kitchen"}},
    )
    seen = await ask(client, "kitchen-1", "Describe tulips.")
    assert seen[0]["profile"] == "kitchen"
    assert requests(simulator)[0]["model"] == "m-kitchen"
    assert requests(simulator)[0]["instructions"] == "Be brief."
    await client.command("hall", {"action": "connect", "profile": "nope", "request_id": "r1"})
    refused = await client.next_json()
    assert (refused["action"], refused["error"]["code"]) == ("connect", "unknown_profile")
    await client.command("hall", {"action": "ask", "input": "Hi", "profile": "nope"})
    refused = await client.next_json()
    assert (refused["action"], refused["error"]["code"]) == ("ask", "unknown_profile")
    assert await client.quiet(0.3 * SECOND) == []


async def test_ask_needs_an_input(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    await start_bridge(broker, simulator)
    for bad in ({"action": "ask"}, {"action": "ask", "input": ""}, {"action": "ask", "input": 3}):
        await client.command("c1", bad)
        answer = await client.next_json()
        assert (answer["action"], answer["error"]["code"]) == ("ask", "invalid_command")
    assert simulator.handshakes == []


async def test_a_socket_near_the_age_limit_is_replaced_before_the_turn(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """sessions.max_socket_age: the next ask goes to a new socket, the conversation replayed."""
    await start_bridge(broker, simulator, sessions={"max_socket_age": 0.5 * SECOND})
    first = await ask(client, "c1", "Describe tulips.")
    await client.quiet(0.7)  # the socket grows old
    second = await ask(client, "c1", "And roses?")
    notice, connected, asked = second[0], second[1], second[2]
    assert (notice["action"], notice["code"]) == ("disconnected", 1000)
    assert notice["reason"] == "replaced before the server's 60-minute limit"
    assert (connected["action"], asked["action"]) == ("connect", "ask")
    assert [close.code for close in simulator.closes] == [1000]
    replay = requests(simulator)[1]
    assert "previous_response_id" not in replay
    assert [item["role"] for item in replay["input"]] == ["user", "assistant", "user"]
    assert response_id(first) != response_id(second)


async def test_auto_connect_opens_for_a_send(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """sessions.auto_connect: a send for an id that is not open opens it; off, not_open."""
    create = {"type": "response.create", "model": "m", "input": "Describe tulips."}
    await start_bridge(broker, simulator, sessions={"auto_connect": True})
    await client.command("c1", {"action": "send", "event": create, "request_id": "s1"})
    seen = await client.until(lambda m: m.get("type") == "response.completed")
    assert (seen[0]["action"], seen[0]["profile"], seen[0]["request_id"]) == (
        "connect",
        "default",
        "s1",
    )
    assert (seen[1]["action"], seen[1]["request_id"]) == ("send", "s1")
    assert requests(simulator) == [create]


async def test_a_turn_refused_for_the_socket_age_is_sent_again_on_a_new_socket(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    """websocket_connection_limit_reached before any output: retried once, quietly, replayed."""
    async with Simulator(SimulatorOptions(api_key=KEY, max_connection_age=0.5 * SECOND)) as aged:
        await start_bridge(broker, aged)
        await ask(client, "c1", "Describe tulips.")
        await client.quiet(0.7)  # older than the server allows
        second = await ask(client, "c1", "And roses?")
        assert second[0]["action"] == "ask"
        assert not any(m.get("type") == "error" for m in second)  # held back
        assert not any("action" in m for m in second[1:])  # no second ack, notice or connect
        sent = requests(aged)
        assert len(sent) == 3  # the first turn, the refused one, the retry
        assert "previous_response_id" not in sent[2]
        assert [item["role"] for item in sent[2]["input"]] == ["user", "assistant", "user"]


async def test_a_drop_before_output_is_retried_and_after_output_is_upstream_lost(
    broker: Broker, start_bridge: Any, client: Client
) -> None:
    async with Simulator(SimulatorOptions(api_key=KEY, first_token_delay=1.0 * SECOND)) as slow:
        await start_bridge(broker, slow)
        await client.command("c1", {"action": "ask", "input": "Describe tulips."})
        await client.until(lambda m: m.get("type") == "response.content_part.added")
        await slow.disconnect_all(None)  # TCP dropped before the first token
        seen = await client.until(lambda m: m.get("type") == "response.completed")
        assert not any(m.get("action") == "disconnected" for m in seen)
        assert [r["input"] for r in requests(slow)] == [
            [{"role": "user", "content": "Describe tulips."}]
        ] * 2
        # Now a drop after part of the answer: never retried.
        await client.command(
            "c1", {"action": "ask", "input": "More [[fault:drop_mid_stream]]", "request_id": "q2"}
        )
        seen = await client.until(lambda m: m.get("action") == "disconnected", wait=20)
        lost = [m for m in seen if m.get("object") == "response.websocket.error"]
        assert [(m["action"], m["error"]["code"], m["request_id"]) for m in lost] == [
            ("ask", "upstream_lost", "q2")
        ]
        assert len(requests(slow)) == 3
        assert (await ask(client, "c1", "Still there?"))[0]["action"] == "connect"


async def test_the_replayed_transcript_keeps_within_its_bound(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client
) -> None:
    """sessions.max_transcript_bytes: the oldest turns are dropped from what is replayed."""
    await start_bridge(broker, simulator, sessions={"max_transcript_bytes": 1024})
    for number in range(6):
        await ask(client, "c1", f"Question {number}: " + "tulips " * 40)
    await simulator.disconnect_all(1012, "service restart")
    await client.until(lambda m: m.get("action") == "disconnected")
    await ask(client, "c1", "Last question.")
    replay = requests(simulator)[-1]["input"]
    history = replay[:-1]
    assert len(json.dumps(history, separators=(",", ":"))) <= 1024 + 2 * len(history)
    assert history[0]["content"].startswith("Question ")
    assert not history[0]["content"].startswith("Question 0:")  # the oldest turns went first
    assert history[-2]["content"].startswith("Question 5:")
