"""The command line, including the daemon as a real process: signals, will, exit codes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import EXIT_CONFIG, main
from bridge_tools.local_broker import free_port
from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client, body
from tests.helpers import SECOND

CREATE = {"type": "response.create", "model": "m", "input": "Tell me about tulips."}


def test_check_config_prints_redacted_config(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config validates, prints the effective config, and never the key."""
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: 1884\n")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "port: 1884" in out
    assert "websocket_url: wss://api.openai.com/v1/responses" in out
    assert KEY not in out


def test_check_config_warns_of_keys_that_act_on_nothing(tmp_path: Path, capsys: Any) -> None:
    """A key set while its feature is off: a WARNING naming it and what would make it act;
    none for a config whose every key acts."""
    path = tmp_path / "c.yaml"
    path.write_text(
        "mqtt:\n  protocol: '3.1.1'\n  response_topics: [replies/#]\n"
        "  tls:\n    ca_file: /etc/ssl/ca.pem\n"
        "metrics:\n  port: 9999\n"
        "limits:\n  budgets:\n    timezone: Europe/Berlin\n"
        "sessions:\n  max_tool_calls: 4\n"
    )
    assert main(["check-config", "--config", str(path)]) == 0
    warnings = capsys.readouterr().err.strip().splitlines()
    assert warnings == [
        "WARNING: mqtt.tls.ca_file has no effect: set mqtt.tls.enabled: true to use TLS",
        "WARNING: mqtt.response_topics has no effect: MQTT 3.1.1 has no Response Topic "
        '(set mqtt.protocol: "5")',
        "WARNING: metrics.port has no effect: set metrics.enabled: true to serve metrics",
        "WARNING: limits.budgets.timezone has no effect: no daily budget is set "
        "(limits.budgets or a profile's limits.budgets)",
        "WARNING: sessions.max_tool_calls has no effect: no `tools` are configured",
    ]
    path.write_text(
        "mqtt:\n  protocol: '5'\n  response_topics: [replies/#]\n"
        "metrics:\n  enabled: true\n  port: 9999\n"
        "limits:\n  budgets:\n    timezone: Europe/Berlin\n    tokens_per_day: 100\n"
        # MCP servers' calls run in the tool loop: its limits act on them.
        "mcp_servers:\n  home:\n    url: http://127.0.0.1:8123/api/mcp\n"
        "sessions:\n  max_tool_rounds: 3\n"
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert capsys.readouterr().err == ""


def test_check_config_error_is_one_line(tmp_path: Path, capsys: Any) -> None:
    """A bad key exits 78 with one line naming the key."""
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  port: nope\n")
    assert main(["check-config", "--config", str(path)]) == EXIT_CONFIG
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("config error: mqtt.port:")


def write_config(tmp_path: Path, broker: Broker, simulator: Simulator) -> Path:
    path = tmp_path / "bridge.yaml"
    path.write_text(
        json.dumps(
            {
                "state_dir": str(tmp_path / "state"),
                "mqtt": {
                    "host": broker.host,
                    "port": broker.port,
                    "client_id": "cli-bridge",
                    "keepalive": 5,
                },
                "openai": {"base_url": simulator.base_url, "close_timeout": 2},
                "shutdown": {"grace_seconds": 5},
                "logging": {"level": "DEBUG"},
            }
        )
    )
    return path


def spawn(config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "OPENAI_API_KEY": KEY}
    env.pop("NOTIFY_SOCKET", None)
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "run", "--config", str(config)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


async def wait_state(watcher: Client, expected: bytes, wait: float = 15) -> None:
    while (await watcher.next(wait)).payload != expected:
        pass


@pytest.mark.integration
async def test_sigterm_stops_cleanly(tmp_path: Path, broker: Broker, simulator: Simulator) -> None:
    """SIGTERM mid-stream: close 1001 upstream, close ack, offline, exit 0 in bounded time."""
    process = spawn(write_config(tmp_path, broker, simulator))
    try:
        async with Client(broker) as watcher:
            await watcher.subscribe("ai/bridge/state", "ai/+/events")
            await wait_state(watcher, b"online")
            await watcher.command("c1", {"action": "connect"})
            await watcher.command("c1", {"action": "send", "event": CREATE})
            await watcher.until(lambda m: m.get("type") == "response.created")
            started = time.monotonic()
            process.send_signal(signal.SIGTERM)
            rest = []
            while True:
                message = await watcher.next(15)
                if message.topic.value == "ai/bridge/state":
                    assert message.payload == b"offline"
                    break
                rest.append(body(message))
            code = await asyncio.to_thread(process.wait, 15 * SECOND)
            elapsed = time.monotonic() - started
    finally:
        if process.poll() is None:
            process.kill()
        stdout, stderr = process.communicate()
    assert code == 0, stderr.decode()
    assert elapsed < 10 * SECOND
    assert rest[-1] == {
        "object": "response.websocket.connection",
        "action": "close",
        "connection_id": "c1",
        "code": 1001,
        "reason": "bridge shutting down",
    }
    assert [close.code for close in simulator.closes] == [1001]
    assert KEY.encode() not in stdout + stderr
    assert b"DEBUG" in stderr  # the log was as verbose as it gets, and still clean


@pytest.mark.integration
async def test_sigkill_leaves_offline_will_and_restart_is_clean(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """After SIGKILL the will says offline; a restart says online with no stale state."""
    config = write_config(tmp_path, broker, simulator)
    process = spawn(config)
    try:
        async with Client(broker) as watcher:
            await watcher.subscribe("ai/bridge/state", "ai/+/events")
            await wait_state(watcher, b"online")
            await watcher.command("c1", {"action": "connect"})
            assert (await watcher.next_json())["action"] == "connect"
            process.kill()
            await asyncio.to_thread(process.communicate, None, 10 * SECOND)
            await wait_state(watcher, b"offline")  # the broker sends the will after keepalive
            process = spawn(config)
            await wait_state(watcher, b"online")
            await watcher.command("c1", {"action": "send", "event": CREATE})
            assert (await watcher.next_json())["error"]["code"] == "not_open"
            await watcher.command("c1", {"action": "connect"})
            assert (await watcher.next_json())["action"] == "connect"
    finally:
        process.terminate()
        process.communicate(timeout=15 * SECOND)


def test_bad_config_exits_78_without_starting(tmp_path: Path) -> None:
    """`run` with a bad config exits 78 (systemd does not restart-loop on it)."""
    path = tmp_path / "c.yaml"
    path.write_text("mqtt:\n  qos: 7\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "run", "--config", str(path)],
        capture_output=True,
        timeout=30 * SECOND,
        check=False,
    )
    assert result.returncode == 78
    assert b"mqtt.qos" in result.stderr


def spawn_simulator(port: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "simulate", "--port", str(port), "--api-key", KEY],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


@pytest.mark.integration
async def test_second_sigterm_during_a_stalled_close_still_says_offline(
    tmp_path: Path, broker: Broker
) -> None:
    """SIGTERM, the upstream never answers the close, SIGTERM again: offline, exit at once."""
    port = free_port()
    upstream = spawn_simulator(port)
    config = tmp_path / "bridge.yaml"
    config.write_text(
        json.dumps(
            {
                "state_dir": str(tmp_path / "state"),
                # A will would come after 1.5 keepalives (90 s): this offline is the bridge's.
                "mqtt": {"host": broker.host, "port": broker.port, "keepalive": 60},
                "openai": {"base_url": f"http://127.0.0.1:{port}/v1", "close_timeout": 60},
                "shutdown": {"grace_seconds": 60},
            }
        )
    )
    process = spawn(config)
    try:
        async with Client(broker) as watcher:
            await watcher.subscribe("ai/bridge/state", "ai/+/events")
            await wait_state(watcher, b"online")
            for _ in range(50):  # the simulator process may still be starting
                await watcher.command("c1", {"action": "connect"})
                answer = await watcher.next_json()
                if answer["action"] == "connect" and "error" not in answer:
                    break
                await asyncio.sleep(0.1 * SECOND)
            upstream.send_signal(signal.SIGSTOP)  # it will never answer the close
            process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.5 * SECOND)  # a negative check: it does not stop yet
            assert process.poll() is None  # waiting for the close handshake
            process.send_signal(signal.SIGTERM)
            await wait_state(watcher, b"offline", 15)
            code = await asyncio.to_thread(process.wait, 15 * SECOND)
    finally:
        upstream.send_signal(signal.SIGCONT)
        upstream.kill()
        upstream.wait()
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert code == 0, stderr.decode()
    assert b"again: stopping without grace" in stderr


@pytest.mark.integration
async def test_sighup_reloads_and_keeps_the_open_connection(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """SIGHUP (systemctl reload, scripts) reloads the config; the open connection stays
    (tests/daemon/test_reload.py has what a reload changes)."""
    process = spawn(write_config(tmp_path, broker, simulator))
    try:
        async with Client(broker) as watcher:
            await watcher.subscribe("ai/bridge/state", "ai/+/events")
            await wait_state(watcher, b"online")
            await watcher.command("c1", {"action": "connect"})
            assert (await watcher.next_json())["action"] == "connect"
            process.send_signal(signal.SIGHUP)
            await watcher.command("c1", {"action": "send", "event": CREATE})
            seen = await watcher.until(lambda m: m.get("type") == "response.completed")
            assert seen[0]["action"] == "send"
            assert process.poll() is None
            process.send_signal(signal.SIGTERM)
            closing = await watcher.until(lambda m: m.get("action") == "close")
            assert closing[-1]["code"] == 1001
            code = await asyncio.to_thread(process.wait, 15 * SECOND)
    finally:
        if process.poll() is None:
            process.kill()
        _, stderr = process.communicate()
    assert code == 0
    assert b"config reloaded from" in stderr
    assert b"nothing that applies live changed" in stderr


def test_the_daemon_imports_no_developer_tools() -> None:
    """`run` loads the daemon and its operations, never the simulator, demo or local broker."""
    probe = (
        "import sys, bridge.cli, bridge.daemon.service, bridge.ops.operations; "
        "print(sorted(m for m in sys.modules if m.startswith('bridge_tools')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, check=True, timeout=30 * SECOND
    )
    assert result.stdout.strip() == b"[]"
