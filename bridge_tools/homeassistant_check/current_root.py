"""A current Home Assistant (Python 3.13) in a Debian trixie root, built once and cached.

The root is the systemd check's cached debootstrap tree (:func:`ensure_rootfs`) with
another suite and package list, under ``<cache>/homeassistant-current/``. Home
Assistant goes into ``/opt/homeassistant-<version>`` inside it, with the
requirements of every integration the check's configuration loads (found from the
manifests, as for the 2024.3.3 install), so it runs offline with ``--skip-pip``; a
marker written last says the install finished and holds the requirement list it
installed. When the check's integrations (:data:`CONFIGURED`) need a requirement the
marker does not list, the whole list is installed into the cached venv again (pip
skips what is there) and the marker rewritten. Both steps run under a lock.

A run bind-mounts ``/proc``, ``/sys`` and ``/dev`` into the root (unmounted at the
end) and starts ``hass`` with ``chroot``: it shares the host's network, so it
reaches the host's Mosquitto on 127.0.0.1. Its configuration directory lives in the
root's ``/var/tmp`` and is removed after the run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.install import (
    IMPORTED_TOO,
    WHAT_HA_LOADS,
    integration_closure,
    mqtt_platforms,
    run_step,
)
from bridge_tools.systemd_check.rootfs import ensure_rootfs, host_mirror, host_problem

SUITE: Final = "trixie"  # Debian 13: Python 3.13.5
# g++ and the headers: lru-dict, pymicro-vad and pyspeex-noise have no cp313 wheels.
PACKAGES: Final = (
    "python3.13",
    "python3.13-venv",
    "python3.13-dev",
    "gcc",
    "g++",
    "libc6-dev",
    "ca-certificates",
)
HOME: Final = "homeassistant-current"
CA_BUNDLE: Final = "/etc/ssl/certs/host-ca.crt"  # the host's, copied in: pip's TLS works
MARKER: Final = ".openai-mqtt-bridge-complete"
# What the current mode's configuration.yaml sets up, besides the always-loaded ones.
CONFIGURED: Final = (
    "http",
    "api",
    "websocket_api",
    "onboarding",
    "logger",
    "conversation",
    "assist_pipeline",
    "input_boolean",
    "mqtt",
    "homeassistant",
    "mcp_server",  # set up through its config flow: Home Assistant's MCP server (mcp, ...)
)
MOUNTS: Final = ("proc", "sys", "dev")


@dataclass(frozen=True)
class CurrentHomeAssistant:
    """Home Assistant ``version`` in the cached root ``tree``."""

    tree: Path
    version: str
    fresh_root: bool
    fresh_install: bool

    @property
    def venv(self) -> str:  # inside the root
        return f"/opt/homeassistant-{self.version}"

    def argv(self, *command: str) -> list[str]:
        """``command`` run in the root, with a clean environment that trusts the host's CAs."""
        return [
            "chroot",
            str(self.tree),
            "/usr/bin/env",
            "-i",
            "PATH=/usr/bin:/bin",
            "HOME=/root",
            "LANG=C.UTF-8",
            f"SSL_CERT_FILE={CA_BUNDLE}",
            f"PIP_CERT={CA_BUNDLE}",
            *command,
        ]

    def hass(self, config_dir_inside: str) -> list[str]:
        return self.argv(f"{self.venv}/bin/hass", "-c", config_dir_inside, "--skip-pip")


def ensure_current(
    version: str, cache_root: Path, say: Callable[[str], None], log_dir: Path
) -> CurrentHomeAssistant:
    """The cached root with Home Assistant ``version`` in it, built first if need be."""
    problem = host_problem()
    if problem is not None:
        raise CheckFailed(problem)
    mirror = host_mirror()
    tree, fresh_root = ensure_rootfs(
        cache_root,
        mirror,
        log=log_dir / "debootstrap.log",
        suite=SUITE,
        packages=PACKAGES,
        home_name=HOME,
    )
    say(f"{'built now from ' + mirror if fresh_root else 'cached'}: {tree}")
    installed = CurrentHomeAssistant(tree, version, fresh_root, fresh_install=False)
    marker = tree / installed.venv.lstrip("/") / MARKER
    log = log_dir / f"homeassistant-{version}.install.log"
    with _locked(tree.with_name(tree.name + f".homeassistant-{version}.lock")):
        if marker.is_file():
            recorded = _read_marker(marker)
            loads = recorded or _what_ha_loads(installed, log)
            wanted = _requirements(installed, loads)
            if recorded is not None and set(wanted) <= set(recorded["requirements"]):
                return installed
            say(f"the requirement list changed: installing {len(wanted)} into {installed.venv}")
            _install_requirements(installed, loads, wanted, log)
            marker.write_text(json.dumps({**loads, "requirements": wanted}, indent=1) + "\n")
            return installed
        say(f"installing Home Assistant {version} into {installed.venv} (once, ~2 minutes)")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", tree / CA_BUNDLE.lstrip("/"))
        loads, wanted = _install(installed, log)
        marker.write_text(json.dumps({**loads, "requirements": wanted}, indent=1) + "\n")
    return CurrentHomeAssistant(tree, version, fresh_root, fresh_install=True)


def _read_marker(marker: Path) -> dict[str, Any] | None:
    """What the install recorded (where HA is, what it always loads, the requirements);
    None for a marker of an older check (the version alone)."""
    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or not {"package", "always", "requirements"} <= set(recorded):
        return None
    return recorded


def _what_ha_loads(installed: CurrentHomeAssistant, log: Path) -> dict[str, Any]:
    python = f"{installed.venv}/bin/python"
    loads: dict[str, Any] = json.loads(
        run_step(installed.argv(python, "-c", WHAT_HA_LOADS), log, "reading HA")
    )
    return {"package": loads["package"], "always": loads["always"]}


def _requirements(installed: CurrentHomeAssistant, loads: dict[str, Any]) -> list[str]:
    """The requirements of every integration the check's Home Assistant loads."""
    components = installed.tree / str(loads["package"]).lstrip("/") / "components"
    platforms = mqtt_platforms(components)
    _domains, requirements = integration_closure(
        components, {*loads["always"], *CONFIGURED, *platforms, *IMPORTED_TOO}
    )
    return requirements


def _install_requirements(
    installed: CurrentHomeAssistant, loads: dict[str, Any], requirements: list[str], log: Path
) -> None:
    package = loads["package"]
    run_step(
        installed.argv(*_pip(installed), "--constraint", f"{package}/package_constraints.txt")
        + requirements,
        log,
        "pip install the integrations' requirements",
    )


def _pip(installed: CurrentHomeAssistant) -> list[str]:
    return [f"{installed.venv}/bin/pip", "install", "--disable-pip-version-check", "-q"]


def _install(installed: CurrentHomeAssistant, log: Path) -> tuple[dict[str, Any], list[str]]:
    """A new venv with Home Assistant and the requirements; what HA loads, the requirements."""
    venv = installed.venv
    shutil.rmtree(installed.tree / venv.lstrip("/"), ignore_errors=True)
    run_step(installed.argv("python3.13", "-m", "venv", venv), log, "creating the venv")
    run_step(
        installed.argv(*_pip(installed), f"homeassistant=={installed.version}"),
        log,
        "pip install homeassistant",
    )
    loads = _what_ha_loads(installed, log)
    requirements = _requirements(installed, loads)
    _install_requirements(installed, loads, requirements, log)
    return loads, requirements


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def mounted(tree: Path) -> Iterator[None]:
    """/proc, /sys and /dev bound into the root while a run holds it (one run at a time)."""
    with _locked(tree.with_name(tree.name + ".run.lock")):
        done: list[Path] = []
        try:
            for name in MOUNTS:
                target = tree / name
                if not target.is_mount():
                    subprocess.run(["mount", "--bind", f"/{name}", str(target)], check=True)
                    done.append(target)
            yield
        finally:
            for target in reversed(done):
                subprocess.run(["umount", "-l", str(target)], check=False)
