"""Prometheus metrics: off by default; when on, every documented metric moves as it should."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.config.settings import load_settings
from bridge.daemon.service import Service
from bridge.errors import ConfigError
from bridge.ops.operations import Operations
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client, bridge_settings
from tests.helpers import SECOND, free_port
from tests.ops_helpers import OpsBridge

CREATE = {"type": "response.create", "model": "gpt-5.4-nano", "input": "Name three tulips."}
M = "openai_mqtt_bridge_"


async def http_get(port: int, path: str = "/metrics") -> tuple[str, str]:
    """The status line and body of a GET to 127.0.0.1:port."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    async with asyncio.timeout(5 * SECOND):
        response = await reader.read()
    writer.close()
    head, _, text = response.decode().partition("\r\n\r\n")
    return head.splitlines()[0], text


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample as {(name, sorted labels): value}."""
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((M + name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_are_off_by_default(tmp_path: Path) -> None:
    """Without metrics.enabled nothing is created, imported into the hot path, or served."""
    settings = load_settings(None, {})
    assert settings.config.metrics.enabled is False
    operations = Operations(settings, {})
    Service(settings, observer=operations)
    assert operations.metrics is None
    assert operations.publish_latency is None  # what the service hands its link: not timed


@pytest.mark.integration
async def test_metrics_count_commands_events_tokens_closes_and_latency(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """One conversation moves every counter; gauges read the live values."""
    port = free_port()
    settings = bridge_settings(broker, simulator, tmp_path, metrics={"enabled": True, "port": port})
    async with OpsBridge(settings), Client(broker) as client:
        await client.subscribe("ai/+/events")
        await client.command("m1", {"action": "connect"})
        await client.until(lambda m: m.get("action") == "connect")
        status, text = await http_get(port)
        assert status == "HTTP/1.1 200 OK"
        during = samples(text)
        assert value(during, "connections") == 1
        assert value(during, "broker_connected") == 1

        await client.command("m1", {"action": "send", "event": CREATE})
        events = await client.until(lambda m: m.get("type") == "response.completed")
        usage = events[-1]["response"]["usage"]
        await client.command("nobody", {"action": "close"})
        await client.until(lambda m: m.get("object") == "response.websocket.error")
        await client.command("m1", {"action": "close"})
        await client.until(lambda m: m.get("action") == "close")
        _, text = await http_get(port)
    found = samples(text)
    relayed = sum(1 for event in events if "type" in event)
    assert value(found, "commands_total", action="connect", result="ok") == 1
    assert value(found, "commands_total", action="send", result="ok") == 1
    assert value(found, "commands_total", action="close", result="ok") == 1
    assert value(found, "commands_total", action="close", result="not_open") == 1
    assert value(found, "events_relayed_total") == relayed
    assert value(found, "responses_completed_total") == 1
    assert value(found, "tokens_total", kind="input") == usage["input_tokens"]
    assert value(found, "tokens_total", kind="output") == usage["output_tokens"]
    assert value(found, "upstream_closes_total", code="1000") == 1
    assert value(found, "connections") == 0
    assert value(found, "publish_latency_seconds_count") >= relayed
    assert value(found, "publish_latency_seconds_sum") > 0
    assert (M + "buffer_messages", ()) in found
    assert (M + "buffer_bytes", ()) in found
    assert value(found, "broker_connects_total") == 1


@pytest.mark.integration
async def test_metrics_endpoint_serves_only_metrics(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """/metrics answers; other paths are 404, other methods 405."""
    port = free_port()
    settings = bridge_settings(broker, simulator, tmp_path, metrics={"enabled": True, "port": port})
    async with OpsBridge(settings):
        assert (await http_get(port, "/nope"))[0] == "HTTP/1.1 404 Not Found"
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /metrics HTTP/1.1\r\n\r\n")
        async with asyncio.timeout(5 * SECOND):
            assert (await reader.readline()).startswith(b"HTTP/1.1 405")
        writer.close()


@pytest.mark.integration
async def test_a_taken_metrics_port_is_a_config_error(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """If metrics.port is taken, the bridge says so, naming the key, before connecting."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        settings = bridge_settings(
            broker, simulator, tmp_path, metrics={"enabled": True, "port": port}
        )
        with pytest.raises(ConfigError) as info:
            async with OpsBridge(settings):
                pass
    assert info.value.path == "metrics.port"
    assert f"127.0.0.1:{port}" in info.value.message


def test_tokens_by_connection_id_and_model_have_bounded_labels() -> None:
    """Ids are the clients' choice: past the first 100, they share the label "other"."""
    from bridge.ops.metrics import MAX_ID_LABELS, Metrics
    from bridge.protocol.guardrails import Tokens

    metrics = Metrics()
    for number in range(MAX_ID_LABELS + 50):
        metrics.completed(Tokens(1, 2, 3), f"id-{number}", "gpt-5.4-nano")
    metrics.completed(Tokens(1, 2, 3), "id-0", "gpt-5.4-mini")
    samples = {
        (sample.labels["connection_id"], sample.labels["model"]): sample.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        if family.name == "openai_mqtt_bridge_connection_tokens"
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    assert samples[("id-0", "gpt-5.4-nano")] == 3
    assert samples[("id-0", "gpt-5.4-mini")] == 3
    assert samples[("other", "gpt-5.4-nano")] == 50 * 3
    assert len({connection_id for connection_id, _ in samples}) == MAX_ID_LABELS + 1
