"""MCP servers on a real Mosquitto and the simulator: real server processes built with the
official SDK (streamable HTTP and stdio), called in the bridge's tool loop."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.daemon.test_tools import answer_text, ask, requests, tool_calls
from tests.helpers import SECOND

pytestmark = pytest.mark.integration

SERVER = Path(__file__).with_name("mcp_house.py")
TOKEN = "mcp-canary-9d4e1f7a2b6c"
ALLOW = ["*_light", "fail", "slow", "grow", "crash", "extra"]  # not admin_reset


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def http_server(calls: Path) -> Iterator[str]:
    """The house server over streamable HTTP, as its own process: its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, str(SERVER), "http", str(calls), str(port), TOKEN],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20 * SECOND
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            assert process.poll() is None, "the MCP server did not start"
            assert time.monotonic() < deadline, "the MCP server did not listen"
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.kill()
        process.wait()


def stdio_server(calls: Path, **options: Any) -> dict[str, Any]:
    """The house server as a command the bridge starts and speaks to over stdio."""
    return {"command": sys.executable, "args": [str(SERVER), "stdio", str(calls)], **options}


def token_file(tmp_path: Path) -> str:
    path = tmp_path / "house_token"
    path.write_text(TOKEN + "\n")
    return str(path)


async def start(
    start_bridge: Any, broker: Broker, simulator: Simulator, **servers: dict[str, Any]
) -> Any:
    profile = {"request": {"model": "gpt-5.4-nano", "store": False}, "mcp_servers": ["house"]}
    bridge = await start_bridge(
        broker,
        simulator,
        mcp_servers={name: {"allow": ALLOW, **server} for name, server in servers.items()},
        profiles={"default": profile, "plain": {"request": {"model": "gpt-5.4-nano"}}},
        sessions={"max_tool_rounds": 2, "profile_by_id": {"plain-*": "plain"}},
    )
    await until_up(bridge)
    return bridge


async def until_up(bridge: Any, server: str = "house", tools: int | None = None) -> None:
    deadline = asyncio.get_running_loop().time() + 20 * SECOND
    while True:
        report = bridge.service.mcp_servers[server]
        if report["state"] == "up" and (tools is None or report["tools"] == tools):
            return
        assert asyncio.get_running_loop().time() < deadline, report
        await asyncio.sleep(0.05)


async def until_logged(caplog: pytest.LogCaptureFixture, text: str) -> None:
    deadline = asyncio.get_running_loop().time() + 20 * SECOND
    while not any(text in record.getMessage() for record in caplog.records):
        assert asyncio.get_running_loop().time() < deadline, f"never logged: {text}"
        await asyncio.sleep(0.05)


def called(calls: Path) -> list[tuple[str, dict[str, Any]]]:
    if not calls.exists():
        return []
    lines = calls.read_text().splitlines()
    return [(entry["tool"], entry["arguments"]) for entry in map(json.loads, lines)]


@pytest.fixture
def calls(tmp_path: Path) -> Path:
    return tmp_path / "calls.jsonl"


@pytest.fixture
async def everything(broker: Broker) -> AsyncIterator[list[bytes]]:
    """Every message on the broker while the test runs (for the canary)."""
    seen: list[bytes] = []
    async with Client(broker) as spy:
        await spy.subscribe("#")
        yield seen
        await asyncio.sleep(0.1 * SECOND)
        while not spy.received.empty():
            seen.append(bytes(spy.received.get_nowait().payload))


async def test_over_http_the_allowed_tools_are_offered_and_called_with_the_token(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    calls: Path,
    tmp_path: Path,
    everything: list[bytes],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with http_server(calls) as url:
        bridge = await start(
            start_bridge, broker, simulator, house={"url": url, "token_file": token_file(tmp_path)}
        )
        assert bridge.service.mcp_servers == {
            "house": {"state": "up", "transport": "http", "tools": 6}
        }
        seen = await ask(
            client, 'call house__set_light with {"entity":"light.kitchen","state":"on"}'
        )
    (call,) = tool_calls(seen)
    assert (call["name"], call["server"], call["tool"], call["status"]) == (
        "house__set_light",
        "house",
        "set_light",
        "replied",
    )
    assert "light.kitchen is now on" in answer_text(seen)
    assert called(calls) == [("set_light", {"entity": "light.kitchen", "state": "on"})]
    offered = [tool["name"] for tool in requests(simulator)[0]["tools"]]
    assert "house__set_light" in offered
    assert "house__admin_reset" not in offered  # not in the allow list: never offered
    await bridge.stop()
    assert all(TOKEN.encode() not in payload for payload in everything)
    assert TOKEN not in caplog.text


async def test_over_stdio_an_error_result_and_a_list_that_changed(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client, calls: Path
) -> None:
    bridge = await start(start_bridge, broker, simulator, house=stdio_server(calls))
    assert bridge.service.mcp_servers["house"]["transport"] == "stdio"
    seen = await ask(client, "call house__fail with {}")
    (call,) = tool_calls(seen)
    assert call["status"] == "error"
    assert call["error"] == "error: Error executing tool fail: the boiler is offline"
    assert call["error"] in answer_text(seen)

    seen = await ask(client, "call house__grow with {}")
    assert tool_calls(seen)[0]["status"] == "replied"
    await until_up(bridge, tools=7)  # listed again: `extra` is allowed
    seen = await ask(client, "call house__extra with {}")
    assert "extra here" in answer_text(seen)
    assert [tool for tool, _ in called(calls)] == ["fail", "grow", "extra"]


async def test_invalid_arguments_and_tools_not_allowed_never_reach_the_server(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client, calls: Path
) -> None:
    await start(start_bridge, broker, simulator, house=stdio_server(calls))
    seen = await ask(client, 'call house__set_light with {"entity":"light.k","state":"dim"}')
    (call,) = tool_calls(seen)
    assert call["status"] == "invalid_arguments"
    assert "'dim' is not one of" in call["error"]
    seen = await ask(client, "call house__admin_reset with {}")
    assert tool_calls(seen) == []  # not offered, so the model cannot call it
    assert called(calls) == []


async def test_a_server_killed_mid_call_is_an_error_then_comes_back(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    calls: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    await start(start_bridge, broker, simulator, house=stdio_server(calls, call_timeout=5))
    seen = await ask(client, "call house__crash with {}")
    (call,) = tool_calls(seen)
    assert call["status"] == "error"
    assert call["error"].startswith("error: the call failed")
    assert seen[-1]["type"] == "response.completed"  # the turn goes on, told of the error
    await until_logged(caplog, "is back:")  # started again, with backoff
    outages = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(outages) == 1
    assert outages[0].levelno == logging.WARNING
    seen = await ask(client, 'call house__get_light with {"entity":"light.hall"}')
    assert "light.hall is off" in answer_text(seen)


async def test_a_slow_server_holds_only_its_own_turn(
    broker: Broker, simulator: Simulator, start_bridge: Any, client: Client, calls: Path
) -> None:
    with http_server(calls) as url:
        house = {"url": url, "token_file": token_file(Path(calls).parent), "call_timeout": 1.5}
        await start(start_bridge, broker, simulator, house=house)
        loop = asyncio.get_running_loop()
        began = loop.time()
        await client.command(
            "t1", {"action": "ask", "input": 'call house__slow with {"seconds":5}'}
        )
        seen = await ask(client, "Describe tulips.", connection_id="plain-1")
        assert seen[-1]["type"] == "response.completed"
        assert loop.time() - began < 1.2 * SECOND  # another id streams meanwhile
        slow = await client.until(
            lambda m: m.get("object") == "response.websocket.tool_call", wait=10
        )
    assert slow[-1]["status"] == "timeout"
    assert slow[-1]["error"] == "no result from house within 1.5 s (timeout)"


async def test_a_server_that_is_down_offers_nothing_and_says_so_once(
    broker: Broker,
    simulator: Simulator,
    start_bridge: Any,
    client: Client,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"  # nobody listens
    house = {"url": url, "token_file": token_file(tmp_path), "connect_timeout": 1}
    profile = {"request": {"model": "gpt-5.4-nano", "store": False}, "mcp_servers": ["house"]}
    bridge = await start_bridge(
        broker,
        simulator,
        mcp_servers={"house": {"allow": ["*"], **house}},
        profiles={"default": profile},
    )
    deadline = asyncio.get_running_loop().time() + 10 * SECOND
    while bridge.service.mcp_servers["house"]["state"] != "down":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.05)
    seen = await ask(client, "call house__set_light with {}")
    assert tool_calls(seen) == []
    assert "tools" not in requests(simulator)[0]
    await asyncio.sleep(1.5 * SECOND)  # retried meanwhile (backoff from 0.5 s)
    outages = [r for r in caplog.records if "is unreachable" in r.getMessage()]
    assert len(outages) == 1
    assert TOKEN not in caplog.text
