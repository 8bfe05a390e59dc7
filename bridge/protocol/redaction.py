"""Secrets scrubbed by value: the bridge knows its secrets, so it looks for them.

A :class:`Redactor` is built once from the secret values (the API key, the
broker password, credential headers and query values, the password in
``openai.base_url``) and replaces every occurrence of each, and of its common
encodings, with ``REDACTED``:

- the raw value (any length);
- for values of at least :data:`MIN_ENCODED_LENGTH` characters (shorter ones
  would shred ordinary text): URL percent-encoding (``quote`` and
  ``quote_plus``), the JSON string escape (``\\uXXXX`` and raw UTF-8), and
  base64 in both alphabets at any alignment inside a longer encoded string,
  so ``base64("user:" + secret)`` (HTTP Basic auth) is caught whatever the
  user name.

It also removes anything shaped like an OpenAI key (``sk-...``, also when a
server echoes one partly masked). All forms are one compiled alternation,
longest first: a text costs one regex pass, two when it held a secret.

Pure: no I/O, stdlib only.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterable
from typing import Any, Final
from urllib.parse import quote, quote_plus

REDACTED: Final = "REDACTED"
MIN_ENCODED_LENGTH: Final = 8

# OpenAI-style keys, also when a server echoes them partly masked (`sk-abc***xyz`):
# `sk-`, `rk-` or `sess-` not preceded by a word character. (The look-behind
# sits after the first letter so that the regex engine can skip ahead to an
# `s` or `r`; a leading `\b` makes every position a candidate.)
KEY_SHAPED: Final = r"(?:s(?<!\ws)(?:k|ess)|r(?<!\wr)k)-[A-Za-z0-9_*\-]{6,}"

# A replacement can meet text around it and spell a secret again (text "ab",
# secret "abRE": "ab" + "REDACTED"); a few more passes undo that.
_MAX_PASSES: Final = 4
_URLSAFE: Final = str.maketrans("+/", "-_")


class Redactor:
    """Replaces known secrets and their encodings with ``REDACTED``; immutable.

    ``bool(redactor)`` says whether it looks for anything at all.
    """

    __slots__ = ("_bytes_pattern", "_key_shapes", "_pattern", "_secrets")

    _secrets: tuple[str, ...]
    _key_shapes: bool
    _pattern: re.Pattern[str] | None
    _bytes_pattern: re.Pattern[bytes] | None

    def __init__(self, secrets: Iterable[str] = (), *, key_shapes: bool = True) -> None:
        unique = tuple(dict.fromkeys(secret for secret in secrets if secret))
        # Longest first: where several forms start at one position, the longest wins.
        forms = sorted(
            {form for secret in unique for form in encodings(secret)}, key=len, reverse=True
        )
        alternatives = [re.escape(form) for form in forms]
        if key_shapes:
            alternatives.append(KEY_SHAPED)
        pattern = "|".join(alternatives)
        bytes_alternatives = [re.escape(_utf8(form)) for form in forms]
        if key_shapes:
            bytes_alternatives.append(KEY_SHAPED.encode())
        object.__setattr__(self, "_secrets", unique)
        object.__setattr__(self, "_key_shapes", key_shapes)
        object.__setattr__(self, "_pattern", re.compile(pattern) if pattern else None)
        object.__setattr__(
            self,
            "_bytes_pattern",
            re.compile(b"|".join(bytes_alternatives)) if pattern else None,
        )

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("a Redactor is immutable")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Redactor is immutable")

    def __repr__(self) -> str:
        return f"Redactor({len(self._secrets)} secrets)"

    def __bool__(self) -> bool:
        return self._pattern is not None

    def extended(self, secrets: Iterable[str]) -> Redactor:
        """A redactor for these secrets as well (key shapes as this one)."""
        return Redactor((*self._secrets, *secrets), key_shapes=self._key_shapes)

    def found(self, text: str) -> bool:
        """Whether ``text`` holds a secret (or a key shape): what :meth:`redact` would replace."""
        return self._pattern is not None and self._pattern.search(text) is not None

    def redact(self, text: str) -> str:
        """``text`` with every secret, encoded or not, replaced by ``REDACTED``."""
        if self._pattern is None:
            return text
        for _ in range(_MAX_PASSES):
            text, count = self._pattern.subn(REDACTED, text)
            if not count:
                break
        return text

    def redact_json(self, value: Any) -> Any:
        """A copy of JSON-like data (dicts, lists, strings, numbers), every string redacted.

        Unlike redacting the serialized text, this keeps the document valid
        whatever a secret contains (quotes, backslashes) and however it is
        serialized afterwards.
        """
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {self.redact_json(key): self.redact_json(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self.redact_json(item) for item in value]
        return value

    def redact_bytes(self, data: bytes) -> bytes:
        """:meth:`redact` for bytes (each form as UTF-8), without decoding them."""
        if self._bytes_pattern is None:
            return data
        marker = REDACTED.encode()
        for _ in range(_MAX_PASSES):
            data, count = self._bytes_pattern.subn(marker, data)
            if not count:
                break
        return data


def encodings(secret: str) -> set[str]:
    """The forms of ``secret`` to look for: raw, and encoded when it is long enough."""
    forms = {secret}
    if len(secret) < MIN_ENCODED_LENGTH:
        return forms
    raw = _utf8(secret)
    forms.add(quote(raw, safe=""))
    forms.add(quote_plus(raw, safe=""))
    forms.add(json.dumps(secret)[1:-1])
    forms.add(json.dumps(secret, ensure_ascii=False)[1:-1])
    forms.update(base64_cores(raw))
    return forms


def base64_cores(data: bytes) -> set[str]:
    """The base64 text that ``data`` spells wherever it sits in a longer encoded string.

    For each alignment (0, 1 or 2 bytes before it in its 3-byte group), only
    the characters whose 6 bits all come from ``data``: the ones at the edges
    also depend on the bytes around it. Both alphabets.
    """
    cores: set[str] = set()
    for offset in range(3):
        encoded = base64.b64encode(bytes(offset) + data).decode("ascii")
        first = -(-8 * offset // 6)  # ceil(8 * offset / 6)
        end = (8 * offset + 8 * len(data)) // 6
        core = encoded[first:end]
        if core:
            cores.update((core, core.translate(_URLSAFE)))
    return cores


def _utf8(text: str) -> bytes:
    """UTF-8, keeping what the environment smuggled in as surrogates."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass")
