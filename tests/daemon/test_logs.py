"""Structured logs: text for a terminal, JSON on request, journald priorities, no secrets."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

SCRIPT = """
import logging, sys
from bridge.daemon import logs
logs.setup("DEBUG", sys.argv[1])
log = logging.getLogger("bridge.daemon.service")
log.debug("[%s] < command %s", "kitchen-1", b'{"action":"connect"}')
log.info("[%s] upstream open (%.0f ms)", "kitchen-1", 12.3)
log.warning("broker %s:%d unreachable; retrying in %.1fs", "127.0.0.1", 1883, 0.5)
try:
    1 / 0
except ZeroDivisionError:
    log.error("a bug", exc_info=True)
"""


def run_script(fmt: str, *, stderr_file: Path | None = None, journal: bool = False) -> str:
    """Log four records from a fresh process; what it wrote to stderr."""
    env = {name: value for name, value in os.environ.items() if name != "JOURNAL_STREAM"}
    with open(stderr_file or os.devnull, "wb") as sink:
        if journal and stderr_file is not None:
            stat = os.fstat(sink.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        elif journal:
            env["JOURNAL_STREAM"] = "1:2"  # names a stream that is not our stderr
        result = subprocess.run(
            [sys.executable, "-c", SCRIPT, fmt],
            env=env,
            stdout=subprocess.PIPE,
            stderr=sink if stderr_file else subprocess.PIPE,
            timeout=30 * SECOND,
            check=True,
        )
    return stderr_file.read_text() if stderr_file else result.stderr.decode()


def test_json_is_one_object_per_line_with_the_documented_fields() -> None:
    """format json: ts, level, logger, message, connection_id (when there is one), exception."""
    records = [json.loads(line) for line in run_script("json").splitlines()]
    assert [record["level"] for record in records] == ["DEBUG", "INFO", "WARNING", "ERROR"]
    for record in records:
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["ts"])
        assert record["logger"] == "bridge.daemon.service"
    debug, info, warning, error = records
    assert info["connection_id"] == "kitchen-1"
    assert info["message"] == "upstream open (12 ms)"
    assert debug["connection_id"] == "kitchen-1"
    assert "connection_id" not in warning
    assert warning["message"] == "broker 127.0.0.1:1883 unreachable; retrying in 0.5s"
    assert error["message"] == "a bug"
    assert "ZeroDivisionError" in error["exception"]


def test_text_is_one_line_per_record_with_a_timestamp() -> None:
    """format text (the default): a timestamp, the level, the logger, the message."""
    lines = run_script("text").splitlines()
    assert re.match(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO bridge.daemon.service: \[kitchen-1\] ", lines[1]
    )


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_under_journald_lines_carry_the_priority_and_no_timestamp(tmp_path: Path, fmt: str) -> None:
    """When stderr is the journal, each line starts with <7>, <6>, <4>, <3> for journald: every
    line of a record, so a traceback is at err with its message (`journalctl -p err`)."""
    out = run_script(fmt, stderr_file=tmp_path / "journal", journal=True)
    lines = out.splitlines()
    priorities = [line[:3] for line in lines]
    assert priorities[:4] == ["<7>", "<6>", "<4>", "<3>"]
    assert set(priorities[3:]) == {"<3>"}
    assert any(line.startswith("<3>ZeroDivisionError") for line in lines) == (fmt == "text")
    firsts = lines[:4]
    if fmt == "text":
        assert firsts[1] == "<6>INFO bridge.daemon.service: [kitchen-1] upstream open (12 ms)"
    else:
        assert json.loads(firsts[1][3:])["message"] == "upstream open (12 ms)"


def test_journal_stream_of_another_file_is_not_the_journal(tmp_path: Path) -> None:
    """JOURNAL_STREAM inherited by a process whose stderr goes elsewhere changes nothing."""
    out = run_script("text", stderr_file=tmp_path / "log", journal=False)
    assert not out.startswith("<")
    out = run_script("text", journal=True)
    assert not out.startswith("<")
    assert re.match(r"\d{4}-", out)


@pytest.mark.integration
async def test_the_daemon_logs_json_without_secrets(
    tmp_path: Path, broker: Broker, simulator: Simulator
) -> None:
    """The real daemon at DEBUG in JSON: every line parses, per-connection lines carry the id."""
    config = daemon_config(
        tmp_path,
        {"host": broker.host, "port": broker.port, "password": "pw-canary-in-logs"},
        openai={"base_url": simulator.base_url},
        logging={"level": "DEBUG", "format": "json"},
    )
    process = spawn_daemon(config)
    try:
        async with Client(broker) as client:
            await client.subscribe("ai/bridge/state", "ai/+/events")
            while (await client.next(15)).payload != b"online":
                pass
            await client.command("log-1", {"action": "connect"})
            await client.until(lambda m: m.get("action") == "connect")
            await client.command("log-1", {"action": "close"})
            await client.until(lambda m: m.get("action") == "close")
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 15 * SECOND)
    finally:
        code, stderr = finish(process)
    assert code == 0, stderr
    records = [json.loads(line) for line in stderr.splitlines()]
    assert {"DEBUG", "INFO"} <= {record["level"] for record in records}
    opened = [r for r in records if r["message"].startswith("upstream open")]
    assert [r.get("connection_id") for r in opened] == ["log-1"]
    assert KEY not in stderr
    assert "pw-canary-in-logs" not in stderr


FAULT_SCRIPT = """
import faulthandler, os, sys
from bridge.daemon import logs
faulthandler.enable(logs.fault_file(sys.argv[1]))
where = logs.fault_file(sys.argv[1])
print("fault file:", "stderr" if where is sys.stderr else "stream", flush=True)
os.abort()
"""


@pytest.mark.parametrize("journal", [True, False])
def test_a_crash_dump_goes_to_a_journal_stream_of_its_own_at_err(
    tmp_path: Path, journal: bool
) -> None:
    """faulthandler's dump cannot carry <3>: under journald it goes to a stream opened at
    priority err (sd_journal_stream_fd's protocol), elsewhere to stderr."""
    path = str(tmp_path / "stdout")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen()
    server.settimeout(30 * SECOND)
    stderr_file = tmp_path / "stderr"
    env = {name: value for name, value in os.environ.items() if name != "JOURNAL_STREAM"}
    with stderr_file.open("wb") as sink:
        if journal:
            stat = os.fstat(sink.fileno())
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        process = subprocess.Popen(
            [sys.executable, "-c", FAULT_SCRIPT, path], env=env, stdout=subprocess.PIPE, stderr=sink
        )
        try:
            received = []
            for _ in range(2 if journal else 0):  # the script asks twice
                stream, _address = server.accept()
                with stream, stream.makefile("rb") as reader:
                    received.append(reader.read().decode())
            out, _ = process.communicate(timeout=30 * SECOND)
        finally:
            server.close()
            if process.poll() is None:
                process.kill()
    assert process.returncode == -signal.SIGABRT
    dump = received[0] if journal else stderr_file.read_text()
    assert out.decode() == f"fault file: {'stream' if journal else 'stderr'}\n"
    if journal:
        header, _, dump = dump.partition("0\n0\n0\n0\n")
        assert header == "openai-mqtt-bridge\n\n3\n"  # identifier, no unit, priority err
        assert "Fatal Python error" not in stderr_file.read_text()
    assert dump.startswith("Fatal Python error: Aborted")
    assert "Current thread" in dump
