"""The ``P/bridge/usage`` document: the day's tokens of every instance on the prefix, each
instance's share, and what each budget has left (pure)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Final

from bridge.protocol.contract import RESERVED_ID, Topics
from bridge.protocol.guardrails import Guardrails, GuardrailsConfig, day_end

TOP_IDS: Final = 20  # the busiest ids listed one by one; the document stays small


def usage_topic(topics: Topics) -> str:
    """``P/bridge/usage``: reserved by the contract, like ``P/bridge/info``."""
    return f"{topics.prefix}/{RESERVED_ID}/usage"


def usage_document(guardrails: Guardrails, now: datetime) -> dict[str, Any]:
    """What ``P/bridge/usage`` says at ``now`` (local time of the budgets' zone)."""
    usage = guardrails.usage
    usage.roll(now.date())
    totals = usage.totals()  # every instance's
    busiest = sorted(totals.ids.items(), key=lambda item: item[1].total, reverse=True)[:TOP_IDS]
    budgets: list[dict[str, Any]] = []
    _add_budgets(budgets, "bridge", None, guardrails.bridge, totals.bridge.total, busiest)
    for name, rules in guardrails.profiles.items():
        _add_budgets(budgets, "profile", name, rules, totals.used_by_profile(name), busiest)
    day = usage.day or now.date()  # a clock that went back: the later day still counts
    return {
        "day": day.isoformat(),
        "resets_at": day_end(now, day).isoformat(),
        "tokens": totals.bridge.as_json(),
        "ids": {name: tokens.as_json() for name, tokens in busiest},
        "id_count": len(totals.ids),
        "profiles": {name: tokens.as_json() for name, tokens in totals.profiles.items()},
        "instances": {name: {"tokens": share.as_json()} for name, share in usage.shares().items()},
        "budgets": budgets,
    }


def _add_budgets(
    budgets: list[dict[str, Any]],
    scope: str,
    name: str | None,
    rules: GuardrailsConfig,
    used: int,
    busiest: list[Any],
) -> None:
    """The budgets of one scope; a per-id budget lists what the busiest ids have left
    (for the bridge's; a profile's per-id budget does not know which ids are its own)."""
    where = {"scope": scope} if name is None else {"scope": scope, "profile": name}
    limit = rules.budgets.global_tokens_per_day
    if limit is not None:
        left = max(0, limit - used)
        budgets.append({**where, "tokens_per_day": limit, "used": used, "left": left})
    per_id = rules.budgets.tokens_per_day
    if per_id is not None:
        budget: dict[str, Any] = {**where, "per_id": True, "tokens_per_day": per_id}
        if name is None:
            budget["left_by_id"] = {cid: max(0, per_id - tokens.total) for cid, tokens in busiest}
        budgets.append(budget)
