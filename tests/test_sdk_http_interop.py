"""The official openai SDK against the simulator's HTTP endpoint (``POST /v1/responses``).

``responses.create(stream=True)`` and ``responses.stream(...)`` parse every
server-sent event into the SDK's typed union, so a shape the SDK cannot read
fails here, as tests/test_sdk_interop.py checks the WebSocket side.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI

from bridge_tools.simulator import Simulator, SimulatorOptions

KEY = "sk-interop-http-test-key"
MODEL = "gpt-5"


@contextlib.asynccontextmanager
async def http_client(
    options: SimulatorOptions, key: str = KEY
) -> AsyncIterator[tuple[Simulator, AsyncOpenAI]]:
    """A simulator and an SDK client of its HTTP endpoint."""
    async with (
        Simulator(options) as simulator,
        AsyncOpenAI(base_url=simulator.http_base_url, api_key=key, max_retries=0) as client,
    ):
        yield simulator, client


@pytest.fixture
async def both() -> AsyncIterator[tuple[Simulator, AsyncOpenAI]]:
    async with http_client(SimulatorOptions(api_key=KEY)) as pair:
        yield pair


@pytest.fixture
def sim(both: tuple[Simulator, AsyncOpenAI]) -> Simulator:
    return both[0]


@pytest.fixture
def client(both: tuple[Simulator, AsyncOpenAI]) -> AsyncOpenAI:
    return both[1]


async def _events(stream: Any) -> list[Any]:
    return [event async for event in stream]


async def test_create_stream_true_gives_typed_events(sim: Simulator, client: AsyncOpenAI) -> None:
    stream = await client.responses.create(model=MODEL, input="What is MQTT?", stream=True)
    events = await _events(stream)
    assert events[0].type == "response.created"
    completed = events[-1]
    assert completed.type == "response.completed"
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert len(deltas) > 5
    assert completed.response.output_text == "".join(deltas)
    assert [e.sequence_number for e in events] == list(range(len(events)))
    posted = [h for h in sim.handshakes if h.path == "/v1/responses"]
    assert posted[0].header("Authorization") == f"Bearer {KEY}"
    assert sim.received[0].json()["stream"] is True


async def test_responses_stream_helper_and_a_stored_second_turn(client: AsyncOpenAI) -> None:
    async with client.responses.stream(model=MODEL, input="What is MQTT?") as stream:
        texts = [
            event.delta async for event in stream if event.type == "response.output_text.delta"
        ]
        first = await stream.get_final_response()
    assert first.output_text == "".join(texts)
    # store defaults to true over HTTP: the next turn continues from the stored response.
    async with client.responses.stream(
        model=MODEL, input="Tell me more.", previous_response_id=first.id
    ) as stream:
        second = await stream.get_final_response()
    assert second.previous_response_id == first.id
    assert second.usage is not None
    assert first.usage is not None
    assert second.usage.input_tokens > first.usage.input_tokens


async def test_not_streamed_gives_the_response_object(client: AsyncOpenAI) -> None:
    response = await client.responses.create(model=MODEL, input="Hello")
    assert response.status == "completed"
    assert response.output_text


async def test_store_false_cannot_be_continued(client: AsyncOpenAI) -> None:
    first = await client.responses.create(model=MODEL, input="Hello", store=False)
    with pytest.raises(openai.BadRequestError) as caught:
        await client.responses.create(
            model=MODEL, input="More", store=False, previous_response_id=first.id, stream=True
        )
    assert caught.value.code == "previous_response_not_found"


async def test_wrong_key_is_401() -> None:
    async with http_client(SimulatorOptions(api_key=KEY), "sk-wrong-key-1234") as (_, bad):
        with pytest.raises(openai.AuthenticationError) as caught:
            await bad.responses.create(model=MODEL, input="Hi", stream=True)
    assert caught.value.status_code == 401
    assert "sk-wrong-key-1234" not in str(caught.value)


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (429, openai.RateLimitError),
        (500, openai.InternalServerError),
        (503, openai.InternalServerError),
        (404, openai.NotFoundError),
    ],
)
async def test_forced_statuses(
    sim: Simulator, client: AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    sim.reject_next_handshakes(status)
    with pytest.raises(error) as caught:
        await client.responses.create(model=MODEL, input="Hi", stream=True)
    assert caught.value.status_code == status
    # The next request goes through.
    response = await client.responses.create(model=MODEL, input="Hi")
    assert response.status == "completed"


async def test_models_lists_one(client: AsyncOpenAI) -> None:
    models = [model.id async for model in client.models.list()]
    assert len(models) == 1


@pytest.mark.parametrize("memory", ["forget", "ignore"])
async def test_a_forgetful_server(memory: str) -> None:
    options = SimulatorOptions(http_memory=memory)  # type: ignore[arg-type]
    async with http_client(options) as (_, client):
        first = await client.responses.create(model=MODEL, input="Hello")
        if memory == "forget":
            with pytest.raises(openai.BadRequestError) as caught:
                await client.responses.create(
                    model=MODEL, input="More", previous_response_id=first.id
                )
            assert caught.value.code == "previous_response_not_found"
        else:
            second = await client.responses.create(
                model=MODEL, input="More", previous_response_id=first.id
            )
            assert second.status == "completed"


async def test_a_server_refusing_store() -> None:
    async with http_client(SimulatorOptions(http_refuse_store=True)) as (_, client):
        with pytest.raises(openai.BadRequestError):
            await client.responses.create(model=MODEL, input="Hello", store=True)
        response = await client.responses.create(model=MODEL, input="Hello", store=False)
        assert response.status == "completed"


async def test_a_tool_call_round(client: AsyncOpenAI) -> None:
    tools: Any = [
        {
            "type": "function",
            "name": "set_light",
            "description": "Switch a light",
            "parameters": {"type": "object", "properties": {"on": {"type": "boolean"}}},
        }
    ]
    stream = await client.responses.create(
        model=MODEL, input='Please call set_light with {"on":true}', tools=tools, stream=True
    )
    events = await _events(stream)
    calls = [item for item in events[-1].response.output if item.type == "function_call"]
    assert calls, [e.type for e in events]
    answer = await client.responses.create(
        model=MODEL,
        previous_response_id=events[-1].response.id,
        input=[{"type": "function_call_output", "call_id": calls[0].call_id, "output": "ok"}],
        tools=tools,
    )
    assert answer.status == "completed"
