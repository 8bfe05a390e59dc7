"""``scripts/check-esphome``: the ESPHome examples pass ESPHome's own ``esphome config``.

ESPHome's pins clash with the project's venv, so it lives in a venv of its own,
``<cache>/esphome-<version>`` (``<cache>``: ``$XDG_CACHE_HOME/openai-mqtt-bridge``
or ``~/.cache/openai-mqtt-bridge``), installed once from PyPI (about 40 s) and
reused while it has the marker written last (a run then takes about a second).
Each ``examples/esphome/*.yaml`` is copied into a temporary directory next to a
``secrets.yaml`` of placeholder values (the examples take the Wi-Fi and broker
from ``!secret``) and checked there; nothing is compiled, nothing is fetched.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Final

from bridge_tools.cached_venv import cache_root, ensure_venv

VERSION: Final = "2026.6.5"  # the ESPHome the manual names
ROOT: Final = Path(__file__).resolve().parents[1]
EXAMPLES: Final = ROOT / "examples" / "esphome"
SECRETS: Final = (
    'wifi_ssid: "example-network"\n'
    'wifi_password: "example-password"\n'
    'mqtt_broker: "192.0.2.10"\n'
    'mqtt_username: "ask-button"\n'
    'mqtt_password: "example-password"\n'
)


def ensure_esphome(version: str, root: Path, python: str) -> Path:
    """The ``esphome`` program of the cached venv, installed first if need be."""
    return ensure_venv(
        root / f"esphome-{version}",
        f"esphome=={version}",
        "esphome",
        python,
        about="about 40 s",
        label=f"ESPHome {version}",
    )


def check(program: Path, examples: list[Path]) -> list[str]:
    """The examples ``esphome config`` refuses, each with its output."""
    failures = []
    with tempfile.TemporaryDirectory(prefix="esphome-check-") as directory:
        (Path(directory) / "secrets.yaml").write_text(SECRETS)
        for example in examples:
            copy = Path(directory) / example.name
            shutil.copyfile(example, copy)
            result = subprocess.run(
                [str(program), "config", str(copy)], capture_output=True, text=True, cwd=directory
            )
            ok = (
                result.returncode == 0
                and "Configuration is valid!" in result.stdout + result.stderr
            )
            print(f"{'PASS' if ok else 'FAIL'} esphome config {os.path.relpath(example, ROOT)}")
            if not ok:
                failures.append(f"{example}:\n{result.stdout}{result.stderr}")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/check-esphome", description=__doc__)
    parser.add_argument("--version", default=VERSION, help=f"ESPHome version (default {VERSION})")
    parser.add_argument("--python", default="python3", help="Python of the ESPHome venv")
    parser.add_argument("files", nargs="*", type=Path, help="default: examples/esphome/*.yaml")
    args = parser.parse_args(argv)
    started = time.monotonic()
    program = ensure_esphome(args.version, cache_root(), args.python)
    failures = check(program, args.files or sorted(EXAMPLES.glob("*.yaml")))
    for failure in failures:
        print(failure, file=sys.stderr)
    print(f"esphome check: {time.monotonic() - started:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
