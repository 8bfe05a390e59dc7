"""Spend guardrails: allowed models, output caps and daily token budgets (pure).

The rules come from ``limits`` (the whole bridge) and from each profile's
``limits``; where both speak, both hold (a model must be allowed by both, the
lower cap wins, every budget must have room). :class:`Guardrails` checks one
``response.create`` against them before anything goes upstream, against the
day's usage of every instance on the prefix
(:class:`~bridge.protocol.shared_usage.SharedUsage`); a :class:`UsageBook` is
one instance's tokens of one day, counted from the ``usage`` of every finished
response. Time comes in as an aware ``datetime``; nothing here reads a clock
or a file.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import TYPE_CHECKING, Any, Final, TypeGuard
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator

from bridge.protocol.encoding import compact
from bridge.protocol.error_codes import BUDGET_EXCEEDED, MODEL_NOT_ALLOWED

if TYPE_CHECKING:
    from bridge.protocol.shared_usage import SharedUsage

# Ids whose usage is kept one by one; the rest of the day's usage is summed as "(other)".
MAX_USAGE_IDS: Final = 10_000
OTHER_IDS: Final = "(other)"


class BudgetsConfig(BaseModel):
    """Daily token budgets (``limits.budgets``, or a profile's ``limits.budgets``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    tokens_per_day: int | None = Field(None, ge=0)
    """Tokens a day for each connection id (on every instance); null: no budget."""
    global_tokens_per_day: int | None = Field(None, ge=0)
    """Tokens a day for the whole bridge (every instance on the prefix) under `limits`, or for all
    the profile's ids together in a profile; null: no budget."""


class GuardrailsConfig(BaseModel):
    """The rules one scope sets: the bridge (``limits``) or a profile (``limits``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", use_attribute_docstrings=True)

    allowed_models: tuple[str, ...] | None = None
    """Model names or shell-style patterns this profile's requests may name (the bridge's
    `limits.allowed_models` must allow them too); null: any."""
    max_output_tokens: int | None = Field(None, ge=1)
    """Output tokens cap of this profile's requests (the lower of this and the bridge's wins);
    null: no cap."""
    budgets: BudgetsConfig = Field(default_factory=BudgetsConfig)
    """Daily token budgets of this profile's connections."""

    @property
    def active(self) -> bool:
        budgets = self.budgets
        return (
            self.allowed_models is not None
            or self.max_output_tokens is not None
            or budgets.tokens_per_day is not None
            or budgets.global_tokens_per_day is not None
        )


class BridgeBudgetsConfig(BudgetsConfig):
    """``limits.budgets``: the bridge's budgets, and when their days start."""

    timezone: str | None = None
    """IANA time zone (`Europe/Berlin`) in which budget days start at midnight; null: the
    system's."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown time zone {value!r} (an IANA name, e.g. Europe/Berlin)"
                ) from None
        return value


def local_time(epoch: float, timezone: str | None) -> datetime:
    """``epoch`` seconds as an aware time in ``timezone`` (None: the system's zone)."""
    if timezone is None:
        return datetime.fromtimestamp(epoch).astimezone()
    return datetime.fromtimestamp(epoch, ZoneInfo(timezone))


@dataclass(frozen=True, slots=True)
class Refusal:
    code: str
    message: str
    resets_at: str | None = None


@dataclass(frozen=True, slots=True)
class Checked:
    """A request that may go: its fields (capped), and the cap when it lowered one."""

    request: dict[str, Any]
    lowered_to: int | None = None


@dataclass(slots=True)
class Tokens:
    input: int = 0
    output: int = 0
    total: int = 0

    def add(self, other: Tokens) -> None:
        self.input += other.input
        self.output += other.output
        self.total += other.total

    def as_json(self) -> dict[str, int]:
        return {"input": self.input, "output": self.output, "total": self.total}


@dataclass(slots=True)
class UsageBook:
    """One day's tokens of one instance: the whole bridge, per profile, per connection id.

    Which day counts, and the other instances' books, are
    :class:`~bridge.protocol.shared_usage.SharedUsage`'s business.
    """

    day: date | None = None
    bridge: Tokens = field(default_factory=Tokens)
    profiles: dict[str, Tokens] = field(default_factory=dict)
    ids: dict[str, Tokens] = field(default_factory=dict)

    def charge(self, connection_id: str, profile: str, tokens: Tokens) -> None:
        self.bridge.add(tokens)
        self.profiles.setdefault(profile, Tokens()).add(tokens)
        if connection_id not in self.ids and len(self.ids) >= MAX_USAGE_IDS:
            connection_id = OTHER_IDS
        self.ids.setdefault(connection_id, Tokens()).add(tokens)

    def used_by(self, connection_id: str) -> int:
        tokens = self.ids.get(connection_id)
        return tokens.total if tokens is not None else 0

    def used_by_profile(self, profile: str) -> int:
        tokens = self.profiles.get(profile)
        return tokens.total if tokens is not None else 0


# A count of more tokens than this in one response is not believed (the largest
# context windows hold about a million): it, and any count that is not an integer
# from 0 up, is not taken as sent.
MAX_RESPONSE_TOKENS: Final = 10**9
# What a count the bridge cannot take is estimated from: this many bytes of the
# response's output (as compact UTF-8 JSON) per token, rounded up.
BYTES_PER_TOKEN: Final = 4
_USAGE_COUNTS: Final = ("input_tokens", "output_tokens", "total_tokens")


@dataclass(frozen=True, slots=True)
class ResponseUsage:
    """What one finished response counts against the budgets.

    ``carried``: the response had a ``usage`` object. ``problem``: why that
    usage (or its absence) was not taken as sent; None when it was.
    """

    tokens: Tokens
    carried: bool
    problem: str | None = None

    def as_json(self) -> dict[str, int]:
        """The counts under the names the Responses API gives them (answers)."""
        tokens = self.tokens
        return {
            "input_tokens": tokens.input,
            "output_tokens": tokens.output,
            "total_tokens": tokens.total,
        }


def usage_of(response: Mapping[str, Any]) -> ResponseUsage | None:
    """The usage of a finished response, checked: the one place usage is read.

    Counts that are integers from 0 to :data:`MAX_RESPONSE_TOKENS` are taken
    as sent. An output count that is not (missing, a float, a string,
    negative, too large), and a usage that is missing or not an object, count
    the output's size (:func:`output_estimate`); an input count that is not
    counts 0; the total is at least input plus output. None: the response
    carried no usage and has no output, so there is nothing to count.
    """
    usage = response.get("usage")
    if not isinstance(usage, dict):
        estimate = output_estimate(response)
        if usage is None and not estimate:
            return None
        problem = "it carried no usage" if usage is None else f"its usage is {_kind(usage)}"
        return ResponseUsage(Tokens(0, estimate, estimate), usage is not None, problem)
    counts: dict[str, int] = {}
    problems = []
    for name in _USAGE_COUNTS:
        value = usage.get(name)
        if _is_count(value):
            counts[name] = value
        elif name in usage or name != "total_tokens":
            problems.append(f"{name} is {_kind(value) if name in usage else 'missing'}")
    input_tokens = counts.get("input_tokens", 0)
    output_tokens = counts.get("output_tokens")
    if output_tokens is None:
        output_tokens = output_estimate(response)
    total = max(counts.get("total_tokens", 0), input_tokens + output_tokens)
    return ResponseUsage(
        Tokens(input_tokens, output_tokens, total), True, "; ".join(problems) or None
    )


def unreadable_usage(raw: bytes) -> ResponseUsage:
    """What a response whose end is not JSON counts: the whole event's size."""
    estimate = -(-len(raw) // BYTES_PER_TOKEN)
    return ResponseUsage(Tokens(0, estimate, estimate), False, "its end is not JSON")


def output_estimate(response: Mapping[str, Any]) -> int:
    """Tokens estimated from the size of a response's ``output`` (0 when it has none)."""
    output = response.get("output")
    if not output:
        return 0
    try:
        text = compact(output)
    except (ValueError, TypeError, RecursionError):
        return MAX_RESPONSE_TOKENS  # cannot be measured: it counts as the most
    return -(-len(text.encode("utf-8", "surrogatepass")) // BYTES_PER_TOKEN)


def _is_count(value: object) -> TypeGuard[int]:
    """An integer from 0 to :data:`MAX_RESPONSE_TOKENS` (a boolean is not one)."""
    return (
        isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_RESPONSE_TOKENS
    )


def _kind(value: object) -> str:
    """What a usage value is, in words (never its digits: they may be thousands)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "negative" if value < 0 else f"more than {MAX_RESPONSE_TOKENS:,}"
    if isinstance(value, float):
        return "not an integer"
    if value is None:
        return "null"
    if isinstance(value, str):
        return "a string"
    return "a list" if isinstance(value, list) else "an object"


def next_midnight(now: datetime) -> datetime:
    """The start of the next day in ``now``'s time zone (DST-aware)."""
    tomorrow = now.date() + timedelta(days=1)
    if isinstance(now.tzinfo, ZoneInfo):
        return datetime.combine(tomorrow, time(0), tzinfo=now.tzinfo)
    return datetime.combine(tomorrow, time(0)).astimezone()  # the system's zone


def day_end(now: datetime, day: date | None) -> datetime:
    """When the budgets' day ``day`` ends, seen at ``now``: the next midnight, or the end of
    a later day the usage still counts into (a clock that went back)."""
    if day is None or day <= now.date():
        return next_midnight(now)
    if isinstance(now.tzinfo, ZoneInfo):
        return next_midnight(datetime.combine(day, time(12), tzinfo=now.tzinfo))
    return next_midnight(datetime.combine(day, time(12)).astimezone())


def model_allowed(model: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in patterns)


class Guardrails:
    """The bridge's rules and each profile's, applied to one request at a time."""

    def __init__(
        self,
        bridge: GuardrailsConfig,
        profiles: Mapping[str, GuardrailsConfig],
        usage: SharedUsage,
    ) -> None:
        self.usage = usage
        self.configure(bridge, profiles)

    def configure(self, bridge: GuardrailsConfig, profiles: Mapping[str, GuardrailsConfig]) -> None:
        """Apply these rules from now on (a reloaded config); today's usage stays."""
        self.bridge = bridge
        self.profiles = {name: rules for name, rules in profiles.items() if rules.active}
        self.active = bridge.active or bool(self.profiles)
        self.counts_usage = any(
            rules.budgets.tokens_per_day is not None
            or rules.budgets.global_tokens_per_day is not None
            for rules in (bridge, *self.profiles.values())
        )

    def check(
        self, connection_id: str, profile: str, request: dict[str, Any], now: datetime
    ) -> Checked | Refusal:
        """Whether ``request`` (the fields of a response.create) may go, and as what."""
        scopes = [self.bridge] + ([self.profiles[profile]] if profile in self.profiles else [])
        model = request.get("model")
        for rules in scopes:
            if rules.allowed_models is not None and not (
                isinstance(model, str) and model_allowed(model, rules.allowed_models)
            ):
                named = f"model {model!r}" if isinstance(model, str) else "a request with no model"
                allowed = ", ".join(rules.allowed_models) or "none"
                return Refusal(MODEL_NOT_ALLOWED, f"{named} is not allowed (allowed: {allowed})")
        refusal = self._budget_refusal(connection_id, profile, now)
        if refusal is not None:
            return refusal
        caps = [rules.max_output_tokens for rules in scopes if rules.max_output_tokens is not None]
        if not caps:
            return Checked(request)
        cap = min(caps)
        asked = request.get("max_output_tokens")
        if isinstance(asked, int) and not isinstance(asked, bool) and asked <= cap:
            return Checked(request)
        lowered = cap if asked is not None else None  # a missing field is filled, not lowered
        return Checked({**request, "max_output_tokens": cap}, lowered)

    def spent(self, connection_id: str, profile: str, now: datetime) -> Refusal | None:
        """A ``budget_exceeded`` refusal if a budget covering this id is used up, else None."""
        return self._budget_refusal(connection_id, profile, now)

    def _budget_refusal(self, connection_id: str, profile: str, now: datetime) -> Refusal | None:
        if not self.counts_usage:
            return None
        usage = self.usage  # every instance's usage of the day
        usage.roll(now.date())
        checks: list[tuple[int | None, int, str]] = [
            (self.bridge.budgets.global_tokens_per_day, usage.used(), "the bridge's daily"),
            (self.bridge.budgets.tokens_per_day, usage.used_by(connection_id), "this id's daily"),
        ]
        rules = self.profiles.get(profile)
        if rules is not None:
            checks += [
                (
                    rules.budgets.global_tokens_per_day,
                    usage.used_by_profile(profile),
                    f"profile {profile!r}'s daily",
                ),
                (
                    rules.budgets.tokens_per_day,
                    usage.used_by(connection_id),
                    f"profile {profile!r}'s per-id daily",
                ),
            ]
        for limit, used, name in checks:
            if limit is not None and used >= limit:
                resets_at = day_end(now, usage.day).isoformat()
                return Refusal(
                    BUDGET_EXCEEDED,
                    f"{name} budget of {limit} tokens is used up ({used} used); "
                    f"it resets at {resets_at}",
                    resets_at,
                )
        return None
