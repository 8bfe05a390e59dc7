"""``run --workers N``: real worker processes under the supervisor, on a real Mosquitto.

Process management only: which processes run, as which instance and client
id, what systemd hears, how they stop and restart (bridge/daemon/workers.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bridge.cli import EXIT_CONFIG
from bridge.cluster.ownership import owner_of
from bridge.config.settings import load_settings
from bridge.daemon.workers import worker_specs
from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client, body
from tests.helpers import SECOND, eventually
from tests.ops_helpers import NotifySocket

PRESENCE = "ai/bridge/instances/+"

# What `run --workers N` reads the config with: every worker is a cluster instance.
AS_WORKERS = {"OPENAI_MQTT_BRIDGE__CLUSTER__ENABLED": "true"}


def write_config(tmp_path: Path, broker: Broker, simulator: Simulator, **mqtt: Any) -> Path:
    path = tmp_path / "bridge.yaml"
    document = {
        "state_dir": str(tmp_path / "state"),
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "client_id": "house-bridge",
            "keepalive": 5,
            **mqtt,
        },
        "openai": {"base_url": simulator.base_url, "close_timeout": 2},
        "shutdown": {"grace_seconds": 5},
        "cluster": {"instance": "house"},
    }
    path.write_text(json.dumps(document))
    return path


class Supervised:
    """``python -m bridge run --config FILE --workers N`` in a process group of its own."""

    def __init__(
        self,
        config: Path,
        workers: int,
        *,
        python: tuple[str, ...] = (sys.executable, "-m", "bridge"),
        cwd: Path | None = None,
        **env: str,
    ) -> None:
        environ = {**os.environ, "OPENAI_API_KEY": KEY, **env}
        for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM"):
            if name not in env:
                environ.pop(name, None)
        self.log = config.with_suffix(".log")
        argv = [*python, "run", "--config", str(config)]
        with self.log.open("wb") as log:  # the workers write here too: no pipe to fill
            self.process = subprocess.Popen(
                [*argv, "--workers", str(workers)],
                env=environ,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def workers(self) -> dict[str, int]:
        """Client id → pid of each live child process (from /proc)."""
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                environ = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) != self.process.pid or fields[0] == "Z":
                continue
            for variable in environ:
                name, _, value = variable.decode(errors="replace").partition("=")
                if name == "OPENAI_MQTT_BRIDGE__MQTT__CLIENT_ID":
                    found[json.loads(value)] = int(entry.name)
        return found

    async def wait(self, seconds: float = 20) -> int:
        return await asyncio.to_thread(self.process.wait, seconds * SECOND)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def finish(self) -> None:
        """Kill whatever is left of the group (after a failed test, or workers a supervisor
        killed by a signal left behind) and reap the supervisor."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10 * SECOND)


@pytest.fixture
def supervised() -> Iterator[list[Supervised]]:
    started: list[Supervised] = []
    yield started
    for each in started:
        each.finish()


async def online(watcher: Client, names: set[str], state: str = "online") -> None:
    """Until every instance in ``names`` has said ``state`` on its presence topic."""
    waiting = set(names)
    while waiting:
        message = await watcher.next(20)
        document = body(message) if message.payload else {}
        if document.get("state") == state:
            waiting.discard(message.topic.value.rsplit("/", 1)[1])


async def offline(watcher: Client, names: set[str]) -> None:
    await online(watcher, names, "offline")


def test_each_worker_is_an_instance_with_its_own_client_id(tmp_path: Path) -> None:
    """Instance <base>-w<i>, client id <client_id>-w<i>; base: cluster.instance or host-id."""
    path = tmp_path / "c.yaml"
    state = tmp_path / "state"
    document = {"mqtt": {"client_id": "b"}, "metrics": {"enabled": True}, "state_dir": str(state)}
    path.write_text(json.dumps(document))
    specs = worker_specs(2, load_settings(path, AS_WORKERS), path)
    assert [spec.instance for spec in specs] == [f"{socket.gethostname()}-b-w{i}" for i in (1, 2)]
    assert specs[1].argv == (sys.executable, "-P", "-m", "bridge", "run", "--config", str(path))
    assert specs[1].overrides == {
        "OPENAI_MQTT_BRIDGE__CLUSTER__ENABLED": "true",
        "OPENAI_MQTT_BRIDGE__CLUSTER__INSTANCE": json.dumps(specs[1].instance),
        "OPENAI_MQTT_BRIDGE__MQTT__CLIENT_ID": '"b-w2"',
        "OPENAI_MQTT_BRIDGE__METRICS__PORT": "9465",  # one port each
        "OPENAI_MQTT_BRIDGE__STATE_DIR": json.dumps(str(state / "w2")),  # its own usage
    }
    # Read back the way a worker reads them: the values are YAML, so quoted.
    settings = load_settings(None, dict(specs[1].overrides))
    assert settings.config.cluster.enabled
    assert settings.config.cluster.instance == specs[1].instance
    assert settings.config.mqtt.client_id == "b-w2"
    assert settings.config.state_dir == state / "w2"
    path.write_text(json.dumps({"cluster": {"instance": "house"}}))
    assert worker_specs(1, load_settings(path, AS_WORKERS), None)[0].argv[-1] == "run"
    assert worker_specs(1, load_settings(path, AS_WORKERS), None)[0].instance == "house-w1"


def test_workers_must_be_a_positive_number(capsys: Any) -> None:
    from bridge.cli import main

    with pytest.raises(SystemExit):
        main(["run", "--workers", "0"])
    assert "--workers" in capsys.readouterr().err


@pytest.mark.integration
async def test_two_workers_restart_after_sigkill_and_stop_on_sigterm(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """Two processes, two instances online; a SIGKILLed one comes back; SIGTERM stops all, 0."""
    notify = NotifySocket()
    try:
        config = write_config(tmp_path, broker, simulator)
        run = Supervised(config, 2, NOTIFY_SOCKET=notify.path)
        supervised.append(run)
        async with Client(broker) as watcher:
            await watcher.subscribe(PRESENCE)
            await online(watcher, {"house-w1", "house-w2"})  # both connected at once: two ids
            workers = run.workers()
            assert sorted(workers) == ["house-bridge-w1", "house-bridge-w2"]
            await notify.until(lambda message: message.startswith("READY=1"), 20)
            os.kill(workers["house-bridge-w1"], signal.SIGKILL)
            await notify.until(lambda message: message == "STATUS=1 of 2 workers ready")
            await notify.until(lambda message: message == "STATUS=2 of 2 workers ready", 20)
            again = run.workers()
            assert sorted(again) == ["house-bridge-w1", "house-bridge-w2"]
            assert again["house-bridge-w1"] != workers["house-bridge-w1"]
            assert again["house-bridge-w2"] == workers["house-bridge-w2"]
            run.process.send_signal(signal.SIGTERM)
            assert await run.wait() == 0, run.output()
            await offline(watcher, {"house-w1", "house-w2"})
    finally:
        notify.close()
    assert run.workers() == {}
    log = run.output()
    assert "w1 was killed by SIGKILL; restarting in" in log
    assert "again: " not in log


@pytest.mark.integration
async def test_a_folder_named_bridge_in_the_working_directory_cannot_stand_in(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """Started from the console script in a directory with a `bridge` folder: workers run."""
    decoy = tmp_path / "bridge"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("")
    (decoy / "__main__.py").write_text("raise SystemExit('the decoy bridge ran')\n")
    console_script = Path(sys.executable).with_name("openai-mqtt-bridge")
    run = Supervised(
        write_config(tmp_path, broker, simulator), 2, python=(str(console_script),), cwd=tmp_path
    )
    supervised.append(run)
    async with Client(broker) as watcher:
        await watcher.subscribe(PRESENCE)
        await online(watcher, {"house-w1", "house-w2"})
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
    assert "the decoy bridge ran" not in run.output()


@pytest.mark.integration
async def test_ctrl_c_reaches_each_worker_once(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """SIGINT to the whole process group (a terminal's Ctrl-C): no worker sees it twice."""
    run = Supervised(write_config(tmp_path, broker, simulator), 2)
    supervised.append(run)
    async with Client(broker) as watcher:
        await watcher.subscribe(PRESENCE)
        await online(watcher, {"house-w1", "house-w2"})
        os.killpg(run.process.pid, signal.SIGINT)
        assert await run.wait() == 0, run.output()
    log = run.output()
    assert log.count("SIGINT: stopping") == 3  # the supervisor and each worker, once
    assert "again: " not in log


@pytest.mark.integration
async def test_systemd_hears_ready_once_from_the_supervisor(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """READY=1 once both workers are ready; their own notifications never reach systemd."""
    notify = NotifySocket()
    try:
        run = Supervised(write_config(tmp_path, broker, simulator), 2, NOTIFY_SOCKET=notify.path)
        supervised.append(run)
        said = await notify.until(lambda message: message.startswith("READY=1"), 20)
        assert said[-1] == "READY=1\nSTATUS=2 of 2 workers ready"
        assert said[:-1] == ["STATUS=1 of 2 workers ready"]
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
        said = notify.drain()
        assert said[0] == "STOPPING=1\nSTATUS=stopping the workers"
        assert all(message.startswith("STATUS=") for message in said[1:])
        assert not any("broker" in message or message == "READY=1" for message in notify.seen)
    finally:
        notify.close()


@pytest.mark.integration
async def test_a_worker_that_must_not_restart_stops_them_all(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """A worker's exit 78 (here: w2's metrics port would be 65536) ends the supervisor with 78."""
    config = write_config(tmp_path, broker, simulator)
    document = json.loads(config.read_text())
    document["metrics"] = {"enabled": True, "port": 65535}
    config.write_text(json.dumps(document))
    run = Supervised(config, 2)
    supervised.append(run)
    assert await run.wait(30) == EXIT_CONFIG, run.output()
    log = run.output()
    assert "w2 exited with 78: no restart; stopping the others" in log
    assert "restarting in" not in log
    assert run.workers() == {}


async def log_shows(run: Supervised, text: str, wait: float = 15) -> None:
    await eventually(lambda: text in run.output(), wait, f"{text!r} in\n{run.output()}")


@pytest.mark.integration
async def test_watchdog_aborts_a_silent_worker_and_keeps_systemd_pinged(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """No broker, no worker pings: each is aborted (and restarted); systemd still hears from us."""
    notify = NotifySocket()
    try:
        usec = str(int(1.0 * SECOND * 1_000_000))  # WatchdogSec=1s: pings every 0.5 s
        run = Supervised(
            write_config(tmp_path, broker, simulator),
            2,
            NOTIFY_SOCKET=notify.path,
            WATCHDOG_USEC=usec,
        )
        supervised.append(run)
        await notify.until(lambda message: message.startswith("READY=1"), 20)
        await asyncio.to_thread(broker.stop)
        await log_shows(run, f"w1: no watchdog ping in {1.0 * SECOND:.1f}s: SIGABRT")
        await log_shows(run, "w1 was killed by SIGABRT; restarting in")
        assert "Fatal Python error: Aborted" in run.output()  # the stacks, for the journal
        assert (await notify.during(1.0)).count("WATCHDOG=1") >= 1
        await asyncio.to_thread(broker.start)
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
    finally:
        notify.close()


@pytest.mark.integration
async def test_a_stopped_worker_whose_ids_were_taken_over_acts_on_none_of_them(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """SIGSTOP the worker holding an id (no watchdog here to kill it): the other worker
    declares it lost and serves the retry; after SIGCONT the stopped one carries out none
    of the asks queued for it meanwhile (issue 21: none done twice, none billed twice)."""
    run = Supervised(write_config(tmp_path, broker, simulator), 2)
    supervised.append(run)
    victim = next(
        f"v-{n}" for n in range(100) if owner_of(f"v-{n}", ["house-w1", "house-w2"]) == "house-w2"
    )
    async with Client(broker) as watcher, Client(broker) as client:
        await watcher.subscribe(PRESENCE)
        await client.subscribe("ai/+/events")
        await online(watcher, {"house-w1", "house-w2"})
        await client.command(victim, {"action": "ask", "input": "Hello", "request_id": "first"})
        await client.until(lambda m: m.get("type") == "response.completed", 30)
        stopped = run.workers()["house-bridge-w2"]
        os.kill(stopped, signal.SIGSTOP)
        try:
            stale = [f"stale-{n}" for n in range(3)]
            for request_id in stale:
                ask = {"action": "ask", "input": "Describe tulips.", "request_id": request_id}
                await client.command(victim, ask)
            notice = await client.until(lambda m: m.get("action") == "disconnected", 30)
            assert notice[-1]["code"] == 1012
            assert "house-w2" in notice[-1]["reason"]
            upstream_before = len(simulator.received)
            while not watcher.received.empty():
                watcher.received.get_nowait()
        finally:
            os.kill(stopped, signal.SIGCONT)
        await online(watcher, {"house-w2"})  # it rejoined
        late = [body(m) for m in await client.quiet(2.0)]
        assert not [m for m in late if m.get("request_id") in stale], late
        assert len(simulator.received) == upstream_before
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
    # The three asks, and any redelivery of them (QoS 1 after the lost link).
    assert re.search(
        r"dropped [3-9] commands that arrived while this instance was away", run.output()
    )


@pytest.mark.integration
async def test_sighup_reloads_every_worker_and_systemd_hears_one_reload(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """`systemctl reload`: each worker reloads; RELOADING=1, then READY=1 once both have."""
    notify = NotifySocket()
    try:
        config = write_config(tmp_path, broker, simulator)
        run = Supervised(config, 2, NOTIFY_SOCKET=notify.path)
        supervised.append(run)
        await notify.until(lambda message: message.startswith("READY=1"), 20)
        document = json.loads(config.read_text())
        document["profiles"] = {"default": {}, "pirate": {"request": {"model": "m-pirate"}}}
        config.write_text(json.dumps(document))
        run.process.send_signal(signal.SIGHUP)
        said = await notify.until(lambda message: message == "READY=1", 20)
        assert said[0].startswith("RELOADING=1\nMONOTONIC_USEC=")
        assert run.output().count("config reloaded from") == 2  # w1 and w2, before READY=1
        async with Client(broker) as client:
            await client.subscribe("ai/c1/events")
            await client.command("c1", {"action": "ask", "input": "Ahoy?", "profile": "pirate"})
            seen = await client.until(lambda m: m.get("type") == "response.completed", 20)
            assert seen[0]["profile"] == "pirate"
        assert run.workers().keys() == {"house-bridge-w1", "house-bridge-w2"}  # none restarted
        assert "restarting in" not in run.output()
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
    finally:
        notify.close()


@pytest.mark.integration
async def test_a_stopped_worker_is_continued_then_aborted_and_writes_its_stacks(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """SIGSTOP (a frozen worker): SIGCONT before SIGABRT, so it dies of SIGABRT with its
    stacks written, not of the SIGKILL twice WatchdogSec later with none."""
    notify = NotifySocket()
    try:
        usec = str(int(1.0 * SECOND * 1_000_000))
        run = Supervised(
            write_config(tmp_path, broker, simulator),
            2,
            NOTIFY_SOCKET=notify.path,
            WATCHDOG_USEC=usec,
        )
        supervised.append(run)
        await notify.until(lambda message: message.startswith("READY=1"), 20)
        os.kill(run.workers()["house-bridge-w1"], signal.SIGSTOP)
        await log_shows(run, "w1 was killed by SIGABRT; restarting in")
        log = run.output()
        assert log.count("Fatal Python error: Aborted") == 1  # w1's; w2 went on
        assert "SIGKILL" not in log
        run.process.send_signal(signal.SIGTERM)
        assert await run.wait() == 0, run.output()
    finally:
        notify.close()


@pytest.mark.integration
async def test_the_supervisor_writes_its_own_stacks_on_sigabrt(
    tmp_path: Path, broker: Broker, simulator: Simulator, supervised: list[Supervised]
) -> None:
    """What systemd's watchdog sends the main process: faulthandler is on in the supervisor."""
    notify = NotifySocket()
    try:
        run = Supervised(write_config(tmp_path, broker, simulator), 1, NOTIFY_SOCKET=notify.path)
        supervised.append(run)
        await notify.until(lambda message: message.startswith("READY=1"), 20)
        run.process.send_signal(signal.SIGABRT)
        assert await run.wait() == -signal.SIGABRT
        dump = run.output().partition("Fatal Python error: Aborted")[2]
        assert "bridge/cli.py" in dump  # the supervisor's main thread, in asyncio.run
    finally:
        notify.close()
