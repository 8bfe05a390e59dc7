"""Cutting an answer's text into chunks a small device can take (pure).

:class:`TextChunker` takes the text deltas of an answer as they come and
hands out chunks of at most ``max_bytes`` UTF-8 bytes (0: no limit), never
splitting a character, ending each chunk at a word or sentence boundary
where the limit allows. The concatenation of every chunk is the text, always.

- On :meth:`TextChunker.add`, text over the limit goes out at once.
- On :meth:`TextChunker.flush` (the coalescing timer), what is held goes out
  up to its last boundary: a word boundary (after whitespace, or after a CJK
  character, which needs no space) or, in ``sentence`` mode, the end of a
  sentence; the rest waits for more text.
- On :meth:`TextChunker.finish` (the answer ended), everything goes out.
"""

from __future__ import annotations

import re
from typing import Final, Literal

TextSplit = Literal["word", "sentence"]
# With no byte limit, text held longer than this goes out anyway (bounds the memory).
MAX_HELD_BYTES: Final = 16 * 1024

_CJK: Final = "\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef"
# A word ends after whitespace, or after a CJK character or full-width punctuation.
_WORD_END: Final = re.compile(rf"[\s{_CJK}]+")
# A sentence ends after . ! ? or an ellipsis and the whitespace that follows them (a
# "." at the very end may be a decimal point: it waits), after the full-width
# (CJK) full stop, exclamation or question mark, or at a line break.
_SENTENCE_END: Final = re.compile(
    r"[.!?\u2026]+[\"')\]\u201d\u2019]*\s+|[\u3002\uff01\uff1f]+\s*|\n+"
)


def _last_end(pattern: re.Pattern[str], text: str) -> int:
    """The position just after the last match of ``pattern`` in ``text`` (0: none)."""
    end = 0
    for match in pattern.finditer(text):
        end = match.end()
    return end


def utf8_prefix(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` bytes of UTF-8."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    cut = max_bytes
    while cut > 0 and (data[cut] & 0xC0) == 0x80:  # inside a character: back to its start
        cut -= 1
    return data[:cut].decode()


class TextChunker:
    """The text of one answer, held until it can go out as whole chunks."""

    __slots__ = ("_held", "max_bytes", "split")

    def __init__(self, max_bytes: int, split: TextSplit = "word") -> None:
        self.max_bytes = max_bytes
        self.split = split
        self._held = ""

    @property
    def holding(self) -> bool:
        return bool(self._held)

    def add(self, delta: str) -> list[str]:
        """Take a delta; the chunks that must go out at once (the limit is passed)."""
        self._held += delta
        limit = self.max_bytes or MAX_HELD_BYTES
        chunks: list[str] = []
        while len(self._held) * 4 > limit and len(self._held.encode()) > limit:
            chunk, self._held = self._cut(self._held, limit)
            chunks.append(chunk)
        return chunks

    def flush(self) -> list[str]:
        """What is held, up to its last boundary (the coalescing time is up)."""
        end = self._boundary(self._held)
        if end == 0:
            return []
        text, self._held = self._held[:end], self._held[end:]
        return self._within_limit(text)

    def finish(self) -> list[str]:
        """Everything held: the answer ended."""
        text, self._held = self._held, ""
        return self._within_limit(text) if text else []

    def _within_limit(self, text: str) -> list[str]:
        chunks: list[str] = []
        while self.max_bytes and len(text.encode()) > self.max_bytes:
            chunk, text = self._cut(text, self.max_bytes)
            chunks.append(chunk)
        chunks.append(text)
        return chunks

    def _cut(self, text: str, limit: int) -> tuple[str, str]:
        """One chunk of at most ``limit`` bytes off ``text``, and the rest: cut at a
        boundary of the mode, else at a word, else after the last whole character."""
        room = utf8_prefix(text, limit)
        end = self._boundary(room) or _last_end(_WORD_END, room) or len(room) or 1
        return text[:end], text[end:]

    def _boundary(self, text: str) -> int:
        """Where the last chunk of ``text`` the mode allows ends (0: nowhere yet)."""
        return _last_end(_SENTENCE_END if self.split == "sentence" else _WORD_END, text)
