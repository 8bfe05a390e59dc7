"""The HTTP transport against the simulator's HTTP endpoint, driven as the daemon drives it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.config.endpoint import build_endpoint
from bridge.errors import UpstreamError
from bridge.upstream.http_connection import HttpUpstream, HttpUpstreamConnection, http_urls
from bridge.upstream.http_memory import Memory
from bridge_tools.simulator import Simulator, SimulatorOptions

KEY = "sk-http-transport-test-key-0123456789"


@dataclass(frozen=True)
class _Settings:
    open_timeout: float = 5.0
    connect_attempts: int = 2
    max_message_bytes: int = 1 << 20
    max_bytes_in_flight: int = 4 << 20


@dataclass
class Session:
    """A running session and what its reader was handed."""

    connection: HttpUpstreamConnection
    events: list[dict[str, Any]] = field(default_factory=list)
    written: list[int] = field(default_factory=list)
    task: asyncio.Task[tuple[int, str]] | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def deliver(self, raw: bytes) -> bool:
        self.events.append(json.loads(raw))
        self.arrived.set()
        return True

    async def until(self, kind: str, count: int = 1) -> list[dict[str, Any]]:
        async with asyncio.timeout(5):
            while sum(e["type"] == kind for e in self.events) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.events

    def create(self, **fields: Any) -> None:
        self.connection.send(json.dumps({"type": "response.create", "model": "gpt-5", **fields}))


async def _room() -> None:
    await asyncio.sleep(0)


_OPENED: list[HttpUpstream] = []


def upstream(
    sim: Simulator, key: str | None = KEY, memory: Memory = "auto", **settings: Any
) -> HttpUpstream:
    endpoint = build_endpoint(sim.http_base_url, api_key=key)
    up = HttpUpstream(endpoint, _Settings(**settings), memory=memory)
    _OPENED.append(up)
    return up


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    yield
    while _OPENED:
        await _OPENED.pop().aclose()


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(SimulatorOptions(api_key=KEY)) as simulator:
        yield simulator


async def start(up: HttpUpstream) -> Session:
    session = Session(await up.open())
    session.task = asyncio.create_task(
        session.connection.run(session.deliver, _room, session.written.append)
    )
    return session


async def finish(session: Session) -> tuple[int, str]:
    session.connection.close(1000, "bye")
    assert session.task is not None
    async with asyncio.timeout(5):
        return await session.task


def test_urls_follow_the_endpoint() -> None:
    urls = http_urls(build_endpoint("https://example.test/v1?api-version=1", api_key="k"))
    assert urls.responses == "https://example.test/v1/responses?api-version=1"
    assert urls.models == "https://example.test/v1/models?api-version=1"


async def test_ask_twice_in_order_and_continue(sim: Simulator) -> None:
    up = upstream(sim)
    session = await start(up)
    session.create(input="What is MQTT?", store=False)
    first = (await session.until("response.completed"))[-1]["response"]
    session.create(input="Tell me more.", store=False, previous_response_id=first["id"])
    events = await session.until("response.completed", 2)
    assert await finish(session) == (1000, "bye")
    assert events[0]["type"] == "response.created"
    assert events[-1]["type"] == "response.completed"
    # store false: the parent was replayed (the server could not have continued it).
    second = json.loads(sim.received[-1].data)
    assert "previous_response_id" not in second
    assert second["input"][0] == {"role": "user", "content": "What is MQTT?"}
    assert second["input"][1]["role"] == "assistant"
    assert len(session.written) == 2
    assert up.read_budget.reserved == 0


async def test_stored_parent_continues_on_the_server(sim: Simulator) -> None:
    up = upstream(sim)
    session = await start(up)
    session.create(input="Hello", store=True)
    first = (await session.until("response.completed"))[-1]["response"]
    session.create(input="More", store=True, previous_response_id=first["id"])
    await session.until("response.completed", 2)
    await finish(session)
    assert json.loads(sim.received[-1].data)["previous_response_id"] == first["id"]


async def test_auto_learns_a_forgetful_server() -> None:
    async with Simulator(SimulatorOptions(http_memory="forget")) as sim:
        up = upstream(sim, key=None)
        session = await start(up)
        session.create(input="Hello", store=True)
        first = (await session.until("response.completed"))[-1]["response"]
        session.create(input="More", store=True, previous_response_id=first["id"])
        events = await session.until("response.completed", 2)
        await finish(session)
    assert not [e for e in events if e["type"] == "error"]
    assert up.book.memory == "replay"
    last = json.loads(sim.received[-1].data)
    assert "previous_response_id" not in last
    assert "store" not in last


async def test_wrong_key_fails_open_with_401(sim: Simulator) -> None:
    with pytest.raises(UpstreamError) as caught:
        await upstream(sim, key="sk-wrong-0123456789abcdef").open()
    assert caught.value.status == 401
    assert "0123456789abcdef" not in str(caught.value)


async def test_http_errors_become_error_events(sim: Simulator) -> None:
    session = await start(upstream(sim))
    sim.reject_next_handshakes(429)
    session.create(input="Hi")
    events = await session.until("error")
    assert events[-1]["status"] == 429
    assert events[-1]["error"]["code"] == "rate_limit_exceeded"
    assert events[-1]["error"]["headers"]["retry-after"]
    session.create(input="Hi")  # the session goes on
    await session.until("response.completed")
    await finish(session)


async def test_cancel_ends_the_running_stream() -> None:
    async with Simulator(SimulatorOptions(tokens_per_second=20)) as sim:
        session = await start(upstream(sim, key=None))
        session.create(input="Write a long story about brokers.")
        await session.until("response.output_text.delta")
        session.connection.send(json.dumps({"type": "response.cancel"}))
        events = await session.until("error")
        assert events[-1]["error"]["code"] == "response_cancelled"
        session.create(input="Hi")
        await session.until("response.completed")
        assert await finish(session) == (1000, "bye")


async def test_close_during_a_stream_ends_the_session() -> None:
    async with Simulator(SimulatorOptions(tokens_per_second=20)) as sim:
        session = await start(upstream(sim, key=None))
        session.create(input="Write a long story about brokers.")
        await session.until("response.output_text.delta")
        assert await finish(session) == (1000, "bye")
        assert not [e for e in session.events if e["type"] == "response.completed"]


async def test_other_client_events_have_no_http_form(sim: Simulator) -> None:
    session = await start(upstream(sim))
    session.connection.send(json.dumps({"type": "response.steer", "input": "x"}))
    events = await session.until("error")
    assert events[-1]["error"]["code"] == "unsupported_over_http"
    await finish(session)


async def test_an_oversized_event_ends_the_session() -> None:
    async with Simulator(SimulatorOptions(fixed_reply="x" * 3000)) as sim:
        up = upstream(sim, key=None, max_message_bytes=2048)
        session = await start(up)
        session.create(input="Hi")
        assert session.task is not None
        async with asyncio.timeout(5):
            code, _ = await session.task
        assert code == 1009
        assert up.read_budget.reserved == 0
