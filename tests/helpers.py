"""Shared test helpers: the timing unit."""

from __future__ import annotations

import os

from bridge_tools.local_broker import free_port

# Every duration in a test is written as a multiple of SECOND. Slow or shared
# machines scale them all at once: BRIDGE_TESTS_TIMEOUT_FACTOR=3 pytest.
SECOND = float(os.environ.get("BRIDGE_TESTS_TIMEOUT_FACTOR", "1"))

__all__ = ["SECOND", "free_port"]
