"""The one JSON encoder of what the bridge says and sends: compact, UTF-8, non-ASCII kept."""

from __future__ import annotations

import json
from typing import Any


def compact(value: Any, *, allow_nan: bool = True) -> str:
    """``value`` as compact JSON text (no spaces, non-ASCII characters as they are);
    ``allow_nan=False``: ValueError for NaN and the infinities, which are not JSON."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=allow_nan)


def encode(message: Any) -> bytes:
    """Compact UTF-8 JSON, the form of every message the bridge publishes."""
    # A lone surrogate (only from a caller's bug or a hostile id) becomes a JSON escape.
    return compact(message).encode("utf-8", "backslashreplace")
