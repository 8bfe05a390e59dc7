"""Clients' JSON, parsed strictly and at a cost bounded by its size.

A command is read from a hostile network: this refuses what Python's ``json``
would take but the bridge must not (nesting deep enough to exhaust the stack,
``NaN``, ``Infinity``, numbers that are not finite floats), so nothing but
strict JSON ever goes upstream.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, Final

MAX_JSON_DEPTH: Final = 64  # nesting levels a command may have; Responses events need a handful


def load_json(payload: bytes) -> Any:
    """Parse a client's UTF-8 JSON, refusing what costs more than its size or is not JSON.

    Refused (``ValueError``): invalid UTF-8 or JSON; nesting deeper than
    :data:`MAX_JSON_DEPTH`; ``NaN``, ``Infinity`` and numbers too large for a
    float (Python would write them back as non-JSON tokens); integers of more
    than 4,300 digits (Python's own limit, which keeps parsing linear).
    """
    text = payload.decode("utf-8")
    try:
        document = json.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels") from None
    # Fewer brackets than the limit cannot nest deeper: most commands stop here.
    if payload.count(b"[") + payload.count(b"{") > MAX_JSON_DEPTH and _too_deep(payload):
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    return document


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {elide(text, 24)} is out of range")
    return value


def _too_deep(payload: bytes) -> bool:
    """Whether the containers of valid JSON nest deeper than MAX_JSON_DEPTH.

    Strings out, brackets of both kinds as ``[]``: each pass removes the
    innermost pairs, one level. Linear passes in C, for valid JSON only (the
    string pattern could backtrack on unterminated strings).
    """
    brackets = _JSON_STRING.sub(b"", payload).translate(_AS_SQUARE, _NOT_A_BRACKET)
    for _ in range(MAX_JSON_DEPTH):
        if not brackets:
            return False
        brackets = brackets.replace(b"[]", b"")
    return bool(brackets)


_JSON_STRING: Final = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_AS_SQUARE: Final = bytes.maketrans(b"{}", b"[]")
_NOT_A_BRACKET: Final = bytes(byte for byte in range(256) if byte not in b"[]{}")


def elide(text: str, limit: int = 64) -> str:
    """Client text cut to ``limit`` characters, for an error message that echoes it."""
    return text if len(text) <= limit else text[: limit - 1] + "…"
