"""``python -m bridge_tools.homeassistant_check``: what ``scripts/check-homeassistant`` runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge_tools.homeassistant_check import CURRENT_VERSION, HA_VERSION
from bridge_tools.homeassistant_check.install import default_cache_root
from bridge_tools.homeassistant_check.runner import Options, run

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "home-assistant"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/check-homeassistant",
        description="The bridge's discovery and the Home Assistant examples, in a real "
        "Home Assistant (installed once and cached), offline.",
    )
    parser.add_argument(
        "--current",
        action="store_true",
        help=f"the integration (custom_components/) as Assist's agent in Home Assistant "
        f"{CURRENT_VERSION}, in a cached Debian trixie root (Python 3.13; needs root)",
    )
    parser.add_argument(
        "--version",
        default=None,
        help=f"Home Assistant release (default {HA_VERSION}, with --current {CURRENT_VERSION})",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_root(),
        help="where the Home Assistant venvs are kept (default %(default)s)",
    )
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="the interpreter of Home Assistant's venv (default: this one)",
    )
    parser.add_argument(
        "--examples", type=Path, default=EXAMPLES, help="the example scripts (default %(default)s)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the configs and logs after a success too"
    )
    args = parser.parse_args(argv)
    options = Options(
        version=args.version or (CURRENT_VERSION if args.current else HA_VERSION),
        cache_root=args.cache_dir,
        python=args.python,
        examples=args.examples,
        keep=args.keep,
        current=args.current,
    )
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
