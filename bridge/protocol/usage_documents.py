"""Usage books as JSON: ``usage.json`` and ``P/bridge/instances/<name>/usage`` (pure).

The instance document, retained by the broker::

    {"instance": "bridge-a", "day": "2026-12-01",
     "tokens": {"input": 5120, "output": 20480, "total": 25600},
     "profiles": {"default": {...}}, "ids": {"kitchen": {...}}}

Documents of other instances come from the broker and are read strictly: at
most :data:`MAX_DOCUMENT_BYTES`, named for their topic, every count a
non-negative integer up to :data:`MAX_COUNT`, at most ``MAX_USAGE_IDS`` ids
(plus "(other)") of valid connection ids; anything else is refused whole
with the reason. Our own stays within the size bound: past it, the ids with
the fewest tokens are summed into "(other)".
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any, Final

from bridge.protocol.encoding import compact
from bridge.protocol.guardrails import MAX_USAGE_IDS, OTHER_IDS, Tokens, UsageBook
from bridge.protocol.topics import connection_id_problem

if TYPE_CHECKING:
    from bridge.protocol.shared_usage import SharedUsage

MAX_DOCUMENT_BYTES: Final = 1024 * 1024
MAX_COUNT: Final = 10**15  # tokens in one count of one day: far beyond any real spend
MAX_PROFILES: Final = 1000
MAX_PROFILE_NAME: Final = 256
FILE_VERSION: Final = 1
_COUNTS: Final = ("input", "output", "total")


class UsageDocumentError(ValueError):
    """A usage document this bridge does not take: the message says why."""


def book_json(book: UsageBook, totals: str = "tokens") -> dict[str, Any]:
    """A book as JSON; its totals under ``totals`` ("bridge" in the file, for older readers)."""
    return {
        "day": book.day.isoformat() if book.day else None,
        totals: book.bridge.as_json(),
        "profiles": {name: tokens.as_json() for name, tokens in book.profiles.items()},
        "ids": {name: tokens.as_json() for name, tokens in book.ids.items()},
    }


def instance_document(name: str, book: UsageBook) -> bytes:
    """This instance's document, at most :data:`MAX_DOCUMENT_BYTES` long."""
    document = {"instance": name, **book_json(book)}
    encoded = _encode(document)
    keep = len(book.ids)
    while len(encoded) > MAX_DOCUMENT_BYTES and keep > 0:
        keep //= 2  # the busiest ids one by one, the rest as "(other)"
        document["ids"] = _busiest(book.ids, keep)
        encoded = _encode(document)
    return encoded


def read_instance_document(name: str, payload: bytes) -> UsageBook:
    """Another instance's document (``name``: from its topic); UsageDocumentError if bad."""
    if len(payload) > MAX_DOCUMENT_BYTES:
        raise UsageDocumentError(f"larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        document = json.loads(payload)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise UsageDocumentError("not JSON") from None
    if not isinstance(document, dict):
        raise UsageDocumentError("not a JSON object")
    if document.get("instance") != name:
        raise UsageDocumentError(f"names the instance {document.get('instance')!r}")
    book = read_book(document, "tokens")
    if book.day is None:
        raise UsageDocumentError("has no day")
    return book


@dataclass(frozen=True, slots=True)
class SavedUsage:
    """What ``usage.json`` holds (see :class:`~bridge.protocol.shared_usage.SharedUsage`)."""

    instance: str | None  # who wrote it (None: a bridge older than the instance documents)
    own: UsageBook
    earlier: UsageBook | None = None
    folded: UsageBook | None = None


def file_document(name: str, usage: SharedUsage) -> dict[str, Any]:
    """``usage.json``: the own book of the latest day, the one set aside, the one folded."""
    document = {"version": FILE_VERSION, "instance": name, **book_json(usage.own, "bridge")}
    for key, book in (("earlier", usage.earlier), ("folded", usage.folded)):
        if book is not None:
            document[key] = book_json(book, "bridge")
    return document


def read_file_document(document: object) -> SavedUsage:
    """What ``usage.json`` holds; UsageDocumentError if it is not a usage file."""
    if not isinstance(document, dict):
        raise UsageDocumentError("not a JSON object")
    if document.get("version") != FILE_VERSION:
        raise UsageDocumentError(f"unknown version {document.get('version')!r}")
    name = document.get("instance")
    if name is not None and not isinstance(name, str):
        raise UsageDocumentError("the instance is not a string")
    earlier, folded = document.get("earlier"), document.get("folded")
    return SavedUsage(
        name,
        read_book(document, "bridge"),
        None if earlier is None else read_book(earlier),
        None if folded is None else read_book(folded),
    )


def read_book(document: object, totals: str = "bridge") -> UsageBook:
    if not isinstance(document, dict):
        raise UsageDocumentError("a book is not a JSON object")
    profiles = _counts_by_name(document.get("profiles"), "profiles", MAX_PROFILES, _profile)
    ids = _counts_by_name(document.get("ids"), "ids", MAX_USAGE_IDS + 1, _connection_id)
    return UsageBook(_day(document.get("day")), tokens_json(document.get(totals)), profiles, ids)


def _day(value: object) -> date | None:
    if value is None:
        return None
    if isinstance(value, str) and len(value) == len("2026-12-01"):
        try:
            return date.fromisoformat(value)
        except ValueError:
            pass
    raise UsageDocumentError(f"the day {_short(value)} is not a date (YYYY-MM-DD)")


def tokens_json(value: object) -> Tokens:
    """``{"input": i, "output": o, "total": t}``, each an integer 0..MAX_COUNT."""
    if not isinstance(value, dict):
        raise UsageDocumentError(f"token counts are not an object: {_short(value)}")
    counts: list[int] = []
    for name in _COUNTS:
        count = value.get(name)
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= MAX_COUNT:
            raise UsageDocumentError(f"a token count is not an integer 0..1e15: {_short(value)}")
        counts.append(count)
    return Tokens(*counts)


def _counts_by_name(
    value: object, what: str, most: int, problem: Callable[[str], str | None]
) -> dict[str, Tokens]:
    if not isinstance(value, dict):
        raise UsageDocumentError(f"{what} is not an object")
    if len(value) > most:
        raise UsageDocumentError(f"more than {most} {what}")
    counts = {}
    for name, tokens in value.items():
        why = problem(name)
        if why is not None:
            raise UsageDocumentError(f"{what}: {why}")
        counts[name] = tokens_json(tokens)
    return counts


def _profile(name: str) -> str | None:
    return None if 0 < len(name) <= MAX_PROFILE_NAME else f"a bad name {_short(name)}"


def _connection_id(name: str) -> str | None:
    return None if name == OTHER_IDS else connection_id_problem(name)


def _busiest(ids: Mapping[str, Tokens], keep: int) -> dict[str, Any]:
    ranked = sorted(ids.items(), key=lambda item: item[1].total, reverse=True)
    kept = {name: tokens.as_json() for name, tokens in ranked[:keep] if name != OTHER_IDS}
    rest = Tokens()
    for name, tokens in ranked:
        if name not in kept:
            rest.add(tokens)
    return {**kept, OTHER_IDS: rest.as_json()}


def _encode(document: Mapping[str, Any]) -> bytes:
    return compact(document).encode()


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:59] + "…"
