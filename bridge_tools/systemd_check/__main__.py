"""``python -m bridge_tools.systemd_check``: what ``scripts/check-systemd`` runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bridge_tools.homeassistant_check.install import default_cache_root
from bridge_tools.systemd_check.checks import CHECKS
from bridge_tools.systemd_check.runner import Options, run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/check-systemd",
        description="The bridge's unit under a real systemd 252: a Debian bookworm tree "
        "(debootstrap, cached) booted with systemd-nspawn, the bridge installed as the "
        "README says, offline, and checked with systemctl, journalctl and systemd-analyze.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=default_cache_root(),
        help="where the Debian tree is kept (default %(default)s)",
    )
    parser.add_argument(
        "--mirror", help="the Debian mirror for debootstrap (default: the one apt uses here)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's directory after a success too"
    )
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        choices=[name for name, _ in CHECKS],
        metavar="CHECK",
        help="run only this check (after install and ready); may repeat",
    )
    args = parser.parse_args(argv)
    options = Options(
        cache_root=args.cache_dir, mirror=args.mirror, keep=args.keep, only=tuple(args.only)
    )
    return run(options)


if __name__ == "__main__":
    sys.exit(main())
