"""The guest's root file system (built once with debootstrap, then cached) and the wheelhouse.

The tree is ``<cache>/systemd-check/rootfs-<suite>-<hash>`` (``<cache>`` as for
the Home Assistant check: ``--cache-dir``, ``$XDG_CACHE_HOME/openai-mqtt-bridge``
or ``~/.cache/openai-mqtt-bridge``; the hash is of the suite, the packages and
the mirror). It is built into a temporary directory that is renamed once
debootstrap has finished, so a half-built tree is never used; a lock keeps
two checks from building at once. Runs never change it: each boots an overlay.

The wheelhouse is what the README tells a user to carry to an offline Debian:
the project's wheel and every dependency's, for CPython 3.11 on this machine's
architecture (bookworm's Python), whatever Python the host runs.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.systemd_check import PACKAGES, SUITE

DEFAULT_MIRROR: Final = "http://deb.debian.org/debian"
MARKER: Final = ".openai-mqtt-bridge-complete"
PROJECT: Final = Path(__file__).resolve().parents[2]
GUEST_PYTHON: Final = "3.11"  # bookworm's python3
# Only these Debian tools are needed on the host; apt-get installs them when missing.
HOST_TOOLS: Final = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container"}


def host_problem() -> str | None:
    """Why this machine cannot run the check (None: it can), after installing what is missing."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, mount, systemd-nspawn)"
    missing = [package for tool, package in HOST_TOOLS.items() if shutil.which(tool) is None]
    if missing and shutil.which("apt-get"):
        subprocess.run(["apt-get", "update", "-qq"], check=False, capture_output=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing], check=False, capture_output=True
        )
    still = [tool for tool in HOST_TOOLS if shutil.which(tool) is None]
    if still:
        packages = " ".join(HOST_TOOLS[tool] for tool in still)
        return f"{', '.join(still)} missing: apt-get install {packages}"
    return None


def host_mirror(apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this host's apt uses (not its security archive), else deb.debian.org."""
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if path.suffix == ".sources":  # deb822: paragraphs of "Key: value"
            for paragraph in re.split(r"\n\s*\n", text):
                found = re.findall(r"^(\w[\w-]*):\s*(.*)$", paragraph, re.MULTILINE)
                fields: dict[str, str] = {str(key): str(value) for key, value in found}
                suites, uris = fields.get("Suites", ""), fields.get("URIs", "").split()
                if uris and "security" not in suites and "deb" in fields.get("Types", "deb"):
                    return uris[0]
        else:
            for line in text.splitlines():
                words = [w for w in line.split() if not w.startswith("[")]
                if len(words) >= 3 and words[0] == "deb" and "security" not in words[2]:
                    return words[1]
    return DEFAULT_MIRROR


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def ensure_rootfs(
    cache_root: Path,
    mirror: str,
    *,
    log: Path,
    suite: str = SUITE,
    packages: Sequence[str] = PACKAGES,
    home_name: str = "systemd-check",
) -> tuple[Path, bool]:
    """The cached tree (built now if missing), and whether this run built it.

    ``suite``, ``packages`` and ``home_name`` (the folder under ``cache_root``) let
    other checks keep a tree of their own: the Home Assistant check's trixie root.
    """
    key = hashlib.sha256(f"{suite} {' '.join(packages)} {mirror}".encode()).hexdigest()[:12]
    home = cache_root / home_name
    tree = home / f"rootfs-{suite}-{key}"
    with _locked(home / f"rootfs-{suite}-{key}.lock"):
        if (tree / MARKER).is_file():
            return tree, False
        shutil.rmtree(tree, ignore_errors=True)
        partial = Path(tempfile.mkdtemp(prefix=f"rootfs-{suite}-", suffix=".partial", dir=home))
        argv = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(packages)}",
            suite,
            str(partial),
            mirror,
        ]
        with log.open("ab") as out:
            result = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            raise CheckFailed(f"debootstrap failed ({result.returncode}); see {log}")
        # The guest's apt has nothing to fetch (it has no network): keep the tree small.
        shutil.rmtree(partial / "var/cache/apt/archives", ignore_errors=True)
        (partial / "var/cache/apt/archives/partial").mkdir(parents=True, exist_ok=True)
        (partial / MARKER).write_text(f"{suite} {' '.join(packages)} from {mirror}\n")
        partial.rename(tree)
        return tree, True


def build_wheelhouse(directory: Path, *, log: Path) -> list[str]:
    """The project's wheel ([metrics] extra included) and its dependencies' for the guest's
    Python, in ``directory``; their file names."""
    directory.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    machine = platform.machine()
    platforms = [f"manylinux{tag}_{machine}" for tag in ("2014", "_2_17", "_2_28")]
    with log.open("ab") as out:
        argv = [*pip, "wheel", "--no-deps", "--wheel-dir", str(directory), str(PROJECT)]
        if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
            raise CheckFailed(f"building the project's wheel failed; see {log}")
        (wheel,) = directory.glob("openai_mqtt_bridge-*.whl")
        argv = [
            *pip,
            "download",
            "--dest",
            str(directory),
            "--only-binary=:all:",
            "--python-version",
            GUEST_PYTHON,
            "--implementation",
            "cp",
            *(f"--platform={name}" for name in platforms),
            f"{wheel}[metrics]",
        ]
        if subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False).returncode:
            raise CheckFailed(f"downloading the dependencies' wheels failed; see {log}")
    return sorted(path.name for path in directory.glob("*.whl"))
