"""Keys that a given configuration sets but that do nothing in it (``check-config`` warns).

A key set to something other than its default whose feature is off is almost
always a mistake: the owner believes it acts. Each finding names the key and
what would make it act. Settings that are errors instead (cluster keys
without ``cluster.enabled``) are refused when the config is loaded.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator
from typing import Any

from pydantic import BaseModel

from bridge.config.settings import Config


def inert_keys(config: Config) -> list[str]:
    """One sentence per key that is set but has no effect, naming what would make it act."""
    return list(_findings(config))


def _findings(config: Config) -> Iterator[str]:
    mqtt = config.mqtt
    if not mqtt.tls.enabled:
        for key in _changed(mqtt.tls, exclude={"enabled"}):
            yield f"mqtt.tls.{key} has no effect: set mqtt.tls.enabled: true to use TLS"
    if mqtt.protocol == "3.1.1" and "response_topics" in _changed(mqtt):
        yield (
            "mqtt.response_topics has no effect: MQTT 3.1.1 has no Response Topic "
            '(set mqtt.protocol: "5")'
        )
    if not config.metrics.enabled:
        for key in _changed(config.metrics, exclude={"enabled"}):
            yield f"metrics.{key} has no effect: set metrics.enabled: true to serve metrics"
    budgets = config.limits.budgets
    if budgets.timezone is not None and not _any_budget(config):
        yield (
            "limits.budgets.timezone has no effect: no daily budget is set "
            "(limits.budgets or a profile's limits.budgets)"
        )
    if not config.tools and not config.mcp_servers:  # MCP calls count in the same loop
        for key in ("max_tool_rounds", "max_tool_calls"):
            if key in _changed(config.sessions):
                yield f"sessions.{key} has no effect: no `tools` are configured"


def _any_budget(config: Config) -> bool:
    scopes = [config.limits.budgets, *(p.limits.budgets for p in config.profiles.values())]
    return any(
        scope.tokens_per_day is not None or scope.global_tokens_per_day is not None
        for scope in scopes
    )


def _changed(section: BaseModel, *, exclude: Collection[str] = ()) -> list[str]:
    """The keys of ``section`` whose value is not the model's default."""
    defaults: dict[str, Any] = type(section)().model_dump()
    values = section.model_dump()
    return [key for key, value in values.items() if key not in exclude and value != defaults[key]]
