"""The booted guest: an overlay over the cached tree, systemd-nspawn, and nsenter to drive it.

``systemd-nspawn -b --keep-unit --register=no --private-network`` boots the
overlay with systemd as PID 1 and only a loopback interface: the guest's
Mosquitto on 127.0.0.1:1883 cannot be confused with one on the host. Nothing
registers it with machined (the host may have no systemd), so commands run in
it through ``nsenter --all`` into the namespaces of its PID 1, with a clean
environment: as if typed at its root shell.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.processes import NotYet, timeout_factor, wait_until

# What journalctl -u matches: the unit's own processes, and systemd's messages about it.
UNIT_FIELDS: Final = ("_SYSTEMD_UNIT", "UNIT", "OBJECT_SYSTEMD_UNIT")
PRIORITIES: Final = {"emerg": 0, "alert": 1, "crit": 2, "err": 3, "warning": 4, "notice": 5}
ENVIRONMENT: Final = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME=/root",
    "LANG=C.UTF-8",
    "TERM=dumb",
    "SYSTEMD_PAGER=",
    "SYSTEMD_COLORS=0",
)


class Guest:
    """One boot of the cached tree, in ``run_dir`` (overlay layers and the boot log)."""

    def __init__(self, tree: Path, run_dir: Path) -> None:
        self.tree = tree
        self.run_dir = run_dir
        self.root = run_dir / "root"  # the overlay: the guest's / as the host sees it
        self.boot_log = run_dir / "nspawn.log"
        self.nspawn: subprocess.Popen[bytes] | None = None
        self.leader = 0  # the guest's PID 1, as the host numbers it
        self._mounted = False

    # Boot and shutdown ----------------------------------------------------------------

    def boot(self, timeout: float = 90) -> str:
        """Mount the overlay, boot it, wait for systemd to finish starting; its state."""
        upper, work = self.run_dir / "upper", self.run_dir / "work"
        for directory in (upper, work, self.root):
            directory.mkdir(parents=True, exist_ok=True)
        layers = f"lowerdir={self.tree},upperdir={upper},workdir={work}"
        mount = ["mount", "-t", "overlay", "overlay", "-o", layers, str(self.root)]
        result = subprocess.run(mount, capture_output=True, text=True, check=False)
        if result.returncode:
            raise CheckFailed(f"cannot mount the overlay: {result.stderr.strip()}")
        self._mounted = True
        argv = [
            "systemd-nspawn",
            "--boot",
            "--keep-unit",
            "--register=no",
            "--private-network",
            "--console=passive",
            f"--machine=obm-check-{os.getpid()}",
            f"--directory={self.root}",
        ]
        with self.boot_log.open("wb") as log:
            self.nspawn = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.leader = wait_until("the guest's PID 1 is up", self._find_leader, timeout)
        return wait_until("the guest has booted", self._booted, timeout)

    def _booted(self) -> str:
        argv = ("systemctl", "is-system-running", "--wait")
        state = self.run(*argv, check=False, timeout=90)
        if "Failed to connect to bus" in state.stderr:  # its systemd is not listening yet
            raise NotYet(state.stderr.strip())
        if state.stdout.strip() == "offline":
            # systemctl's answer when the root it sees is not PID 1's (or /proc is not yet
            # PID 1's): seen once in CI right after the guest's systemd exec'd. Ask again.
            raise NotYet("systemctl is-system-running: offline (the guest's / or /proc not ready)")
        if state.stdout.strip() not in ("running", "degraded"):
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            raise CheckFailed(f"the guest did not boot: {state.stdout.strip()}; {failed}")
        return state.stdout.strip()

    def _find_leader(self) -> int:
        assert self.nspawn is not None
        if self.nspawn.poll() is not None:
            raise CheckFailed(f"systemd-nspawn exited ({self.nspawn.returncode}): {self._tail()}")
        children = []
        for task in Path(f"/proc/{self.nspawn.pid}/task").glob("*/children"):
            with contextlib.suppress(OSError):
                children += [int(pid) for pid in task.read_text().split()]
        for pid in children:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return pid
        raise NotYet("no systemd under systemd-nspawn yet")

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.boot_log.read_text(errors="replace")[-2000:]
        return "(no log)"

    def shutdown(self, timeout: float = 60) -> None:
        """Power the guest off (SIGTERM to nspawn, which asks its systemd), unmount the overlay."""
        process = self.nspawn
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout * timeout_factor())
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if self._mounted:
            for _ in range(50):  # the last guest processes may take a moment to let go
                if subprocess.run(["umount", str(self.root)], check=False).returncode == 0:
                    self._mounted = False
                    break
                time.sleep(0.1)

    def remove(self) -> None:
        """Delete the run directory (after :meth:`shutdown`; never with the overlay mounted)."""
        if not self._mounted:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # Commands and files -----------------------------------------------------------------

    def _entered(self) -> list[str]:
        """The prefix that runs a command inside the guest, in its PID 1's root and namespaces."""
        return [
            "nsenter",
            f"--target={self.leader}",
            "--all",
            "--root",  # the leader's own root and working directory, not the namespace's
            "--wd",
            "env",
            "-i",
            *ENVIRONMENT,
        ]

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 60,
        stdin: bytes | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the guest, as its root; raise CheckFailed if it fails and ``check``."""
        command = self._entered()
        try:
            result = subprocess.run(
                [*command, *argv],
                input=stdin.decode() if stdin is not None else None,
                capture_output=True,
                text=True,
                timeout=timeout * timeout_factor(),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise CheckFailed(f"{' '.join(argv)}: no end after {exc.timeout:.0f} s") from None
        if check and result.returncode != 0:
            output = (result.stdout + result.stderr).strip()[-1500:]
            raise CheckFailed(f"{' '.join(argv)} exited with {result.returncode}: {output}")
        return result

    def sh(self, script: str, *, check: bool = True, timeout: float = 60) -> str:
        """Run a POSIX shell script (dash, as /bin/sh on Debian); its stdout."""
        return self.run("sh", "-ec", script, check=check, timeout=timeout).stdout

    def start(self, *argv: str) -> subprocess.Popen[str]:
        """Start ``argv`` in the guest without waiting (a watcher); its output on a pipe."""
        command = self._entered()
        return subprocess.Popen(
            [*command, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )

    def write(self, path: str, text: str, mode: str = "0644") -> None:
        """Write a file in the guest, through its own shell (its paths, its symlinks)."""
        script = f'umask 022; mkdir -p "$(dirname "$0")"; cat > "$0"; chmod {mode} "$0"'
        self.run("sh", "-ec", script, path, stdin=text.encode())

    # systemd ------------------------------------------------------------------------------

    def show(self, unit: str, *properties: str) -> dict[str, str]:
        """``systemctl show -p ...``: property → value."""
        argv = ["systemctl", "show", unit, *(f"--property={name}" for name in properties)]
        output = self.run(*argv).stdout
        return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)

    def cursor(self) -> str:
        """Where the journal ends now: what :meth:`journal` reads after."""
        output = self.run("journalctl", "--lines=0", "--show-cursor", "--quiet").stdout
        for line in output.splitlines():
            if line.startswith("-- cursor: "):
                return line.removeprefix("-- cursor: ").strip()
        raise CheckFailed(f"journalctl gave no cursor: {output!r}")

    def journal(self, unit: str, after: str, *, priority: str | None = None) -> str:
        """The unit's journal since ``after`` (a cursor): its messages, one a line, at
        ``priority`` or worse; the bridge's lines and systemd's about the unit, as ``-u``.

        Filtered here, not with ``-u``/``-p``: journalctl 252 combines ``--after-cursor``
        with a filter by skipping the first match (it assumes the cursor's own entry matches).
        """
        argv = ["journalctl", f"--after-cursor={after}", "--output=json", "--no-pager", "--quiet"]
        worst = PRIORITIES[priority] if priority is not None else 7
        names = {unit if unit.endswith(".service") else f"{unit}.service"}
        lines = []
        for line in self.run(*argv).stdout.splitlines():
            entry = json.loads(line)
            ours = names & {entry.get(field) for field in UNIT_FIELDS}
            message = entry.get("MESSAGE")
            if ours and isinstance(message, str) and int(entry.get("PRIORITY", 6)) <= worst:
                lines.append(message)
        return "".join(f"{line}\n" for line in lines)

    def wait_journal(
        self,
        unit: str,
        after: str,
        *texts: str,
        priority: str | None = None,
        timeout: float = 30,
    ) -> str:
        """The unit's journal since ``after`` once it holds every one of ``texts``."""

        def probe() -> str:
            journal = self.journal(unit, after, priority=priority)
            missing = [text for text in texts if text not in journal]
            if missing:
                raise NotYet(f"no {missing[0]!r} in the journal yet")
            return journal

        where = f" at priority {priority} or worse" if priority else ""
        return wait_until(f"{unit}'s journal{where} says {texts}", probe, timeout)

    def wait_for(self, what: str, probe: Callable[[], str | None], timeout: float = 30) -> str:
        """Poll ``probe`` (None: not yet) until it gives a value."""

        def attempt() -> str:
            value = probe()
            if value is None:
                raise NotYet()
            return value

        return wait_until(what, attempt, timeout)

    def main_pid(self, unit: str) -> int:
        return int(self.show(unit, "MainPID")["MainPID"])


def lines(text: str, needles: Sequence[str]) -> list[str]:
    """The lines of ``text`` containing any of ``needles``."""
    return [line for line in text.splitlines() if any(needle in line for needle in needles)]
