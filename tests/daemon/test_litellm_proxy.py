"""A third-party Responses server through the bridge over HTTP: LiteLLM's proxy (issue 26).

LiteLLM (``scripts/install-litellm``, a cached venv) is started once for the module on a
free port, in front of the project's simulator as a house puts it in front of a model
(its own mock answers cannot stream on ``/v1/responses``). The bridge's ``local``
endpoint is the proxy, ``transport: http``; the key it sends is the proxy's master key.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge_tools import litellm_proxy
from bridge_tools.litellm_proxy import MODEL, LiteLLMProxy
from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY, Broker, Client
from tests.daemon.test_tools import TOOLS, device, tool_calls
from tests.daemon.test_tools import ask as ask_with_tools
from tests.helpers import SECOND, missing

pytestmark = pytest.mark.integration

UPSTREAM_KEY = "sk-upstream-of-the-proxy-0123456789"


class ThreadedSimulator:
    """The simulator on an event loop of its own thread: it outlives each test's loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.simulator = Simulator(SimulatorOptions(api_key=UPSTREAM_KEY))
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> Simulator:
        self.thread.start()
        started = asyncio.run_coroutine_threadsafe(self.simulator.start(), self.loop)
        started.result(10 * SECOND)
        return self.simulator

    def __exit__(self, *exc: object) -> None:
        stopped = asyncio.run_coroutine_threadsafe(self.simulator.close(), self.loop)
        stopped.result(10 * SECOND)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10 * SECOND)
        self.loop.close()


@pytest.fixture(scope="module")
def upstream() -> Iterator[Simulator]:
    with ThreadedSimulator() as simulator:
        yield simulator


@pytest.fixture(scope="module")
def proxy(upstream: Simulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiteLLMProxy]:
    if not litellm_proxy.installed():  # skipped here, a failure under CI
        missing("LiteLLM's proxy", "scripts/install-litellm installs it (scripts/test does)")
    with litellm_proxy.running(
        tmp_path_factory.mktemp("litellm"),
        upstream.http_base_url,
        UPSTREAM_KEY,
        master_key=KEY,
        timeout=60 * SECOND,
    ) as running:
        yield running


async def start(
    start_bridge: Any,
    broker: Broker,
    upstream: Simulator,
    proxy: LiteLLMProxy,
    *,
    store: bool = False,
    **sections: Any,
) -> Any:
    """A bridge whose `default` profile asks LiteLLM over HTTP (the `local` endpoint)."""
    local = {
        "base_url": proxy.base_url,
        "transport": "http",
        "api_key_env": "OPENAI_API_KEY",
        **sections.pop("local", {}),
    }
    default = {
        "request": {"model": MODEL, "store": store},
        "endpoint": "local",
        **sections.pop("default", {}),
    }
    endpoints = {"local": local, **sections.pop("endpoints", {})}
    profiles = {"default": default, **sections.pop("profiles", {})}
    return await start_bridge(broker, upstream, endpoints=endpoints, profiles=profiles, **sections)


def posted(upstream: Simulator) -> list[dict[str, Any]]:
    """The requests the proxy sent on to the simulator."""
    return [r.json() for r in list(upstream.received) if "type" not in r.json()]


async def ask(client: Client, connection_id: str, text: str) -> list[dict[str, Any]]:
    await client.command(connection_id, {"action": "ask", "input": text})
    return await client.until(
        lambda m: (
            m.get("type") in ("response.completed", "error")
            or m.get("object") == "response.websocket.error"
        ),
        wait=15,
    )


def deltas(seen: list[dict[str, Any]]) -> str:
    return "".join(m["delta"] for m in seen if m.get("type") == "response.output_text.delta")


async def test_ask_is_answered_and_remembered_by_replay(
    broker: Broker, upstream: Simulator, proxy: LiteLLMProxy, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, upstream, proxy)
    before = len(posted(upstream))
    first = await ask(client, "lite-ask", "Describe tulips.")
    assert first[0]["action"] == "connect"
    assert first[-1]["type"] == "response.completed", first[-3:]
    (message,) = [o for o in first[-1]["response"]["output"] if o["type"] == "message"]
    assert message["content"][0]["text"] == deltas(first) != ""
    second = await ask(client, "lite-ask", "And roses?")
    assert second[-1]["type"] == "response.completed", second[-3:]
    sent = posted(upstream)[before:]
    assert len(sent) == 2
    # store false: the bridge replays the conversation, the proxy passes it on.
    assert "previous_response_id" not in sent[1]
    assert [item["role"] for item in sent[1]["input"]] == ["user", "assistant", "user"]


async def test_send_streams_every_event_in_order(
    broker: Broker, upstream: Simulator, proxy: LiteLLMProxy, start_bridge: Any, client: Client
) -> None:
    await start(start_bridge, broker, upstream, proxy)
    await client.command("lite-send", {"action": "connect"})
    await client.until(lambda m: m.get("action") == "connect")
    event = {"type": "response.create", "model": MODEL, "input": "Hello", "store": False}
    await client.command("lite-send", {"action": "send", "event": event})
    seen = await client.until(lambda m: m.get("type") in ("response.completed", "error"))
    assert seen[0]["action"] == "send"
    events = seen[1:]
    types = [m["type"] for m in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed", events[-3:]
    assert "response.output_text.done" in types
    numbers = [m["sequence_number"] for m in events]
    assert numbers == sorted(set(numbers))  # each once, in order
    await client.command("lite-send", {"action": "close"})
    await client.until(lambda m: m.get("action") == "close")


async def test_a_tool_round(
    broker: Broker, upstream: Simulator, proxy: LiteLLMProxy, start_bridge: Any, client: Client
) -> None:
    await start(
        start_bridge,
        broker,
        upstream,
        proxy,
        tools=TOOLS,
        default={"mqtt_tools": ["set_light", "read_sensor", "chime"]},
    )
    before = len(posted(upstream))
    async with device(broker) as asked:
        seen = await ask_with_tools(client, 'Please call set_light with {"state":"OFF"}')
    assert asked == [("zigbee2mqtt/kitchen/set", {"state": "OFF"})]
    (call,) = tool_calls(seen)
    assert call["status"] == "replied"
    assert seen[-1]["type"] == "response.completed", seen[-3:]
    sent = posted(upstream)[before:]
    assert len(sent) == 2
    assert sent[0]["tools"][0]["name"] in {"set_light", "read_sensor", "chime"}
    assert sent[1]["input"][-1]["type"] == "function_call_output"


async def test_an_unknown_model_and_a_wrong_key(
    broker: Broker,
    upstream: Simulator,
    proxy: LiteLLMProxy,
    start_bridge: Any,
    client: Client,
    tmp_path: Path,
) -> None:
    """LiteLLM answers both with HTTP 400 (a wrong key too: without a database it cannot
    look keys up, and says so); the bridge maps them as it maps any HTTP 400."""
    wrong = tmp_path / "wrong-key"
    wrong.write_text("sk-not-the-master-key-0123456789\n")
    await start(
        start_bridge,
        broker,
        upstream,
        proxy,
        endpoints={
            "wrong": {"base_url": proxy.base_url, "transport": "http", "api_key_file": str(wrong)}
        },
        profiles={"wrong": {"request": {"model": MODEL}, "endpoint": "wrong"}},
    )
    await client.command("lite-err", {"action": "connect"})
    await client.until(lambda m: m.get("action") == "connect")
    event = {"type": "response.create", "model": "no-such-model", "input": "Hi", "store": False}
    await client.command("lite-err", {"action": "send", "event": event})
    (error,) = [m for m in await client.until(lambda m: m.get("type") == "error")][-1:]
    assert error["status"] == 400
    assert error["error"]["type"] == "invalid_request_error"
    assert "no-such-model" in error["error"]["message"]
    await client.command("lite-key", {"action": "connect", "profile": "wrong"})
    refused = await client.until(lambda m: m.get("object") == "response.websocket.error")
    assert refused[-1]["error"]["code"] == "upstream_connect_failed"
    assert refused[-1]["error"]["status"] == 400
    assert "sk-not-the-master-key" not in str(refused)


async def test_a_stored_conversation_continues_by_previous_response_id(
    broker: Broker, upstream: Simulator, proxy: LiteLLMProxy, start_bridge: Any, client: Client
) -> None:
    """store true: the proxy's own response ids (the upstream's, encoded) carry the thread."""
    await start(start_bridge, broker, upstream, proxy, store=True, local={"memory": "server"})
    before = len(posted(upstream))
    first = await ask(client, "lite-store", "My name is Ada.")
    assert first[-1]["type"] == "response.completed", first[-3:]
    second = await ask(client, "lite-store", "What is my name?")
    assert second[-1]["type"] == "response.completed", second[-3:]
    sent = posted(upstream)[before:]
    # The bridge sent the proxy's id; the proxy decoded it to the simulator's own.
    assert sent[1]["previous_response_id"].startswith("resp_")
    assert sent[1]["previous_response_id"] != first[-1]["response"]["id"]
    assert [item["role"] for item in sent[1]["input"]] == ["user"]
    assert sent[1]["store"] is True
