"""Today's token usage on disk, so budgets survive restarts and upgrades.

One small JSON file, ``usage.json`` in the state directory (under systemd the
unit's ``StateDirectory=``, given as ``$STATE_DIRECTORY``; elsewhere
``$XDG_STATE_HOME/openai-mqtt-bridge`` or ``~/.local/state/openai-mqtt-bridge``).
It is written atomically (a temporary file, fsync, rename, fsync of the
directory). A missing file starts at zero; a corrupt or unreadable one is
logged once and set aside as ``usage.json.corrupt-<time>``, never a crash,
never a silent reset.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable
from datetime import date, datetime
from pathlib import Path
from typing import Any, Final

from bridge.mqtt.link import MqttLink
from bridge.ops.usage import usage_document
from bridge.protocol.guardrails import Guardrails, Tokens, UsageBook

logger = logging.getLogger(__name__)

APP_DIRECTORY: Final = "openai-mqtt-bridge"
FILE_NAME: Final = "usage.json"
FORMAT_VERSION: Final = 1
USAGE_INTERVAL: Final = 5.0  # seconds between saves and publications of changed usage


def default_state_dir(environ: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """Where state lives when ``state_dir`` is not set."""
    systemd = environ.get("STATE_DIRECTORY")
    if systemd:
        return Path(systemd.split(":")[0])
    xdg = environ.get("XDG_STATE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".local" / "state"
    return base / APP_DIRECTORY


class UsageStore:
    """The usage file of one bridge: loaded once at start, saved now and then."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE_NAME

    def load(self) -> UsageBook:
        """The usage saved last (its day included); a fresh book if there is none."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return UsageBook()
        except OSError as exc:
            return self._set_aside(f"cannot be read ({exc})")
        try:
            return _book_of(json.loads(text))
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            return self._set_aside(f"is not a usage file this bridge wrote ({exc})")

    def save(self, book: UsageBook) -> None:
        """Write ``book`` atomically; an error is logged, and the next save tries again."""
        document = {
            "version": FORMAT_VERSION,
            "day": book.day.isoformat() if book.day else None,
            "bridge": book.bridge.as_json(),
            "profiles": {name: tokens.as_json() for name, tokens in book.profiles.items()},
            "ids": {name: tokens.as_json() for name, tokens in book.ids.items()},
        }
        temporary = self.path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            with open(temporary, "w", encoding="utf-8") as file:
                json.dump(document, file, separators=(",", ":"))
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, self.path)
            directory = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
            book.changed = False
        except OSError as exc:
            logger.warning("could not save token usage to %s: %s", self.path, exc)

    def _set_aside(self, problem: str) -> UsageBook:
        aside = self.path.with_name(f"{FILE_NAME}.corrupt-{int(time.time())}")
        try:
            os.replace(self.path, aside)
            where = f"moved to {aside}"
        except OSError as exc:
            where = f"could not be moved aside ({exc})"
        logger.error(
            "the token usage file %s %s; %s. Today's usage starts from zero: "
            "budgets are not enforced for what was spent before",
            self.path,
            problem,
            where,
        )
        return UsageBook(changed=True)


def _book_of(document: Any) -> UsageBook:
    if not isinstance(document, dict):
        raise TypeError("not a JSON object")
    if document.get("version") != FORMAT_VERSION:
        raise ValueError(f"unknown version {document.get('version')!r}")
    day = document["day"]
    return UsageBook(
        day=date.fromisoformat(day) if day is not None else None,
        bridge=_tokens(document["bridge"]),
        profiles={str(name): _tokens(value) for name, value in document["profiles"].items()},
        ids={str(name): _tokens(value) for name, value in document["ids"].items()},
    )


def _tokens(value: Any) -> Tokens:
    counts = [value[name] for name in ("input", "output", "total")]
    if not all(isinstance(count, int) and not isinstance(count, bool) for count in counts):
        raise TypeError(f"token counts must be integers: {value!r}")
    return Tokens(*counts)


async def keep_usage(
    store: UsageStore,
    guardrails: Guardrails,
    link: MqttLink,
    topic: str,
    local_now: Callable[[], datetime],
) -> None:
    """Publish ``P/bridge/usage`` (retained) and save it: at start, then at most every
    few seconds while it changes (a new day is a change)."""
    first = True
    while True:
        now = local_now()
        guardrails.usage.roll(now.date())
        if first or guardrails.usage.changed:
            document = usage_document(guardrails, now)
            link.announce(topic, json.dumps(document, separators=(",", ":")).encode())
            store.save(guardrails.usage)
            first = False
        await asyncio.sleep(USAGE_INTERVAL)
