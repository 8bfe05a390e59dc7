"""The command line: ``openai-mqtt-bridge run [--workers N] | check-config | schema | demo``
and ``simulate``.

This is the only module that configures logging, reads the environment,
installs signal handlers, calls ``asyncio.run`` and maps errors to exit codes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import faulthandler
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Final

from bridge import __version__
from bridge.config.dump import redacted_dump
from bridge.config.inert import inert_keys
from bridge.config.settings import Settings, config_schema, load_settings
from bridge.daemon import logs
from bridge.daemon.reload import Reloader
from bridge.daemon.service import Service
from bridge.errors import BridgeError, BrokerError, BrokerRefused, ConfigError, InstanceConflict
from bridge.ops.operations import Operations

logger = logging.getLogger("bridge")

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1  # a fatal runtime error: systemd may restart us
EXIT_REFUSED: Final = 77  # os.EX_NOPERM: the broker refused our login or TLS; do not restart
EXIT_CONFIG: Final = 78  # os.EX_CONFIG: bad config or missing secret; do not restart
_M_MMAP_THRESHOLD: Final = -3  # glibc's mallopt parameter
_MMAP_THRESHOLD_BYTES: Final = 128 * 1024


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    args = _parser().parse_args(argv)
    if args.command == "simulate":
        return _simulate(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "schema":
        print(json.dumps(config_schema(), indent=2, ensure_ascii=False))
        return EXIT_OK
    environ: dict[str, str] = dict(os.environ)
    if getattr(args, "workers", None) is not None:  # every worker is a cluster instance
        environ["OPENAI_MQTT_BRIDGE__CLUSTER__ENABLED"] = "true"
    try:
        settings = load_settings(args.config, environ)
    except ConfigError as exc:
        # At err in the journal: `journalctl -p err` says why the service stopped.
        print(logs.stderr_line(f"config error: {exc}"), file=sys.stderr)
        return EXIT_CONFIG
    if args.command == "check-config":
        print(redacted_dump(settings), end="")
        for problem in inert_keys(settings.config):  # set, but acting on nothing
            print(f"WARNING: {problem}", file=sys.stderr)
        return EXIT_OK
    if args.workers is not None:
        return _run_workers(settings, args.config, args.workers)
    return _run(settings, args.config)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openai-mqtt-bridge",
        description="OpenAI Responses API (WebSocket mode) on an MQTT broker.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the bridge daemon")
    run.add_argument("--config", type=Path, help="YAML config file (default: all defaults)")
    run.add_argument(
        "--workers",
        type=_positive,
        metavar="N",
        help="run N instances (cluster.enabled) as worker processes of one supervisor",
    )
    check = commands.add_parser("check-config", help="validate and print the effective config")
    check.add_argument("--config", type=Path, help="YAML config file")
    commands.add_parser("schema", help="print the JSON Schema of the config file")
    demo = commands.add_parser("demo", help="run the seed flow end to end, offline")
    demo.add_argument(
        "--config", type=Path, help="take the broker from this config (default 127.0.0.1:1883)"
    )
    demo.add_argument(
        "--upstream",
        choices=("simulator", "openai"),
        default="simulator",
        help="openai uses the real API with OPENAI_API_KEY",
    )
    demo.add_argument("--raw", action="store_true", help="show the JSON messages")
    demo.add_argument("--question", help="what the demo asks (default: the seed flow's question)")
    simulate = commands.add_parser("simulate", help="run a local Responses WebSocket server")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8765)
    simulate.add_argument("--api-key", help="require this bearer key (default: any)")
    simulate.add_argument(
        "--tokens-per-second",
        type=float,
        default=None,
        help="pace of streamed deltas (default: as fast as possible)",
    )
    simulate.add_argument("--first-token-delay", type=float, default=0.0)
    simulate.add_argument(
        "--max-connection-age",
        type=float,
        default=3600.0,
        help="seconds before websocket_connection_limit_reached",
    )
    simulate.add_argument("--seed", type=int, default=0)
    simulate.add_argument("--log-level", default="INFO")
    return parser


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 1 or more")
    return value


def _run_workers(settings: Settings, config: Path | None, count: int) -> int:
    """The supervisor of ``run --workers N`` (bridge/daemon/workers.py)."""
    from bridge.daemon.workers import Supervisor, worker_specs

    logs.setup(
        settings.config.logging.level, settings.config.logging.format, redactor=settings.redactor
    )
    # On a hang, systemd's watchdog sends SIGABRT: the supervisor's stacks go to the journal
    # at err (the workers write their own).
    faulthandler.enable(logs.fault_file())
    logger.info("openai-mqtt-bridge %s: supervising %d workers", __version__, count)

    def reload_logging() -> None:  # the workers reload the rest, and say what is wrong
        with contextlib.suppress(ConfigError):
            logging_config = load_settings(config, os.environ).config.logging
            logs.reconfigure(logging_config.level, logging_config.format)

    supervisor = Supervisor(
        worker_specs(count, settings, config),
        environ=os.environ,
        fatal_codes=frozenset({EXIT_CONFIG, EXIT_REFUSED}),
        grace_seconds=settings.config.shutdown.grace_seconds,
        on_reload=reload_logging,
    )
    return asyncio.run(supervisor.run())


def _run(settings: Settings, config: Path | None) -> int:

    logs.setup(
        settings.config.logging.level, settings.config.logging.format, redactor=settings.redactor
    )
    # On a hang, systemd's watchdog sends SIGABRT: leave every thread's stack in the journal,
    # at err.
    faulthandler.enable(logs.fault_file())
    _give_large_buffers_back()
    if settings.config.mqtt.tls.enabled and settings.config.mqtt.tls.insecure:
        logger.warning("mqtt.tls.insecure: the broker's certificate name is not checked")
    for problem in inert_keys(settings.config):
        logger.warning("config: %s", problem)
    if settings.api_key is None:
        logger.warning(
            "no API key (OPENAI_API_KEY, openai.api_key_file or a systemd "
            "credential): the upstream handshake carries no credentials"
        )
    logger.info(
        "openai-mqtt-bridge %s: broker %s:%d, upstream %s",
        __version__,
        settings.config.mqtt.host,
        settings.config.mqtt.port,
        settings.endpoint.display_url,
    )
    try:
        asyncio.run(_serve(settings, config))
    except ConfigError as exc:
        logger.error("config error: %s", exc)
        return EXIT_CONFIG
    except InstanceConflict:  # said in full when found; not restarted (exit 78, as config)
        logger.error("another bridge serves this prefix; not retrying (exit %d)", EXIT_CONFIG)
        return EXIT_CONFIG
    except BrokerRefused as exc:
        logger.error("%s; not retrying (exit %d)", exc, EXIT_REFUSED)
        return EXIT_REFUSED
    except BrokerError as exc:
        logger.error("%s", exc)
        return EXIT_FAILURE
    except Exception:  # a BridgeError, or a bug: the link said `offline` on its way out
        logger.exception("fatal error")
        return EXIT_FAILURE
    logger.info("stopped")
    return EXIT_OK


def _give_large_buffers_back() -> None:
    """Make every freed buffer of 128 KiB or more go back to the system at once.

    glibc raises this threshold each time such a buffer is freed (up to 32 MiB),
    after which megabyte-sized commands are carved from the heap, and a flood
    of them leaves the daemon hundreds of megabytes larger for good. Pinned,
    memory returns to its baseline once a flood is over (tests/test_memory_bound.py).
    Other C libraries: nothing to do.
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


async def _serve(settings: Settings, config: Path | None) -> None:
    """Run the daemon until a signal stops it: the operations side first, as the service's
    observer, then the service, reported on while it runs. SIGHUP reloads ``config``."""
    ops = Operations(settings, os.environ)
    service = Service(settings, observer=ops)
    reloader = Reloader(service, config, os.environ, ops)
    stop = asyncio.Event()
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("%s again: stopping without grace", sig.name)
            if main_task is not None:
                main_task.cancel()
            return
        logger.info("%s: stopping", sig.name)
        ops.stopping()
        stop.set()

    def on_hangup() -> None:
        # What `systemctl reload` sends (ExecReload=): read the config again, apply what
        # can change live (bridge/daemon/reload.py).
        if stop.is_set():
            logger.info("SIGHUP: stopping, not reloading")
            return
        logger.info("SIGHUP: reloading %s", config if config is not None else "(no config file)")
        reloader.reload()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    loop.add_signal_handler(signal.SIGHUP, on_hangup)
    try:
        async with ops.running(service):
            await service.run(stop, on_ready=ops.ready)
    except asyncio.CancelledError:
        logger.warning("stopped without grace")


def _demo(args: argparse.Namespace) -> int:
    # The developer tools ship with the daemon but are imported by their commands only.
    from bridge_tools.demo import QUESTION, DemoOptions, run_demo

    try:
        mqtt = load_settings(args.config, {}).config.mqtt if args.config else None
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    logs.setup("WARNING")
    options = DemoOptions(
        broker_host=mqtt.host if mqtt else "127.0.0.1",
        broker_port=mqtt.port if mqtt else 1883,
        upstream=args.upstream,
        raw=args.raw,
        question=args.question or QUESTION,
    )
    print("openai-mqtt-bridge demo: the seed flow over MQTT")
    try:
        asyncio.run(run_demo(options))
    except BridgeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_FAILURE
    return EXIT_OK


def _simulate(args: argparse.Namespace) -> int:
    from bridge_tools.simulator import SimulatorOptions, serve

    logs.setup(args.log_level.upper())
    options = SimulatorOptions(
        api_key=args.api_key,
        tokens_per_second=args.tokens_per_second,
        first_token_delay=args.first_token_delay,
        max_connection_age=args.max_connection_age,
        seed=args.seed,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.host, args.port, options))
    return EXIT_OK
