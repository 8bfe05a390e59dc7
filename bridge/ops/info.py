"""``P/bridge/info``: what the bridge is and how it is doing, as one retained JSON object.

Pure: the running tallies (tokens, the last error) and the document built
from them. :mod:`bridge.ops` feeds the tallies and publishes the document.
Nothing secret is ever put in it: the config summary names no credential,
the upstream URL is the redacted one the acks carry, and every string of the
document is scrubbed by value with the settings' redactor at the end.
"""

from __future__ import annotations

import datetime
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from bridge import __version__
from bridge.config.settings import Settings
from bridge.protocol.guardrails import Tokens
from bridge.protocol.shared_usage import SharedUsage

MAX_ERROR_MESSAGE: Final = 200  # HA keeps at most 255 characters of a sensor's state


@dataclass
class Tally:
    """Counts since this process started that the info document shows.

    The day's tokens are not here: ``tokens_today`` is the budgets' figure, every
    instance's usage of the day (:class:`~bridge.protocol.shared_usage.SharedUsage`),
    which survives restarts.
    """

    tokens_total: int = 0
    responses_completed: int = 0
    last_error: dict[str, Any] | None = None
    revision: int = 0  # bumped on every change: the publisher compares it

    def add_usage(self, tokens: Tokens) -> None:
        """A response completed with these ``tokens`` (as the budgets counted them)."""
        self.tokens_total += tokens.total
        self.responses_completed += 1
        self.revision += 1

    def note_error(self, code: str, message: str, connection_id: str | None, at: str) -> None:
        if len(message) > MAX_ERROR_MESSAGE:
            message = message[: MAX_ERROR_MESSAGE - 1] + "…"
        self.last_error = {
            "code": code,
            "message": message,
            "connection_id": connection_id,
            "at": at,
        }
        self.revision += 1


_MODEL = re.compile(rb'"model"\s*:\s*"([^"\\]{1,100})"')


def model_of(raw: bytes) -> str:
    """The model of a completed response (its first ``"model"`` field), or "unknown"."""
    match = _MODEL.search(raw, 0, 4096)  # the response object names it near the start
    return match.group(1).decode("utf-8", "replace") if match else "unknown"


def info_document(
    settings: Settings,
    tally: Tally,
    usage: SharedUsage,
    *,
    started_at: float,
    uptime: float,
    connections: int,
    broker_connects: int,
    buffer_waits: int,
    usage_file: str | None = None,
    mcp_servers: Mapping[str, Mapping[str, object]] | None = None,
) -> dict[str, Any]:
    """The retained ``P/bridge/info`` object, every secret the bridge knows scrubbed from it.

    ``usage``: the day's usage of every instance (``tokens_today``, as the budgets count
    it); ``usage_file``: what is wrong with ``usage.json``, if anything; ``mcp_servers``:
    each MCP server's state and the tools it offers now.
    """
    config = settings.config
    day = usage.day or datetime.date.today()
    document = {
        "version": __version__,
        "started_at": iso_time(started_at),
        "uptime_seconds": round(uptime),
        "connections": connections,
        "max_connections": config.limits.max_connections,
        "tokens_today": usage.used(),
        "tokens_day": day.isoformat(),
        "tokens_total": tally.tokens_total,
        "responses_completed": tally.responses_completed,
        "assistants": {
            connection_id: {"tokens_today": usage.used_by(connection_id)}
            for connection_id in config.homeassistant.assistants
        },
        # The profiles' names (never their requests): what a client such as the Home
        # Assistant integration lets its user choose from.
        "profiles": sorted(config.profiles),
        "usage_file": usage_file or "ok",
        "last_error": tally.last_error,
        "broker_connects": broker_connects,
        "buffer_waits": buffer_waits,
        "mcp_servers": {name: dict(report) for name, report in (mcp_servers or {}).items()},
        "config": _config_summary(settings),
    }
    scrubbed: dict[str, Any] = settings.redactor.redact_json(document)
    return scrubbed


def _config_summary(settings: Settings) -> dict[str, Any]:
    """What of the config ``P/bridge/info`` shows: where the bridge connects, no secret."""
    config = settings.config
    return {
        "mqtt": {
            "host": config.mqtt.host,
            "port": config.mqtt.port,
            "protocol": config.mqtt.protocol,
            "tls": config.mqtt.tls.enabled,
            "topic_prefix": config.mqtt.topic_prefix,
            "client_id": config.mqtt.client_id,
            "qos": config.mqtt.qos,
        },
        "openai": {
            "websocket_url": settings.endpoint.display_url,
            "api_key": settings.api_key is not None,  # whether one is set, never which
        },
        "limits": config.limits.model_dump(mode="json"),
        "metrics": config.metrics.enabled,
        "homeassistant_discovery": config.homeassistant.discovery,
    }


def iso_time(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC with a ``Z``, to the second."""
    moment = datetime.datetime.fromtimestamp(timestamp, datetime.UTC)
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")
