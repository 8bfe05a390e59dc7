"""The examples in the manual and the README, as the tests and the build read them.

A fenced block may be named by an HTML comment on the line just before its
fence (invisible on GitHub and in the site)::

    <!-- example: KIND; why -->

- a ``yaml`` block is a bridge config unless named: the tests load it with
  the bridge's own config loader. ``not-checked; why`` leaves a block out
  (one that is wrong on purpose, or a fragment that cannot stand alone, and
  says why); any other kind (``home-assistant``, ``prometheus``) is YAML of
  another program, and only has to parse;
- a ``json`` block holds one JSON value or one per line; each must parse, and
  a command (``"action"``) must pass the bridge's command parser, a message of
  the bridge (``"object"``) must have its object's shape, a server event a
  ``type``. A document of another kind is named (``bridge-info``,
  ``bridge-usage``, ``tool-reply``, ...); ``bridge-info`` is compared with the
  document the bridge builds.

JSON in inline code (``{"action":"ask",...}``) is checked too, unless it is
elided (holds ``...`` or ``…`` outside strings).
"""

from __future__ import annotations

import html
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

_FENCE: Final = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
_MARKER: Final = re.compile(r"^\s*<!--\s*example:\s*(?P<kind>[\w-]+)\s*(?:;\s*(?P<why>.*?))?\s*-->")
_CODE_SPAN: Final = re.compile(r"(`+)(?P<code>.+?)\1")
_LINK: Final = re.compile(r"\[(?P<text>[^\]]*)\]\((?P<target>[^)\s]+)\)")
_HEADING: Final = re.compile(r"^(#{1,6})\s+(?P<title>.+?)\s*#*\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    kind: str | None  # from <!-- example: KIND; why -->
    why: str | None

    @property
    def where(self) -> str:
        return f"{self.path}:{self.line}"


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with their example markers."""
    lines = path.read_text(encoding="utf-8").split("\n")
    blocks = []
    index = 0
    while index < len(lines):
        opening = _FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        body = []
        end = index + 1
        while end < len(lines) and not lines[end].strip().startswith(fence):
            body.append(lines[end][indent:] if lines[end][:indent].isspace() else lines[end])
            end += 1
        previous = lines[index - 1] if index > 0 else ""
        marker = _MARKER.match(previous)
        blocks.append(
            Block(
                path,
                index + 1,
                opening["lang"].lower(),
                "\n".join(body) + "\n",
                marker["kind"] if marker else None,
                marker["why"] if marker else None,
            )
        )
        index = end + 1
    return blocks


def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of everything outside fenced code blocks."""
    fence: str | None = None
    for number, line in enumerate(text.split("\n"), 1):
        opening = _FENCE.match(line)
        if fence is None and opening is not None:
            fence = opening["fence"]
        elif fence is not None and line.strip().startswith(fence):
            fence = None
        elif fence is None:
            yield number, line


def inline_json(path: Path) -> Iterator[tuple[int, str]]:
    """(line, code) of every inline code span that is a JSON object and not elided."""
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        for span in _CODE_SPAN.finditer(line):
            code = span["code"].strip()
            if code.startswith('{"') and code.endswith("}") and not _elided(code):
                yield number, code


def _elided(code: str) -> bool:
    outside_strings = re.sub(r'"(?:[^"\\]|\\.)*"', '""', code)
    return "..." in outside_strings or "…" in outside_strings


def json_values(text: str) -> list[Any]:
    """The JSON of a block: one value, or one per non-empty line. Raises ValueError."""
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.split("\n") if line.strip()]


def markdown_links(text: str) -> Iterator[tuple[int, str]]:
    """(line, target) of every inline link outside code."""
    for number, line in prose_lines(text):
        for link in _LINK.finditer(_CODE_SPAN.sub("", line)):
            yield number, link["target"]


def github_anchors(text: str) -> set[str]:
    """The anchors GitHub (and the manual, with :func:`github_slug`) gives the headings."""
    seen: Counter[str] = Counter()
    anchors = set()
    for _, line in prose_lines(text):
        heading = _HEADING.match(line)
        if heading is None:
            continue
        title = _LINK.sub(lambda link: link["text"], heading["title"]).replace("`", "")
        slug = github_slug(title, "-")
        anchors.add(slug if not seen[slug] else f"{slug}-{seen[slug]}")
        seen[slug] += 1
    return anchors


def github_slug(text: str, separator: str) -> str:
    """The manual's heading ids (``toc: slugify`` in mkdocs.yml): GitHub's.

    Python-Markdown hands the title with code spans HTML-escaped
    (``P/&lt;id&gt;/events``); GitHub slugs the text (``P/<id>/events``).
    """
    text = html.unescape(text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", separator)
