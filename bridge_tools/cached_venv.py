"""A tool the checks need in a venv of its own, cached in ``<cache>/<name>-<version>``.

``<cache>`` is ``$XDG_CACHE_HOME/openai-mqtt-bridge`` or ``~/.cache/openai-mqtt-bridge``.
The venv is installed once from PyPI under a lock (concurrent runs wait) and reused
while it holds the marker written last; a half-made one is removed and made again.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Final

MARKER: Final = ".openai-mqtt-bridge-complete"


def cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openai-mqtt-bridge"


def complete(venv: Path, program: str) -> bool:
    return (venv / MARKER).exists() and (venv / "bin" / program).exists()


def ensure_venv(
    venv: Path, requirement: str, program: str, python: str, *, about: str, label: str
) -> Path:
    """``venv/bin/<program>``, installing ``requirement`` into ``venv`` first if need be."""
    root = venv.parent
    root.mkdir(parents=True, exist_ok=True)
    with (root / f"{venv.name}.lock").open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if complete(venv, program):
            return venv / "bin" / program
        shutil.rmtree(venv, ignore_errors=True)
        print(f"installing {label} into {venv} (once, {about})", flush=True)
        log = root / f"{venv.name}.install.log"
        with log.open("w") as out:
            for command in (
                [python, "-m", "venv", str(venv)],
                [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", requirement],
            ):
                if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode:
                    sys.exit(f"installing {label} failed: see {log}")
        (venv / MARKER).write_text(requirement + "\n")
    return venv / "bin" / program
