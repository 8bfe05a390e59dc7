"""What a connection publishes besides its events: the ``output`` options (pure).

A profile's ``output:`` gives the defaults; a ``connect`` (or an ``ask`` that
opens its connection) may override any of them with an ``"output": {...}``
object. :class:`OutputConfig` is both, validated once; the merged options of a
connection are fixed when it opens.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from bridge.errors import CommandError
from bridge.protocol.error_codes import INVALID_COMMAND
from bridge.protocol.strict_json import elide
from bridge.protocol.text_chunks import TextSplit

# Smallest chunk limit: room for the longest UTF-8 character, several times over.
MIN_TEXT_MAX_BYTES: Final = 16


class OutputConfig(BaseModel):
    """The topics one connection publishes on, and how (``output`` of a profile)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", strict=True, use_attribute_docstrings=True
    )

    events: bool = True
    """The server events on `P/<id>/events`; acks, errors and `disconnected` go there whatever this
    says."""
    text: bool = False
    """The answer's text on `P/<id>/text`: plain UTF-8 chunks, in order (text and refusal deltas,
    never reasoning)."""
    answer: bool = False
    """One compact JSON object on `P/<id>/answer` per request that produced a response or an
    error."""
    status: bool = False
    """The connection's state on `P/<id>/status`, one retained word: `ready`, `thinking`,
    `streaming` or `closed`."""
    text_max_bytes: int = Field(200, ge=0, le=1 << 20)
    """Payload bytes per text chunk (0: no limit, else at least 16); never splits a UTF-8
    character. 200 fits PubSubClient's default 256-byte buffer with an id of up to 41
    characters."""
    text_split: TextSplit = "word"
    """Where chunks end: `word` (after whitespace or any CJK character) or `sentence` (after `.`,
    `!` or `?` and a space, the CJK full stop, exclamation and question marks, or a line break),
    where the limit allows."""
    text_flush_ms: int = Field(100, ge=0, le=10_000)
    """Milliseconds deltas are gathered into one chunk."""
    status_heartbeat: float = Field(2.0, ge=0.1, le=3600)
    """Seconds between repeats of `thinking` while no text arrives."""

    @field_validator("text_max_bytes")
    @classmethod
    def _room_for_a_character(cls, value: int) -> int:
        if 0 < value < MIN_TEXT_MAX_BYTES:
            raise ValueError(f"must be 0 (no limit) or at least {MIN_TEXT_MAX_BYTES}")
        return value

    @property
    def shaped(self) -> bool:
        """Anything but the plain relay of events: the connection takes the shaping path."""
        return self.text or self.answer or self.status or not self.events

    def merged(self, override: Mapping[str, Any] | None) -> OutputConfig:
        """These options with a command's ``output`` object over them."""
        if not override:
            return self
        return OutputConfig.model_validate({**self.model_dump(), **override})


def output_override(document: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``output`` object of a ``connect`` or ``ask``, checked; None if absent.

    Raises ``CommandError(invalid_command)`` naming the first problem.
    """
    override = document.get("output")
    if override is None:
        return None
    if not isinstance(override, dict):
        raise CommandError(INVALID_COMMAND, "output must be an object of output options")
    try:
        OutputConfig.model_validate(override)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise CommandError(INVALID_COMMAND, f"output.{elide(where)}: {error['msg']}") from None
    return override
