"""Relay throughput with 1 and 2 bridge instances (and `run --workers 2`) on one broker.

    .venv/bin/python -m bench.instances [--connections 16] [--deltas 2000] [--rounds 2]

The same load as bench.relay_throughput (connections streaming deltas from the
simulator at full speed to one subscriber, QoS 1, MQTT 5), through one bridge
process and then through two instances of one cluster (ids spread over both
by the claims), alternating, twice each. Every process of the run shares this
machine's cores: the broker, the simulator, the bridges and the subscriber.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench.relay_throughput import (
    CpuMeter,
    Run,
    _relay,
    simulator_process,
    subscribed,
    wait_online,
)
from bridge_tools.local_broker import LocalMosquitto


def wait_for_presence(host: str, port: int, names: list[str]) -> None:
    """Until every instance in ``names`` said it is online (live), then its roll call."""
    seen: set[str] = set()
    done = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        name = message.topic.rsplit("/", 1)[1]
        if b'"online"' in message.payload and not message.retain:
            seen.add(name)
            if seen >= set(names):
                done.set()

    with subscribed(host, port, "ai/bridge/instances/+", 0, on_message, "presence"):
        if not done.wait(30):
            raise RuntimeError(f"instances online: {sorted(seen)} of {names}")
    time.sleep(1.5)  # their roll calls: each knows the others before ids are claimed


@contextlib.asynccontextmanager
async def bridges(
    host: str, port: int, base_url: str, count: int, *, workers: bool = False
) -> AsyncIterator[list[int]]:
    """``count`` bridge instances of one prefix (as processes, or as `--workers count`)."""
    directory = Path(tempfile.mkdtemp(prefix="instances-"))
    processes = []
    names = [f"bench-{n}" for n in range(count)]

    def document(name: str) -> dict[str, Any]:
        return {
            "state_dir": str(directory / name),
            "mqtt": {
                "host": host,
                "port": port,
                "client_id": name,
                "buffer_max_messages": 1_000_000,
                "buffer_max_bytes": 1 << 30,
            },
            "openai": {"base_url": base_url},
            "limits": {"max_connections": 1000},
            "logging": {"level": "WARNING"},
            "cluster": {"enabled": True, "instance": name} if count > 1 or workers else {},
        }

    if workers:
        config = directory / "workers.yaml"
        base = document("bench")
        base["cluster"] = {"enabled": True, "instance": "bench"}
        config.write_text(json.dumps(base))
        command = [sys.executable, "-m", "bridge", "run", "--config", str(config)]
        processes.append(subprocess.Popen([*command, "--workers", str(count)]))
        names = [f"bench-w{n}" for n in range(1, count + 1)]
    else:
        for name in names:
            config = directory / f"{name}.yaml"
            config.write_text(json.dumps(document(name)))
            command = [sys.executable, "-m", "bridge", "run", "--config", str(config)]
            processes.append(subprocess.Popen(command))
    try:
        if count > 1 or workers:
            await asyncio.to_thread(wait_for_presence, host, port, names)
        else:  # a single bridge, no cluster: its `online` (the last run said `offline`)
            await asyncio.to_thread(wait_online, host, port)
        yield [process.pid for process in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            await asyncio.to_thread(process.wait, 30)


async def measure(
    host: str, port: int, base_url: str, sim_pid: int, count: int, args: Any, *, workers: bool
) -> Run:
    async with bridges(host, port, base_url, count, workers=workers) as pids:
        roles = {f"bridge{n}": pid for n, pid in enumerate(pids)}
        meter = CpuMeter({**roles, "simulator": sim_pid, "subscriber": os.getpid()})
        return await _relay(host, port, args.deltas, args.connections, 1, meter)


async def run(args: Any) -> None:
    print(f"machine: {os.cpu_count()} cores; {args.connections} streams of {args.deltas} deltas")
    results: dict[str, list[Run]] = {"1 instance": [], "2 instances": [], "--workers 2": []}
    directory = Path(tempfile.mkdtemp(prefix="instances-broker-"))
    with LocalMosquitto(directory) as broker, simulator_process(args.deltas) as (url, sim_pid):
        for _ in range(args.rounds):
            for label, count, workers in (
                ("1 instance", 1, False),
                ("2 instances", 2, False),
                ("--workers 2", 2, True),
            ):
                outcome = await measure(
                    broker.host, broker.port, url, sim_pid, count, args, workers=workers
                )
                results[label].append(outcome)
                cpu = ", ".join(f"{role} {seconds:.1f}s" for role, seconds in outcome.cpu.items())
                print(f"  {label}: {outcome.rate:,.0f} events/s (CPU: {cpu})")
    base = statistics.median(run.rate for run in results["1 instance"])
    for label, runs in results.items():
        rate = statistics.median(run.rate for run in runs)
        print(f"{label}: median {rate:,.0f} events/s, {rate / base:.2f} of one instance")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--deltas", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
