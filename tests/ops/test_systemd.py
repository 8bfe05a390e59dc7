"""systemd: the notify protocol spoken to a socket the test owns, the watchdog, the unit file."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge import cli
from bridge.ops import systemd
from bridge_tools.simulator import Simulator
from tests.conftest import Broker, Client
from tests.helpers import SECOND, require
from tests.ops_helpers import NotifySocket, daemon_config, finish, spawn_daemon

UNIT = Path(__file__).parents[2] / "systemd" / "openai-mqtt-bridge.service"


@pytest.fixture
def notify_socket() -> Iterator[NotifySocket]:
    sock = NotifySocket()
    yield sock
    sock.close()


def pings(messages: list[str]) -> int:
    return sum(message == "WATCHDOG=1" for message in messages)


@pytest.mark.integration
async def test_ready_status_watchdog_and_stopping(
    tmp_path: Path, broker: Broker, simulator: Simulator, notify_socket: NotifySocket
) -> None:
    """READY=1 only once the broker is connected; pings only while it is; STOPPING=1 on TERM."""
    await asyncio.to_thread(broker.stop)
    config = daemon_config(
        tmp_path,
        {"host": broker.host, "port": broker.port},
        openai={"base_url": simulator.base_url},
    )
    watchdog_usec = str(int(0.4 * SECOND * 1_000_000))  # a ping every 0.2 s
    process = spawn_daemon(config, NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC=watchdog_usec)
    try:
        # No broker yet: the daemon says what it is doing, but not that it is ready.
        early = await notify_socket.until(lambda m: m.startswith("STATUS=connecting"))
        early += await notify_socket.during(1.0)
        assert not any("READY=1" in m for m in early)
        assert pings(early) == 0

        await asyncio.to_thread(broker.start)
        # The status comes with READY=1: `systemctl enable --now` returns with it shown.
        await notify_socket.until(
            lambda m: m == "READY=1\nSTATUS=broker connected; 0 connections open"
        )
        assert pings(await notify_socket.during(1.0)) >= 2  # of 5, allowing for a busy machine

        async with Client(broker) as client:
            await client.subscribe("ai/+/events")
            await client.command("c1", {"action": "connect"})
            await client.until(lambda m: m.get("action") == "connect")  # open, and stays so
            await notify_socket.until(lambda m: m == "STATUS=broker connected; 1 connection open")

        # The broker goes away: the pings stop, and systemd would restart a bridge left so.
        await asyncio.to_thread(broker.stop)
        await notify_socket.until(lambda m: m.startswith("STATUS=broker unreachable"))
        assert pings(await notify_socket.during(1.0)) == 0

        await asyncio.to_thread(broker.start)
        back = await notify_socket.until(lambda m: m.startswith("STATUS=broker connected"))
        back += await notify_socket.during(1.0)
        assert pings(back) >= 2
        assert not any("READY=1" in m for m in back)  # ready is said once

        process.send_signal(signal.SIGTERM)
        stopping = await notify_socket.until(lambda m: "STOPPING=1" in m)
        assert stopping[-1].splitlines()[0] == "STOPPING=1"
        code = await asyncio.to_thread(process.wait, 15 * SECOND)
    finally:
        code, stderr = finish(process)
    assert code == cli.EXIT_OK, stderr


def test_no_notify_socket_is_a_no_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Outside systemd (or with the socket gone) notify says False and never raises."""
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "gone" / "notify"))
    assert systemd.notify("READY=1") is False


def test_watchdog_interval_is_half_of_watchdog_sec() -> None:
    """WATCHDOG_USEC → half of it in seconds; another process's WATCHDOG_PID means not us."""
    assert systemd.watchdog_interval({}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "0"}) is None
    assert systemd.watchdog_interval({"WATCHDOG_USEC": "junk"}) is None
    mine = {"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}
    assert systemd.watchdog_interval(mine) == 1.0
    assert systemd.watchdog_interval({**mine, "WATCHDOG_PID": "1"}) is None


async def test_watchdog_pings_only_while_healthy_and_the_loop_keeps_time(
    monkeypatch: pytest.MonkeyPatch, notify_socket: NotifySocket, caplog: pytest.LogCaptureFixture
) -> None:
    """Pings stop while the link is down, and a blocked event loop costs its ping."""
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    healthy = True
    interval = 0.2 * SECOND
    task = asyncio.create_task(systemd.watchdog(interval, lambda: healthy))
    try:
        assert pings(await notify_socket.during(1.1)) >= 3
        healthy = False
        await asyncio.sleep(interval * 1.5)
        assert pings(await notify_socket.during(1.0)) == 0
        healthy = True
        assert pings(await notify_socket.during(0.7)) >= 2

        with caplog.at_level(logging.WARNING, logger="bridge.ops.systemd"):
            notify_socket.drain()
            time.sleep(interval * 3)  # noqa: ASYNC251 (the point: the event loop is stuck)
            after_block = await notify_socket.during(0.15)
        assert pings(after_block) == 0
        assert any("event loop was blocked" in r.getMessage() for r in caplog.records)
        assert pings(await notify_socket.during(0.7)) >= 2  # and it recovers
    finally:
        task.cancel()


def unit_settings() -> dict[str, list[str]]:
    """The unit file's assignments (a key may repeat; ``Key=`` with nothing is kept)."""
    settings: dict[str, list[str]] = {}
    for raw in UNIT.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def test_unit_file_is_notify_hardened_and_does_not_restart_loop() -> None:
    """The unit has notify + watchdog, the hardening, credentials, and no restart on 77/78."""
    unit = unit_settings()
    one = {key: values[-1] for key, values in unit.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert re.fullmatch(r"\d+s?", one["WatchdogSec"])
    assert one["Restart"] == "on-failure"
    assert one["ExecReload"] == """/bin/sh -c 'kill -HUP "$MAINPID"'"""  # reload.py's SIGHUP
    assert one["DynamicUser"] == "yes"
    for key in (
        "NoNewPrivileges",
        "ProtectHome",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "ProtectKernelModules",
        "ProtectControlGroups",
        "RestrictNamespaces",
        "RestrictSUIDSGID",
        "LockPersonality",
        "MemoryDenyWriteExecute",
    ):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict"
    # The one writable place: today's token usage (budgets survive restarts).
    assert one["StateDirectory"] == "openai-mqtt-bridge"
    assert one["StateDirectoryMode"] == "0700"
    assert one["CapabilityBoundingSet"] == ""
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    prevented = set(one["RestartPreventExitStatus"].split())
    assert {str(cli.EXIT_CONFIG), str(cli.EXIT_REFUSED), "243"} <= prevented  # 243: no credential
    assert str(cli.EXIT_FAILURE) not in prevented
    assert unit["LoadCredential"] == ["openai_api_key:/etc/openai-mqtt-bridge/openai_api_key"]
    text = UNIT.read_text()
    for optional in ("mqtt_password", "mqtt_tls_key"):  # a listed file must exist: opt-in
        assert f"# LoadCredential={optional}:/etc/openai-mqtt-bridge/{optional}" in text
    assert "Environment" not in text  # secrets never travel in the environment


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd-analyze verify has nothing to say about the unit (ExecStart made to exist)."""
    analyze = require("systemd-analyze", "apt-get install systemd")
    text = UNIT.read_text()
    exec_start = re.search(r"^ExecStart=(\S+)", text, re.MULTILINE)
    assert exec_start is not None
    true = shutil.which("true") or "/bin/true"
    copy = tmp_path / UNIT.name
    copy.write_text(text.replace(exec_start.group(1), true, 1))
    for credential in re.findall(r"^LoadCredential=\w+:(\S+)", text, re.MULTILINE):
        assert credential.startswith("/etc/openai-mqtt-bridge/")
    result = subprocess.run(
        [analyze, "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60 * SECOND,
        check=False,
    )
    complaints = [
        line for line in (result.stdout + result.stderr).splitlines() if UNIT.name in line
    ]
    assert result.returncode == 0, result.stderr
    assert complaints == []
