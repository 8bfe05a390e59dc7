"""How a benchmark states a goal of issue "Performance" and whether this run met it."""

from __future__ import annotations


def goal(description: str, met: bool) -> str:
    return f"  goal: {description}: {'met' if met else 'NOT met'}"
