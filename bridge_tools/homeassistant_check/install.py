"""Home Assistant in a venv of its own, installed once and cached.

The venv is ``<cache>/homeassistant-<version>`` (``<cache>``: ``--cache-dir``,
else ``$XDG_CACHE_HOME/openai-mqtt-bridge``, else ``~/.cache/openai-mqtt-bridge``).
A marker file written last says the install finished; a cached venv is reused
while it has the marker and its modules import, else it is installed again.
A lock file keeps two checks from installing into one venv at once.

Home Assistant runs with ``--skip-pip`` (offline, and no install at start),
so the install brings the requirements of every integration it loads: those
it always sets up, those the check's configuration names, MQTT and the
platforms MQTT sets up, the dependencies of each (read from their
``manifest.json``), and two imported without being declared (IMPORTED_TOO).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.processes import log_tail

# The top-level keys of the check's configuration.yaml, and MQTT (a config entry).
CONFIGURED: Final = ("http", "logger", "script", "mqtt", "template")
# Integrations imported by loaded ones without being declared as dependencies.
IMPORTED_TOO: Final = {
    "recorder": "analytics imports its helpers (SQLAlchemy)",
    "stream": "camera, one of the platforms MQTT sets up, imports it (numpy, av)",
}
# acme (through hass-nabucasa) uses josepy's ComparableX509, which josepy 2
# dropped: with josepy 2 every HTTP request to Home Assistant fails with 500.
PINS: Final = ("josepy<2",)
MARKER: Final = ".openai-mqtt-bridge-complete"

# Run by the Home Assistant venv's Python: what it always loads, and where.
WHAT_HA_LOADS: Final = """
import json, pathlib, homeassistant
from homeassistant import bootstrap
print(json.dumps({
    "package": str(pathlib.Path(homeassistant.__file__).parent),
    "always": sorted(bootstrap.CORE_INTEGRATIONS | bootstrap.DEFAULT_INTEGRATIONS),
}))
"""
# Run by the Home Assistant venv's Python: which of the modules in argv fail to import.
_IMPORT_CHECK: Final = """
import importlib, json, sys
failed = []
for name in sys.argv[1:]:
    try:
        importlib.import_module(name)
    except Exception as exc:
        failed.append(f"{name}: {type(exc).__name__}: {exc}")
print(json.dumps(failed))
"""


def default_cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "openai-mqtt-bridge"


@dataclass(frozen=True)
class Installed:
    """A usable Home Assistant venv."""

    directory: Path
    version: str
    fresh: bool  # installed by this run (not from the cache)

    @property
    def python(self) -> Path:
        return self.directory / "bin" / "python"

    @property
    def hass(self) -> Path:
        return self.directory / "bin" / "hass"


def ensure_homeassistant(
    version: str, cache_root: Path, python: str, say: Callable[[str], None]
) -> Installed:
    """The cached Home Assistant ``version``, installed first if need be."""
    cache_root.mkdir(parents=True, exist_ok=True)
    directory = cache_root / f"homeassistant-{version}"
    with _locked(cache_root / f"homeassistant-{version}.lock"):
        marker = directory / MARKER
        if marker.exists():
            cached = Installed(directory, version, fresh=False)
            problems = _import_problems(cached, _marked_modules(marker))
            if not problems:
                return cached
            say(f"the cached install does not import ({problems[0]}): installing it again")
        installed = Installed(directory, version, fresh=True)
        shutil.rmtree(directory, ignore_errors=True)
        say(f"installing Home Assistant {version} into {directory} (a few minutes, ~700 MB)")
        modules = _install(installed, python)
        problems = _import_problems(installed, modules)
        if problems:
            raise CheckFailed(
                "Home Assistant was installed but does not import:\n  " + "\n  ".join(problems)
            )
        marker.write_text(json.dumps({"version": version, "modules": modules}, indent=1) + "\n")
        return installed


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _marked_modules(marker: Path) -> list[str]:
    try:
        modules = json.loads(marker.read_text())["modules"]
    except (OSError, ValueError, KeyError, TypeError):
        return ["homeassistant.bootstrap"]
    return [str(module) for module in modules]


def _install(installed: Installed, python: str) -> list[str]:
    """Make the venv, install Home Assistant and the requirements; the modules to import."""
    log = installed.directory.with_name(installed.directory.name + ".install.log")
    run_step([python, "-m", "venv", str(installed.directory)], log, "creating the venv")
    pip = [str(installed.python), "-m", "pip", "install", "--disable-pip-version-check"]
    run_step([*pip, "--upgrade", "pip"], log, "upgrading pip")
    run_step([*pip, f"homeassistant=={installed.version}", *PINS], log, "pip install homeassistant")
    loads = json.loads(run_step([str(installed.python), "-c", WHAT_HA_LOADS], log, "reading HA"))
    components = Path(loads["package"]) / "components"
    platforms = mqtt_platforms(components)
    domains, requirements = integration_closure(
        components, {*loads["always"], *CONFIGURED, *platforms, *IMPORTED_TOO}
    )
    constraints = Path(loads["package"]) / "package_constraints.txt"
    run_step(
        [*pip, "--constraint", str(constraints), *requirements, *PINS],
        log,
        "pip install the integrations' requirements",
    )
    modules = [f"homeassistant.components.{domain}" for domain in domains]
    modules += [f"homeassistant.components.mqtt.{platform}" for platform in platforms]
    return modules


def mqtt_platforms(components: Path) -> list[str]:
    """The entity platforms MQTT has a module for: it sets them all up with its config entry."""
    found = []
    for module in sorted((components / "mqtt").iterdir()):  # light is a package, the rest files
        name = module.stem if module.suffix == ".py" else module.name
        try:
            manifest = json.loads((components / name / "manifest.json").read_text())
        except (OSError, ValueError):
            continue
        if manifest.get("integration_type") == "entity":
            found.append(name)
    return found


def integration_closure(components: Path, seeds: set[str]) -> tuple[list[str], list[str]]:
    """The integrations ``seeds`` need (their dependencies, transitively) and their requirements."""
    todo, seen, requirements = set(seeds), set[str](), set[str]()
    while todo:
        domain = todo.pop()
        if domain in seen:
            continue
        seen.add(domain)
        try:
            manifest: dict[str, Any] = json.loads(
                (components / domain / "manifest.json").read_text()
            )
        except (OSError, ValueError) as exc:
            raise CheckFailed(f"cannot read the manifest of integration {domain}: {exc}") from None
        requirements.update(manifest.get("requirements", []))
        todo.update(manifest.get("dependencies", []))
    return sorted(seen), sorted(requirements)


def _import_problems(installed: Installed, modules: list[str]) -> list[str]:
    if not installed.python.exists():
        return [f"{installed.python} is missing"]
    try:
        out = subprocess.run(
            [str(installed.python), "-c", _IMPORT_CHECK, *modules],
            capture_output=True,
            check=True,
            timeout=300,
        )
        problems: list[str] = json.loads(out.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        return [f"the venv's Python does not run: {exc}"]
    return problems


def run_step(argv: list[str], log: Path, what: str) -> str:
    """Run one install step, its output appended to ``log``; its stdout."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv[:6])}{' ...' if len(argv) > 6 else ''}\n")
        out.flush()
        result = subprocess.run(argv, stdout=subprocess.PIPE, stderr=out, text=True, check=False)
        out.write(result.stdout)
    if result.returncode != 0:
        raise CheckFailed(
            f"{what} failed (exit {result.returncode}); the end of {log}:\n{log_tail(log)}"
        )
    return result.stdout


def python_problem(python: str, version: str) -> str | None:
    """Why ``python`` cannot install Home Assistant ``version``, or None if it may."""
    try:
        out = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"{python} does not run: {exc}"
    found = out.stdout.strip()
    if version.startswith("2024.3.") and found not in {"3.11", "3.12"}:
        return f"Home Assistant {version} needs Python 3.11 or 3.12, {python} is {found}"
    return None
