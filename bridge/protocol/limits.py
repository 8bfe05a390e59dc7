"""What clients may ask of the bridge, and the per-id bookkeeping that holds them to it.

:class:`LimitsConfig` is the config section ``limits``, defined once: the
daemon's config reads it from YAML, and the core takes it as it is (a frozen,
validated object). :class:`RateLimiter` and :class:`RecentCommands` keep the
per connection id state, with no I/O: time is passed in (``now``, monotonic
seconds), so the core stays pure and tests never sleep. Both forget ids that
have been quiet, so a flood of random ids cannot grow them without bound.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bridge.protocol.guardrails import BridgeBudgetsConfig, BudgetsConfig, GuardrailsConfig

MIB: Final = 1024 * 1024
MAX_TRACKED_IDS: Final = 10_000  # beyond this the quietest ids are forgotten first


class LimitsConfig(BaseModel):
    """What one client may ask of the bridge (config section ``limits``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    max_connections: int = Field(100, ge=1)
    """Open upstream connections across the bridge; past it `limit_reached`."""
    max_command_bytes: int = Field(MIB, ge=1024)
    """Largest command; past it `payload_too_large`."""
    allowed_event_types: tuple[str, ...] = ("response.create",)
    """Client event types a `send` may carry; others are `event_type_not_allowed`."""
    commands_per_second: float = Field(10.0, gt=0)
    """Commands per second per connection id; the excess is answered `rate_limited`, never
    queued."""
    command_burst: int = Field(20, ge=1)
    """Commands per connection id allowed at once, above the rate."""
    dedupe_seconds: float = Field(30.0, ge=0)
    """Window in which a QoS 1 redelivery (same id, same `request_id`, same bytes) is not carried
    out again; 0: no window."""
    event_buffer_wait: float = Field(30.0, gt=0)
    """Seconds a stream waits for room in the event buffer before its connection is ended (1013)."""
    max_waiting_bytes: int = Field(16 * MIB, ge=64 * 1024)
    """Commands waiting across the bridge (backlogs, and sends not yet written upstream), in
    characters of their JSON; past it `limit_reached`. At least `max_command_bytes`."""
    allowed_models: tuple[str, ...] | None = None
    """Model names or shell-style patterns a request may name (else `model_not_allowed`); null: any
    model."""
    max_output_tokens: int | None = Field(None, ge=1)
    """The most output tokens any request gets: a request without it gets it, one asking for more
    is lowered to it; null: no cap."""
    budgets: BridgeBudgetsConfig = Field(default_factory=BridgeBudgetsConfig)
    """Daily token budgets of the bridge, and when their days start."""

    @property
    def guardrails(self) -> GuardrailsConfig:
        """The bridge-wide rules, in the shape a profile's ``limits`` has."""
        budgets = BudgetsConfig(
            tokens_per_day=self.budgets.tokens_per_day,
            global_tokens_per_day=self.budgets.global_tokens_per_day,
        )
        return GuardrailsConfig(
            allowed_models=self.allowed_models,
            max_output_tokens=self.max_output_tokens,
            budgets=budgets,
        )

    @model_validator(mode="after")
    def _one_command_fits(self) -> LimitsConfig:
        if self.max_waiting_bytes < self.max_command_bytes:
            raise ValueError("max_waiting_bytes must be at least max_command_bytes")
        return self


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """A token bucket per connection id: ``rate`` commands/s, bursts of ``burst``."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate = rate
        self.burst = burst
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def __len__(self) -> int:
        """How many ids are tracked."""
        return len(self._buckets)

    def allow(self, connection_id: str, now: float) -> bool:
        """Take one token for ``connection_id``; False if its bucket is empty."""
        bucket = self._buckets.get(connection_id)
        if bucket is None:
            bucket = self._buckets[connection_id] = _Bucket(float(self.burst), now)
            if len(self._buckets) > MAX_TRACKED_IDS:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(connection_id)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
            bucket.updated = now
        if bucket.tokens < 1.0:
            return False
        bucket.tokens -= 1.0
        return True


class RecentCommands:
    """Commands seen in the last ``window`` seconds, to spot QoS 1 redeliveries.

    A command counts as seen again when it has the same connection id, the
    same ``request_id`` and the same bytes: a redelivered PUBLISH is
    byte-identical, while a client reusing a request_id for a new command is
    not. Commands without a request_id are never treated as repeats.
    """

    def __init__(self, window: float) -> None:
        self.window = window
        self._seen: OrderedDict[tuple[str, str, bytes], float] = OrderedDict()

    def __len__(self) -> int:
        """How many commands are remembered."""
        return len(self._seen)

    def seen_before(self, connection_id: str, request_id: str, payload: bytes, now: float) -> bool:
        """Record the command; True if the same one was recorded within the window."""
        self._expire(now)
        key = (connection_id, request_id, hashlib.blake2b(payload, digest_size=16).digest())
        if key in self._seen:
            return True
        self._seen[key] = now
        if len(self._seen) > MAX_TRACKED_IDS:
            self._seen.popitem(last=False)
        return False

    def _expire(self, now: float) -> None:
        seen = self._seen
        while seen:
            oldest = next(iter(seen.values()))
            if now - oldest <= self.window:
                return
            seen.popitem(last=False)
