"""Shared test helpers: the timing unit, waiting on a condition, tools a test needs."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Callable
from typing import NoReturn, TypeVar

import pytest

from bridge_tools.local_broker import free_port
from bridge_tools.nats_cluster import find_nats_server

# Every duration in a test is written as a multiple of SECOND. Slow or shared
# machines scale them all at once: BRIDGE_TESTS_TIMEOUT_FACTOR=3 pytest.
SECOND = float(os.environ.get("BRIDGE_TESTS_TIMEOUT_FACTOR", "1"))

T = TypeVar("T")

# How often a condition is polled: short enough not to slow a test, long enough
# not to starve the code under test of the event loop (or of a core).
POLL = 0.01


async def settle(sample: Callable[[], T], done: Callable[[T], bool], wait: float = 10) -> T:
    """``sample()``, polled until ``done`` accepts it; its last value after ``wait`` seconds
    (times the timing factor) if ``done`` never does. For a test that asserts on the value
    with its own message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait * SECOND
    while True:
        value = sample()
        if done(value) or loop.time() >= deadline:
            return value
        await asyncio.sleep(POLL)


async def eventually(condition: Callable[[], object], wait: float = 10, what: str = "") -> None:
    """Until ``condition()`` is true, within ``wait`` seconds (times the timing factor)."""
    if not await settle(condition, bool, wait):
        raise AssertionError(f"not within {wait * SECOND:g} s: {what or condition}")


def eventually_sync(condition: Callable[[], object], wait: float = 10, what: str = "") -> None:
    """:func:`eventually` for a test without an event loop (it blocks the thread)."""
    deadline = time.monotonic() + wait * SECOND
    while not condition():
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {wait * SECOND:g} s: {what or condition}")
        time.sleep(POLL)


def missing(what: str, install: str) -> NoReturn:
    """Skip a test that needs ``what``; under CI (``CI`` set) fail instead: CI installs
    everything the tests need, so a skip there would hide a test that never ran."""
    message = f"{what} is not installed: {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI is set: CI must install it, not skip the test)", False)
    pytest.skip(message)


def require(tool: str, install: str, find: Callable[[str], str | None] = shutil.which) -> str:
    """The path of ``tool`` (``find(tool)``, on PATH by default), or :func:`missing`."""
    path = find(tool)
    if path is None:
        missing(tool, install)
    return path


def require_nats_server() -> str:
    """The nats-server program (the broker-cluster tests run a NATS cluster)."""
    return require("nats-server", "apt-get install nats-server", lambda _: find_nats_server())


__all__ = [
    "SECOND",
    "eventually",
    "eventually_sync",
    "free_port",
    "missing",
    "require",
    "require_nats_server",
    "settle",
]
