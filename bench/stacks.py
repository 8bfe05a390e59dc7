"""Summarize py-spy's collapsed stacks: where a relayed event's CPU time goes.

    .venv/bin/python -m bench.stacks profile.txt [--top 25]

Each line of the input is ``frame;frame;...;leaf count``. The summary gives the
share of samples by the library the innermost frame belongs to (self time),
the functions with the most self time, and the inclusive share of the bridge's
own hot functions.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Iterable

# Where a frame's file lives says whose code it is.
_OWNERS = (
    ("paho/", "paho-mqtt"),
    ("aiomqtt/", "aiomqtt"),
    ("websockets/", "websockets"),
    ("asyncio/", "asyncio"),
    ("uvloop/", "uvloop"),
    ("bridge/", "bridge"),
    ("ssl.py", "ssl"),
    ("selectors.py", "selectors"),
    ("socket.py", "socket"),
    ("json/", "json"),
    ("logging/", "logging"),
)
_FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


def owner(frame: str) -> str:
    match = _FRAME.match(frame)
    file = match["file"] if match else frame
    for marker, name in _OWNERS:
        if marker in file:
            return name
    return "other" if match else frame  # py-spy's own labels, e.g. an idle marker


def function(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    file = match["file"].rsplit("site-packages/", 1)[-1].rsplit("lib/python3.11/", 1)[-1]
    return f"{match['function']} ({file})"


def parse(lines: Iterable[str]) -> list[tuple[list[str], int]]:
    stacks = []
    for line in lines:
        line = line.rstrip()
        if not line:
            continue
        stack, _, count = line.rpartition(" ")
        frames = [frame for frame in stack.split(";") if frame]
        # py-spy puts the thread (and process) first: keep only Python frames.
        frames = [frame for frame in frames if _FRAME.match(frame)]
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summarize(stacks: list[tuple[list[str], int]], top: int) -> str:
    total = sum(count for _, count in stacks)
    by_owner: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        by_owner[owner(frames[-1])] += count
        by_function[function(frames[-1])] += count
        for name in {function(frame) for frame in frames if owner(frame) == "bridge"}:
            inclusive[name] += count
    out = [f"{total} samples"]
    out.append("\nself time by library:")
    out += [f"  {share(n, total)}  {name}" for name, n in by_owner.most_common()]
    out.append(f"\nself time, top {top} functions:")
    out += [f"  {share(n, total)}  {name}" for name, n in by_function.most_common(top)]
    out.append("\ninclusive time of the bridge's functions:")
    out += [f"  {share(n, total)}  {name}" for name, n in inclusive.most_common(top)]
    return "\n".join(out)


def share(count: int, total: int) -> str:
    return f"{100 * count / total:5.1f}%"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", help="py-spy output in --format raw")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    with open(args.profile, encoding="utf-8") as lines:
        print(summarize(parse(lines), args.top))


if __name__ == "__main__":
    main()
