"""The one backoff of the bridge: exponential, capped, with jitter (broker and upstream alike)."""

from __future__ import annotations

import random
from collections.abc import Callable


def backoff_delays(initial: float, maximum: float) -> Callable[[], float]:
    """Successive delays: ``initial`` doubling up to ``maximum``, each jittered to 50-100%."""
    attempt = 0

    def next_delay() -> float:
        nonlocal attempt
        delay = min(maximum, initial * float(2**attempt))
        attempt += 1
        return delay * random.uniform(0.5, 1.0)  # noqa: S311 (jitter, not cryptography)

    return next_delay
