"""``systemctl reload`` (SIGHUP): read the config again and apply what can change live.

What changes live, without dropping a connection or a conversation:
``profiles`` (their requests, output defaults, limits and tools), ``sessions``,
``limits`` (budgets included; today's usage is kept), ``tools``, ``logging``,
``shutdown``, ``mqtt.response_topics`` and Home Assistant discovery
(``homeassistant.discovery`` and ``.assistants``: published again, entities no
longer named removed). A connection keeps the profile and output options it
opened with; the next one gets the new ones.

What needs a restart (:data:`RESTART_ONLY`): the broker (every other ``mqtt`` key),
the upstream (``openai``), the cluster identity, ``metrics``, ``state_dir``,
``homeassistant.prefix``, ``mcp_servers`` (a profile's list of them is live), and
the secrets (the API key, the broker password and TLS key: where they come from
and what they are). A reload that changes any of
them applies the rest and names them in one WARNING; the running values stay.

A config that fails to load (or that does not fit the running one) changes
nothing: one ERROR names the problem. Check a new file first with
``openai-mqtt-bridge check-config --config FILE``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from bridge.config.settings import Config, Settings, load_settings, parse_config
from bridge.daemon import logs
from bridge.errors import ConfigError
from bridge.ops import systemd

if TYPE_CHECKING:
    from bridge.config.secrets import Secret
    from bridge.daemon.service import Service
    from bridge.ops.operations import Operations

logger = logging.getLogger(__name__)

# Dotted keys (or whole sections) a reload cannot apply; LIVE_INSIDE are exceptions.
RESTART_ONLY: Final = (
    "mqtt",
    "openai",
    "cluster",
    "metrics",
    "state_dir",
    "homeassistant.prefix",
    "mcp_servers",
)
LIVE_INSIDE: Final = ("mqtt.response_topics",)
SECRETS: Final = {
    "api_key": "the API key",
    "mqtt_password": "the broker password",
    "mqtt_tls_key": "the broker TLS client key",
}


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """A config dump as dotted keys; lists and leaves stay whole."""
    if isinstance(value, Mapping) and value:
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: value}


def _under(key: str, paths: tuple[str, ...]) -> bool:
    return any(key == path or key.startswith(path + ".") for path in paths)


def changed_keys(old: Config, new: Config) -> list[str]:
    """Every dotted key whose value differs, in a stable order."""
    before, after = flatten(old.model_dump(mode="json")), flatten(new.model_dump(mode="json"))
    return sorted(key for key in before.keys() | after.keys() if before.get(key) != after.get(key))


def restart_only_changes(old: Settings, new: Settings) -> list[str]:
    """What changed that only a restart applies: dotted keys, and the secrets by name."""
    keys = [
        key
        for key in changed_keys(old.config, new.config)
        if _under(key, RESTART_ONLY) and not _under(key, LIVE_INSIDE)
    ]
    for field, name in SECRETS.items():
        if _secret(getattr(old, field)) != _secret(getattr(new, field)):
            keys.append(name)
    return keys


def _secret(secret: Secret | None) -> tuple[str, str] | None:
    return None if secret is None else (secret.source, secret.value)


def running_config(old: Config, new: Config) -> Config:
    """``new``, but with the restart-only keys as they run now; ConfigError if the two do
    not hold together (a tool topic under the running prefix, say)."""
    fields = {name: getattr(new, name) for name in Config.model_fields}
    for name in ("mqtt", "openai", "cluster", "metrics", "state_dir", "mcp_servers"):
        fields[name] = getattr(old, name)
    fields["mqtt"] = old.mqtt.model_copy(update={"response_topics": new.mqtt.response_topics})
    fields["homeassistant"] = new.homeassistant.model_copy(
        update={"prefix": old.homeassistant.prefix}
    )
    return parse_config(fields)


class Reloader:
    """Reloads one running bridge's config from its file (what SIGHUP does)."""

    def __init__(
        self,
        service: Service,
        path: Path | None,
        environ: Mapping[str, str],
        operations: Operations | None = None,
    ) -> None:
        self.service = service
        self.path = path
        self.environ = environ
        self.operations = operations

    def reload(self) -> bool:
        """Read the file again and apply it; False (and one ERROR) if it was refused.

        systemd hears ``RELOADING=1`` first and ``READY=1`` when it is done, either
        way; not before the bridge was first ready (that READY=1 is the broker's to give).
        """
        tell = self.service.link.connects > 0
        if tell:
            now = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
            systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={now}")
        try:
            return self._reload()
        finally:
            if tell:
                systemd.notify("READY=1")

    def _reload(self) -> bool:
        running = self.service.settings
        where = str(self.path) if self.path is not None else "the defaults"
        try:
            loaded = load_settings(self.path, self.environ)
            config = running_config(running.config, loaded.config)
        except ConfigError as exc:
            logger.error("reload refused, the running config is kept: config error: %s", exc)
            return False
        restart = restart_only_changes(running, loaded)
        live = sorted({key.split(".", 1)[0] for key in changed_keys(running.config, config)})
        settings = dataclasses.replace(running, config=config, sources=loaded.sources)
        logs.reconfigure(config.logging.level, config.logging.format)
        self.service.reconfigure(settings)
        if self.operations is not None:
            self.operations.reconfigure(settings, self.service)
        logger.info(
            "config reloaded from %s: %s",
            where,
            f"{', '.join(live)} changed" if live else "nothing that applies live changed",
        )
        if restart:
            logger.warning(
                "config reloaded, but a restart is needed to apply %s "
                "(systemctl restart openai-mqtt-bridge); until then the running values stay",
                ", ".join(restart),
            )
        return True
