"""The check's order: prepare (tree, wheelhouse, boot), run each check, print a line each.

``PASS <check>: ...`` or ``FAIL <check>: ...``, with how long it took; then the
timings and a closing line. A failed check does not stop the others (the
service is put back to its baseline in between), except the setup ones. The
guest is powered off and its overlay removed at the end, whatever happens
(kept, with its path printed, after a failure or with ``--keep``).
"""

from __future__ import annotations

import shutil
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TextIO

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.systemd_check import checks
from bridge_tools.systemd_check.guest import Guest
from bridge_tools.systemd_check.rootfs import (
    PROJECT,
    build_wheelhouse,
    ensure_rootfs,
    host_mirror,
    host_problem,
)


@dataclass(frozen=True)
class Options:
    cache_root: Path
    mirror: str | None = None
    keep: bool = False
    only: tuple[str, ...] = ()  # run just these checks (after the setup ones)


@dataclass
class Report:
    out: TextIO = sys.stdout
    started: float = field(default_factory=time.monotonic)
    timings: list[tuple[str, float]] = field(default_factory=list)
    passed: int = 0
    failed: list[str] = field(default_factory=list)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def timed(self, title: str, began: float) -> float:
        elapsed = time.monotonic() - began
        self.timings.append((title, elapsed))
        return elapsed

    def result(self, name: str, began: float, detail: str, ok: bool) -> None:
        elapsed = self.timed(name, began)
        if ok:
            self.passed += 1
        else:
            self.failed.append(name)
        self.line(f"{'PASS' if ok else 'FAIL'} {name} ({elapsed:.1f} s): {detail}")

    def summary(self) -> None:
        self.line("\ntimings:")
        for title, elapsed in self.timings:
            self.line(f"  {elapsed:7.1f} s  {title}")
        self.line(f"  {time.monotonic() - self.started:7.1f} s  in all")
        if self.failed:
            self.line(f"failed: {', '.join(self.failed)}")
        self.line(f"systemd: {self.passed} passed, {len(self.failed)} failed")


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(options: Options, out: TextIO = sys.stdout) -> int:
    """The whole check; 0 if every check passed, 1 on a failure, 130 if interrupted."""
    report = Report(out)
    problem = host_problem()
    if problem is not None:
        report.line(f"FAIL setup: {problem}")
        return 1
    previous = signal.signal(signal.SIGTERM, _interrupt)
    home = options.cache_root / "systemd-check"
    home.mkdir(parents=True, exist_ok=True)
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=home))
    guest: Guest | None = None
    code = 1
    try:
        guest = _prepare(options, report, run_dir)
        if guest is not None:
            code = _checks(options, report, checks.Context(guest, _wheels(run_dir)))
    except KeyboardInterrupt:
        report.line("interrupted")
        code = 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if guest is not None:
            guest.shutdown()
        if code == 0 and not options.keep and (guest is None or not guest.root.is_mount()):
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            report.line(f"kept: {run_dir} (the overlay's upper layer, nspawn.log, build logs)")
        report.summary()
    return code


def _wheels(run_dir: Path) -> list[str]:
    return sorted(path.name for path in (run_dir / "wheelhouse").glob("*.whl"))


def _prepare(options: Options, report: Report, run_dir: Path) -> Guest | None:
    mirror = options.mirror or host_mirror()
    began = time.monotonic()
    try:
        tree, fresh = ensure_rootfs(options.cache_root, mirror, log=run_dir / "debootstrap.log")
    except CheckFailed as exc:
        report.result("root file system", began, str(exc), ok=False)
        return None
    how = f"built now from {mirror}" if fresh else "cached"
    report.line(
        f"-- root file system ({report.timed('root file system', began):.1f} s): {how}, {tree}"
    )
    began = time.monotonic()
    try:
        wheels = build_wheelhouse(run_dir / "wheelhouse", log=run_dir / "wheelhouse.log")
    except CheckFailed as exc:
        report.result("wheelhouse", began, str(exc), ok=False)
        return None
    report.line(f"-- wheelhouse ({report.timed('wheelhouse', began):.1f} s): {len(wheels)} wheels")
    began = time.monotonic()
    guest = Guest(tree, run_dir)
    try:
        state = guest.boot()
        _copy_in(guest, run_dir)
    except CheckFailed as exc:
        report.result("boot", began, str(exc), ok=False)
        guest.shutdown()
        return None
    version = guest.run("systemctl", "--version").stdout.split("\n", 1)[0]
    report.line(f"-- boot ({report.timed('boot', began):.1f} s): {version}, {state}")
    return guest


def _copy_in(guest: Guest, run_dir: Path) -> None:
    """What a user would carry to the machine: the wheelhouse and the checkout's files."""
    root = guest.root / "root"
    shutil.copytree(run_dir / "wheelhouse", root / "wheelhouse")
    source = root / "openai-mqtt-bridge"
    (source / "systemd").mkdir(parents=True)
    shutil.copy(PROJECT / "config.example.yaml", source)
    shutil.copy(PROJECT / "systemd" / "openai-mqtt-bridge.service", source / "systemd")
    (source / "check-config.yaml").write_text(checks.BASE_CONFIG)


def _checks(options: Options, report: Report, context: checks.Context) -> int:
    for name, check in checks.CHECKS:
        if options.only and name not in options.only and name not in checks.SETUP:
            continue
        began = time.monotonic()
        try:
            if name not in checks.SETUP:
                checks.baseline(context)
            detail, ok = check(context), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except Exception as exc:  # a check's own bug, or the guest answering oddly: still a line
            detail, ok = f"{type(exc).__name__}: {exc}", False
        report.result(name, began, detail, ok)
        if not ok and name in checks.SETUP:
            report.line("the other checks need this one: stopping here")
            break
    return 1 if report.failed else 0
