"""``scripts/install-litellm``: LiteLLM's proxy, a third-party Responses server, for the tests.

LiteLLM (PyPI ``litellm[proxy]``) is the gateway many houses put in front of their
models. Its pins clash with the project's venv, so it lives in a venv of its own,
``<cache>/litellm-<version>`` (``<cache>``: ``$XDG_CACHE_HOME/openai-mqtt-bridge``
or ``~/.cache/openai-mqtt-bridge``), installed once from PyPI (about 45 s) and
reused while it has the marker written last.

Version 1.107.0 on PyPI was a compromised release: it is refused here whatever
is asked. Newer releases (1.108 on) need a ``litellm-proxy`` package that the
registry does not serve, so the pin is the last good release before 1.107.0.

Its own mock answers (``mock_response``) cannot stream on ``/v1/responses`` (the
proxy answers ``stream: true`` with a 500 error frame), so the tests put it in
front of the project's simulator, as a house puts it in front of a model: the
proxy's own authentication, routing, model names, response ids and server-sent
events are what the bridge meets.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Final

from bridge_tools.cached_venv import cache_root, complete, ensure_venv
from bridge_tools.local_broker import free_port, stop_process

VERSION: Final = "1.106.12"  # never 1.107.0 (a compromised release)
COMPROMISED: Final = frozenset({"1.107.0"})
MODEL: Final = "house-model"  # the name the proxy serves; the simulator behind it answers


def program_path(version: str = VERSION, root: Path | None = None) -> Path:
    """Where the cached venv's ``litellm`` program is (it may not be installed)."""
    return (root or cache_root()) / f"litellm-{version}" / "bin" / "litellm"


def installed(version: str = VERSION, root: Path | None = None) -> bool:
    return complete(program_path(version, root).parents[1], "litellm")


def ensure_litellm(version: str, root: Path, python: str) -> Path:
    """The ``litellm`` program of the cached venv, installed first if need be."""
    if version in COMPROMISED:
        sys.exit(f"LiteLLM {version} was a compromised release on PyPI: refusing to install it")
    return ensure_venv(
        root / f"litellm-{version}",
        f"litellm[proxy]=={version}",
        "litellm",
        python,
        about="about 45 s",
        label=f"LiteLLM {version}",
    )


def config(upstream_base_url: str, upstream_key: str, master_key: str) -> dict[str, object]:
    """A proxy config: one model name, routed to ``upstream_base_url`` (a Responses server)."""
    return {
        "model_list": [
            {
                "model_name": MODEL,
                "litellm_params": {
                    "model": "openai/gpt-5.4-nano",
                    "api_base": upstream_base_url,
                    "api_key": upstream_key,
                },
            }
        ],
        "general_settings": {"master_key": master_key},
        "litellm_settings": {"num_retries": 0, "telemetry": False},
    }


class LiteLLMProxy:
    """``litellm --config`` on a free port of 127.0.0.1, its output in ``directory``."""

    def __init__(self, program: Path, directory: Path, document: dict[str, object]) -> None:
        self.program = program
        self.directory = directory
        self.document = document
        self.port = free_port()
        self.log = directory / "litellm.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float) -> None:
        """Start the proxy and wait until its liveness probe answers (or fail with its log)."""
        path = self.directory / "litellm.json"  # JSON is YAML: the proxy reads it
        path.write_text(json.dumps(self.document))
        environ = {
            **os.environ,
            "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start
            "NO_DOCS": "True",
        }
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *(str(self.program), "--config", str(path), "--host", "127.0.0.1"),
                    *("--port", str(self.port), "--num_workers", "1"),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=environ,
                cwd=self.directory,
            )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            with contextlib.suppress(OSError):
                url = f"http://127.0.0.1:{self.port}/health/liveliness"
                with opener.open(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            time.sleep(0.1)
        self.stop()
        tail = self.log.read_text(errors="replace")[-4000:]
        raise RuntimeError(f"LiteLLM did not start within {timeout:.0f} s:\n{tail}")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 10)
            self.process = None


@contextlib.contextmanager
def running(
    directory: Path, upstream_base_url: str, upstream_key: str, master_key: str, timeout: float
) -> Iterator[LiteLLMProxy]:
    """A started proxy in front of ``upstream_base_url``, stopped on the way out."""
    proxy = LiteLLMProxy(
        program_path(), directory, config(upstream_base_url, upstream_key, master_key)
    )
    proxy.start(timeout)
    try:
        yield proxy
    finally:
        proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/install-litellm", description=__doc__)
    parser.add_argument("--version", default=VERSION, help=f"LiteLLM version (default {VERSION})")
    parser.add_argument("--python", default="python3", help="Python of the LiteLLM venv")
    args = parser.parse_args(argv)
    ensure_litellm(args.version, cache_root(), args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
