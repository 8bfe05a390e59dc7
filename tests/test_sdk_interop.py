"""The official openai SDK against the simulator: proof that it speaks the real protocol.

The SDK builds the URL from ``base_url`` (``http`` becomes ``ws``, ``/responses`` is
appended), sends ``Authorization: Bearer``, and parses every frame into its typed
event union, so a shape the SDK cannot read fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai import AsyncOpenAI
from openai.types.responses.responses_server_event import ResponseWsError
from websockets.exceptions import InvalidStatus

from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.helpers import SECOND

KEY = "sk-interop-test-key"
MODEL = "gpt-5"
TERMINAL = {"response.completed", "response.failed", "response.incomplete", "error"}


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorOptions(api_key=KEY)) as simulator:
        yield simulator


@pytest.fixture
async def client(sim: Simulator) -> AsyncIterator[AsyncOpenAI]:
    async with AsyncOpenAI(base_url=sim.base_url, api_key=KEY, max_retries=0) as openai:
        yield openai


async def until_terminal(connection: Any) -> list[Any]:
    """Events from an SDK connection up to the first terminal event or error."""
    events: list[Any] = []
    async with asyncio.timeout(5 * SECOND):
        async for event in connection:
            events.append(event)
            if event.type in TERMINAL:
                break
    return events


async def test_sdk_streams_a_text_answer(sim: Simulator, client: AsyncOpenAI) -> None:
    """Typed deltas join to the completed response's output_text."""
    async with client.responses.connect() as connection:
        await connection.response.create(model=MODEL, input="What is MQTT?", store=False)
        events = await until_terminal(connection)
    completed = events[-1]
    assert completed.type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 5
    assert completed.response.output_text == "".join(deltas)
    assert "MQTT" in completed.response.output_text
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == len(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert sim.handshakes[0].header("Authorization") == f"Bearer {KEY}"
    assert sim.handshakes[0].path == "/v1/responses"
    assert sim.received[0].json()["model"] == MODEL


async def test_sdk_chains_a_second_turn(client: AsyncOpenAI) -> None:
    """previous_response_id continues from the connection cache, even with store=false."""
    async with client.responses.connect() as connection:
        await connection.response.create(model=MODEL, input="What is MQTT?", store=False)
        first = (await until_terminal(connection))[-1].response
        await connection.response.create(
            model=MODEL, input="Tell me more.", store=False, previous_response_id=first.id
        )
        second = (await until_terminal(connection))[-1]
    assert second.type == "response.completed"
    assert second.response.previous_response_id == first.id
    assert second.response.id != first.id
    assert second.response.output_text


async def test_sdk_sees_previous_response_not_found(client: AsyncOpenAI) -> None:
    """An unknown id with store=false is a typed, nested error, and the socket lives on."""
    async with client.responses.connect() as connection:
        await connection.response.create(
            model=MODEL, input="Hi", store=False, previous_response_id="resp_missing"
        )
        (error,) = await until_terminal(connection)
        await connection.response.create(model=MODEL, input="Hi again", store=False)
        after = await until_terminal(connection)
    assert isinstance(error, ResponseWsError)
    assert error.status == 400
    assert error.error.code == "previous_response_not_found"
    assert error.error.param == "previous_response_id"
    assert error.error.message == "Previous response with id 'resp_missing' not found."
    assert after[-1].type == "response.completed"


async def test_sdk_warm_up_on_a_named_lane(client: AsyncOpenAI) -> None:
    """generate=false and stream_id go through the SDK and come back tagged."""
    async with client.responses.connect() as connection:
        await connection.response.create(
            model=MODEL, input="Prepare.", store=False, generate=False, stream_id="lane-1"
        )
        events = await until_terminal(connection)
    assert [e.type for e in events] == ["response.created", "response.completed"]
    assert {e.stream_id for e in events} == {"lane-1"}
    assert events[-1].response.output == []


async def test_sdk_wrong_key_fails_before_upgrade(sim: Simulator) -> None:
    """A wrong key is refused with HTTP 401 before any WebSocket exists."""
    async with AsyncOpenAI(base_url=sim.base_url, api_key="sk-wrong", max_retries=0) as bad:
        with pytest.raises(InvalidStatus) as caught:
            async with bad.responses.connect():
                pass
    assert caught.value.response.status_code == 401
    assert sim.open_connections == 0
