"""``run --workers N``: N bridge instances as worker processes of one supervisor, on one host.

Worker ``w<i>`` (i = 1..N) is ``python -P -m bridge run [--config FILE]`` (``-P``:
the working directory is not put on the import path, so a folder named
``bridge`` there cannot stand in for the package; the directory the
supervisor's own ``bridge`` came from goes on ``PYTHONPATH`` when only the
working directory had it) with the environment overrides
``OPENAI_MQTT_BRIDGE__CLUSTER__ENABLED=true``,
``..._CLUSTER__INSTANCE=<base>-w<i>`` (``<base>``: ``cluster.instance``, or
``<host name>-<mqtt.client_id>``), ``..._MQTT__CLIENT_ID=<client_id>-w<i>`` and,
with ``metrics.enabled``, ``..._METRICS__PORT=<port + i - 1>``. Their stdout
and stderr are the supervisor's.

- **Stopping.** SIGTERM or SIGINT reaches every worker once; the supervisor
  waits for them all and exits 0 when all stopped cleanly, else 1 (SIGKILL
  ``shutdown.grace_seconds`` + 10 s on). A worker may have the signal already
  (systemd's default ``KillMode=`` signals the whole control group, Ctrl-C
  the whole process group): each says ``STOPPING=1`` (below), and the signal
  is passed on a quarter second later only to those that have not, as a
  second one would cut their grace short. A second signal goes to all.
- **Restarts.** A worker that exits on its own starts again after a backoff
  (1 s doubling to 30 s, reset by a run that got ``READY``); one that exits
  77 or 78 (broker refused us, bad config) does not: the others are stopped
  and the supervisor exits with that code.
- **systemd.** Each worker's ``NOTIFY_SOCKET`` is a datagram socket of the
  supervisor's. The supervisor sends ``READY=1`` once every worker has sent
  its own (broker connected, commands subscribed), ``STATUS=k of N workers
  ready`` on each change, and ``STOPPING=1``. With ``WatchdogSec=`` the workers
  ping the supervisor as they would systemd (only while their broker link is
  up); one silent for a whole ``WatchdogSec`` gets SIGABRT (its stacks go to
  stderr), SIGKILL if that is not enough, and is restarted; the supervisor
  pings systemd while its own event loop keeps time. A worker found stopped
  (SIGSTOP) gets SIGCONT first, so it can write its stacks.
- **Reload.** SIGHUP (``systemctl reload``) goes to every worker, which reloads
  its config (bridge/daemon/reload.py); systemd hears ``RELOADING=1``, then
  ``READY=1`` once each has said ``READY=1`` again (or :data:`RELOAD_WAIT` on).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bridge.backoff import backoff_delays
from bridge.config.settings import Settings, instance_name
from bridge.daemon.usage_store import default_state_dir
from bridge.ops import systemd

logger = logging.getLogger(__name__)

ENV: Final = "OPENAI_MQTT_BRIDGE__"
SYSTEMD_VARIABLES: Final = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
SIGNAL_SETTLE: Final = 0.25  # seconds a stop signal sent to the workers themselves may take
KILL_MARGIN: Final = 10.0  # seconds past shutdown.grace_seconds before SIGKILL
RELOAD_WAIT: Final = 10.0  # seconds a reload waits for the workers' READY=1, at most
RESTART_DELAYS: Final = (1.0, 30.0)
_STOP_SIGNALS: Final = (-signal.SIGTERM, -signal.SIGINT)  # died of the stop signal itself


@dataclass(frozen=True)
class WorkerSpec:
    """One worker: its name, its command line, its environment overrides."""

    name: str  # w1, w2, ...
    instance: str
    argv: tuple[str, ...]
    overrides: Mapping[str, str]
    # Put ahead of PYTHONPATH: where the supervisor's `bridge` is, if -P would lose it.
    import_path: tuple[str, ...] = ()


def package_import_path() -> tuple[str, ...]:
    """The directory this ``bridge`` package was imported from, unless it is on the
    part of ``sys.path`` a ``-P`` interpreter keeps too (site-packages: putting that
    on PYTHONPATH would put it ahead of the standard library). It is needed when
    the package came from the unsafe first entry: ``python -m bridge`` in a source
    checkout."""
    root = os.path.realpath(Path(__file__).resolve().parents[2])
    safe = sys.path if sys.flags.safe_path else sys.path[1:]
    if root in {os.path.realpath(entry or ".") for entry in safe}:
        return ()
    return (root,)


def worker_specs(count: int, settings: Settings, config: Path | None) -> list[WorkerSpec]:
    """The ``count`` workers of ``run --config FILE --workers count``."""
    base = instance_name(settings.config)
    mqtt, metrics = settings.config.mqtt, settings.config.metrics
    state_dir = settings.config.state_dir or default_state_dir()
    run = ("run", *(("--config", str(config)) if config else ()))
    # -P: the working directory does not go first on the import path (it may hold a `bridge`).
    argv = (sys.executable, "-P", "-m", "bridge", *run)
    import_path = package_import_path()
    specs = []
    for index in range(1, count + 1):
        instance = f"{base}-w{index}"
        overrides = {  # each value is read as YAML: strings go quoted (JSON is YAML)
            f"{ENV}CLUSTER__ENABLED": "true",
            f"{ENV}CLUSTER__INSTANCE": json.dumps(instance),
            f"{ENV}MQTT__CLIENT_ID": json.dumps(f"{mqtt.client_id}-w{index}"),
            # Its own usage file; the others' usage comes from the broker (and from their
            # files in this tree: usage_store.py), so budgets stay the prefix's.
            f"{ENV}STATE_DIR": json.dumps(str(state_dir / f"w{index}")),
        }
        if metrics.enabled:
            overrides[f"{ENV}METRICS__PORT"] = str(metrics.port + index - 1)
        specs.append(WorkerSpec(f"w{index}", instance, argv, overrides, import_path))
    return specs


@dataclass
class _Worker:
    spec: WorkerSpec
    notify_path: str
    sock: socket.socket
    process: asyncio.subprocess.Process | None = None
    ready: bool = False  # said READY=1 since it (re)started
    stopping: bool = False  # said STOPPING=1
    aborted: bool = False  # sent SIGABRT for want of watchdog pings
    reloading: bool = False  # said RELOADING=1, not READY=1 yet
    last_ping: float = 0.0


class Supervisor:
    """Runs the workers until a stop signal or a worker's "do not restart" exit."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        *,
        environ: Mapping[str, str],
        fatal_codes: frozenset[int],
        grace_seconds: float,
        restart_delays: tuple[float, float] = RESTART_DELAYS,
        on_reload: Callable[[], object] | None = None,
    ) -> None:
        self.environ = environ
        self.on_reload = on_reload  # SIGHUP: the supervisor's own part (its log level)
        self.fatal_codes = fatal_codes
        self.kill_after = grace_seconds + KILL_MARGIN
        self.restart_delays = restart_delays
        self.watchdog = systemd.watchdog_interval(environ)  # half of WatchdogSec
        self.exit_code = 0
        self._announced = False
        self._stop = asyncio.Event()
        self._stopper: asyncio.Task[None] | None = None
        self._sent: signal.Signals | None = None  # the stop signal, once passed on
        self._reloading: set[str] | None = None  # workers a reload waits for
        self._reload_timer: asyncio.TimerHandle | None = None
        # sun_path holds 107 bytes: the default temporary directory, not one beside the config.
        self._directory = tempfile.mkdtemp(prefix="bridge-workers-")
        self.workers = [self._worker(spec) for spec in specs]

    def _worker(self, spec: WorkerSpec) -> _Worker:
        path = os.path.join(self._directory, f"{spec.name}.notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        return _Worker(spec, path, sock)

    async def run(self) -> int:
        """Run until every worker has stopped; return the exit code."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        loop.add_signal_handler(signal.SIGHUP, self._on_hangup)
        for worker in self.workers:
            loop.add_reader(worker.sock.fileno(), self._on_notify, worker)
        tasks = []
        if (interval := self.watchdog) is not None:
            pings = (systemd.watchdog(interval, lambda: True), self._check_pings(interval))
            tasks = [loop.create_task(coroutine) for coroutine in pings]
        try:
            await asyncio.gather(*(self._keep(worker) for worker in self.workers))
        finally:
            for task in [*tasks, self._stopper]:
                if task is not None:
                    task.cancel()
            if self._reload_timer is not None:
                self._reload_timer.cancel()
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            for worker in self.workers:
                loop.remove_reader(worker.sock.fileno())
                worker.sock.close()
            shutil.rmtree(self._directory, ignore_errors=True)
        logger.info("all %d workers stopped (exit %d)", len(self.workers), self.exit_code)
        return self.exit_code

    async def _keep(self, worker: _Worker) -> None:
        """Run one worker, again and again, until the supervisor stops."""
        delays = backoff_delays(*self.restart_delays)
        while not self._stop.is_set():
            try:
                process = await self._spawn(worker)
            except OSError as exc:
                logger.error("%s cannot start: %s", worker.spec.name, exc)
                return self._give_up(1)
            if self._sent is not None:  # started as the others were told to stop
                self._send(self._sent, [worker])
            code = await process.wait()
            reached_ready, worker.process, worker.ready = worker.ready, None, False
            self._status()
            self._reloaded_by(worker)
            if self._stop.is_set():
                clean = code == 0 or code in _STOP_SIGNALS
                (logger.info if clean else logger.warning)(
                    "%s stopped: %s", worker.spec.name, _how(code)
                )
                if not clean and not self.exit_code:
                    self.exit_code = 1
                return
            if code in self.fatal_codes:
                logger.error("%s %s: no restart; stopping the others", worker.spec.name, _how(code))
                return self._give_up(code)
            if reached_ready:
                delays = backoff_delays(*self.restart_delays)
            delay = delays()
            logger.warning("%s %s; restarting in %.1fs", worker.spec.name, _how(code), delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)

    async def _spawn(self, worker: _Worker) -> asyncio.subprocess.Process:
        env = {name: value for name, value in self.environ.items() if name not in SYSTEMD_VARIABLES}
        env.update(worker.spec.overrides)
        if worker.spec.import_path:
            paths = [*worker.spec.import_path, *filter(None, [env.get("PYTHONPATH")])]
            env["PYTHONPATH"] = os.pathsep.join(paths)
        env["NOTIFY_SOCKET"] = worker.notify_path
        if self.watchdog is not None:
            env["WATCHDOG_USEC"] = str(round(self.watchdog * 2_000_000))
        process = await asyncio.create_subprocess_exec(
            *worker.spec.argv, env=env, stdin=asyncio.subprocess.DEVNULL
        )
        worker.process = process
        worker.ready = worker.stopping = worker.aborted = worker.reloading = False
        worker.last_ping = asyncio.get_running_loop().time()
        logger.info(
            "%s started: pid %d, instance %s", worker.spec.name, process.pid, worker.spec.instance
        )
        return process

    def _on_notify(self, worker: _Worker) -> None:
        """What a worker told its NOTIFY_SOCKET: READY=1, WATCHDOG=1, STOPPING=1, STATUS=..."""
        while True:
            try:
                datagram = worker.sock.recv(4096)
            except OSError:  # BlockingIOError: all read
                return
            for line in datagram.decode(errors="replace").splitlines():
                if line == "RELOADING=1":
                    worker.reloading = True
                elif line == "READY=1" and worker.process is not None:
                    if worker.reloading:
                        worker.reloading = False
                        self._reloaded_by(worker)
                    worker.ready = True
                    # As systemd: the watchdog counts from READY=1 (a worker calls the roll
                    # of its prefix before it is ready, and pings once connected).
                    worker.last_ping = max(worker.last_ping, asyncio.get_running_loop().time())
                    self._status()
                elif line == "WATCHDOG=1":
                    worker.last_ping = asyncio.get_running_loop().time()
                elif line == "STOPPING=1":
                    worker.stopping = True

    def _status(self) -> None:
        ready = sum(worker.ready for worker in self.workers)
        status = f"STATUS={ready} of {len(self.workers)} workers ready"
        if not self._announced and ready == len(self.workers) and not self._stop.is_set():
            self._announced = True
            logger.info("all %d workers ready", ready)
            systemd.notify(f"READY=1\n{status}")
        else:
            systemd.notify(status)

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            logger.warning("%s again: passing it on, the workers stop without grace", sig.name)
            self._send(sig, self._running())
            return
        logger.info("%s: stopping %d workers", sig.name, len(self.workers))
        self._begin_stop(sig)

    def _on_hangup(self) -> None:
        """SIGHUP: every worker reloads its config; systemd hears RELOADING=1, then READY=1."""
        if self._stop.is_set():
            logger.info("SIGHUP: stopping, not reloading")
            return
        running = self._running()
        logger.info("SIGHUP: the %d workers reload their config", len(running))
        if self.on_reload is not None:
            self.on_reload()
        if self._announced and self._reloading is None:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={now}")
        self._reloading = (self._reloading or set()) | {worker.spec.name for worker in running}
        if self._reload_timer is not None:
            self._reload_timer.cancel()
        self._reload_timer = asyncio.get_running_loop().call_later(RELOAD_WAIT, self._reloaded)
        self._send(signal.SIGHUP, running)
        if not running:
            self._reloaded()

    def _reloaded_by(self, worker: _Worker) -> None:
        """This worker has reloaded (or is gone): READY=1 once the last one has."""
        if self._reloading is not None:
            self._reloading.discard(worker.spec.name)
            if not self._reloading:
                self._reloaded()

    def _reloaded(self) -> None:
        if self._reload_timer is not None:
            self._reload_timer.cancel()
            self._reload_timer = None
        if self._reloading:
            names = ", ".join(sorted(self._reloading))
            logger.warning("reload: no READY=1 within %.0fs from %s", RELOAD_WAIT, names)
        if self._reloading is not None and self._announced and not self._stop.is_set():
            systemd.notify("READY=1")
        self._reloading = None

    def _give_up(self, code: int) -> None:
        self.exit_code = self.exit_code or code
        self._begin_stop(signal.SIGTERM)

    def _begin_stop(self, sig: signal.Signals) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        systemd.notify("STOPPING=1\nSTATUS=stopping the workers")
        self._stopper = asyncio.get_running_loop().create_task(self._stop_workers(sig))

    async def _stop_workers(self, sig: signal.Signals) -> None:
        await asyncio.sleep(SIGNAL_SETTLE)  # for STOPPING=1 from those that have the signal
        self._send(sig, [worker for worker in self._running() if not worker.stopping])
        self._sent = sig
        await asyncio.sleep(self.kill_after)  # cancelled once every worker is gone
        if left := self._running():
            names = ", ".join(worker.spec.name for worker in left)
            logger.error("still running %.0fs on, SIGKILL: %s", self.kill_after, names)
            self._send(signal.SIGKILL, left)

    def _running(self) -> list[_Worker]:
        return [w for w in self.workers if w.process is not None and w.process.returncode is None]

    @staticmethod
    def _send(sig: signal.Signals, workers: list[_Worker]) -> None:
        for worker in workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def _check_pings(self, interval: float) -> None:
        """As systemd would: SIGABRT for a worker silent for a whole WatchdogSec, then SIGKILL."""
        loop, limit = asyncio.get_running_loop(), 2 * interval
        while True:
            await asyncio.sleep(interval / 2)
            for worker in self._running():
                if not worker.ready and not worker.aborted:
                    continue  # starting: not watched until its first READY=1, as by systemd
                if not self._stop.is_set() and loop.time() - worker.last_ping > limit:
                    sig = signal.SIGKILL if worker.aborted else signal.SIGABRT
                    logger.error(
                        "%s: no watchdog ping in %.1fs: %s", worker.spec.name, limit, sig.name
                    )
                    if sig is signal.SIGABRT:  # a stopped worker would only dump once SIGKILLed
                        self._send(signal.SIGCONT, [worker])
                    self._send(sig, [worker])
                    worker.aborted, worker.last_ping = True, loop.time()


def _how(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with {code}"
