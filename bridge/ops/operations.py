"""Operations: how a running bridge reports itself to systemd, MQTT, Home Assistant, Prometheus.

:class:`Operations` is built first, from the settings: it is the
:class:`~bridge.ops.observer.Observer` the daemon's :class:`~bridge.daemon.service.Service`
is given, and reads what happened from the typed outcome of each message the
bridge publishes (never its JSON). :meth:`Operations.running` then reports on
that service beside it:

- systemd: ``READY=1``, a ``STATUS=`` line on every change of the broker link
  or the connection count, ``WATCHDOG=1`` while healthy, ``STOPPING=1``;
- ``P/bridge/info``, retained, published on connect (once the day's usage is
  read back: :attr:`~bridge.daemon.usage_sharing.UsageSharing.settled`) and
  on every change, at most once a second (bursts are coalesced);
- Home Assistant discovery (``homeassistant.discovery``), published again
  when Home Assistant says ``online``;
- Prometheus metrics (``metrics.enabled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Final

from bridge.config.settings import Settings, instance_name
from bridge.errors import ConfigError
from bridge.ops import systemd
from bridge.ops.discovery import discovery_messages, info_topic, status_topic
from bridge.ops.info import Tally, info_document, iso_time, model_of
from bridge.ops.observer import Observer, RunningBridge
from bridge.protocol import contract
from bridge.protocol.contract import RESERVED_ID, Topics
from bridge.protocol.messages import (
    Acknowledged,
    Outcome,
    Refused,
    ResponseCompleted,
    ToolCalled,
    UpstreamClosed,
    UsageDoubted,
)

if TYPE_CHECKING:
    from bridge.mqtt.link import MqttLink
    from bridge.ops.metrics import Metrics

logger = logging.getLogger(__name__)

INFO_MIN_INTERVAL: Final = 1.0  # seconds between two P/bridge/info publishes, at least
TICK: Final = 1.0  # seconds between looks at the broker link and the clock


class Operations(Observer):
    """The operations side of one bridge: the observer of its service, and its reporters."""

    def __init__(self, settings: Settings, environ: Mapping[str, str]) -> None:
        self.settings = settings
        config = settings.config
        topics = Topics(config.mqtt.topic_prefix)
        self.info_topic = info_topic(topics)
        # Several instances: each also keeps its own document under its presence topic.
        self.instance_info_topic = (
            f"{topics.prefix}/{RESERVED_ID}/instances/{instance_name(config)}/info"
            if config.cluster.enabled
            else None
        )
        self.tally = Tally()
        self.started_at = time.time()
        self._started = time.monotonic()
        self._changed = asyncio.Event()
        self._changed.set()  # the first look is at once
        self.watchdog_interval = systemd.watchdog_interval(environ)
        self.metrics: Metrics | None = None
        self._service: RunningBridge | None = None  # the one reported on (running)
        self._status = ""  # the last STATUS= line systemd was told
        if config.metrics.enabled:
            from bridge.ops.metrics import Metrics  # the [metrics] extra: imported only when asked

            self.metrics = Metrics()
        self.discovery: list[tuple[str, bytes]] = []
        if config.homeassistant.discovery:
            self.discovery = discovery_messages(config, topics)
        self._reloads = 0

    # Observer ------------------------------------------------------------------------

    @property
    def publish_latency(self) -> Callable[[float], None] | None:
        return self.metrics.publish_latency.observe if self.metrics is not None else None

    def connections_changed(self, count: int) -> None:
        self._changed.set()

    def observe(self, outcome: Outcome) -> None:
        """Count answers by action and result and closes by code; keep the last error; add up
        the usage of completed responses."""
        metrics = self.metrics
        match outcome:
            case Acknowledged(action=action):
                if metrics is not None:
                    metrics.command(action, "ok")
            case Refused(connection_id, rejection):
                if metrics is not None:
                    # An invalid server event answers no command: its action is null, "unknown".
                    metrics.command(rejection.action or "unknown", rejection.code)
                self._note_error(rejection.code, rejection.message, connection_id)
            case UpstreamClosed(connection_id, code, reason):
                if metrics is not None:
                    metrics.upstream_closed(code)
                    if outcome.answered_command:
                        metrics.command(contract.CLOSE, "ok")
                if outcome.disconnected and code != contract.DEFAULT_CLOSE_CODE:
                    self._note_error("disconnected", f"{code} {reason}".strip(), connection_id)
            case ResponseCompleted():
                self._completed(outcome)
            case UsageDoubted(connection_id, problem):
                _usage_doubted(connection_id, problem)
            case ToolCalled(connection_id, name, call_id, topic, status, arguments):
                logger.info(
                    "[%s] tool %s (call %s) on %s: %s", connection_id, name, call_id, topic, status
                )
                logger.debug("[%s] tool %s arguments: %s", connection_id, name, arguments)
                if metrics is not None:
                    metrics.tool_called(name, status)

    def error(self, code: str, message: str) -> None:
        self._note_error(code, message, None)
        self._changed.set()  # the owner must see it now

    def _completed(self, outcome: ResponseCompleted) -> None:
        """A response completed: its tokens, as the budgets counted them."""
        connection_id, tokens = outcome.connection_id, outcome.tokens
        if outcome.usage_problem is not None:
            _usage_doubted(connection_id, outcome.usage_problem)
        if self.metrics is not None:
            self.metrics.completed(tokens, connection_id, model_of(outcome.raw))
        if tokens is not None:
            self.tally.add_usage(tokens)
            self._changed.set()

    def _note_error(self, code: str, message: str, connection_id: str | None) -> None:
        self.tally.note_error(code, message, connection_id, iso_time(time.time()))
        self._changed.set()

    def reconfigure(self, settings: Settings, service: RunningBridge) -> None:
        """A reloaded config: Home Assistant discovery published again as it now says (the
        entities it no longer names are removed), and ``P/bridge/info`` too."""
        self.settings = settings
        config, link = settings.config, service.link
        before = {topic for topic, _ in self.discovery}
        self.discovery = []
        if config.homeassistant.discovery:
            self.discovery = discovery_messages(config, Topics(config.mqtt.topic_prefix))
        for topic in before - {topic for topic, _ in self.discovery}:
            link.retract(topic)
        for topic, payload in self.discovery:
            link.announce(topic, payload)
        if self.discovery:
            link.listen(
                status_topic(config), lambda payload: _on_homeassistant_status(link, payload)
            )
        self._reloads += 1
        self._changed.set()

    # Lifecycle -----------------------------------------------------------------------

    def ready(self) -> None:
        """The broker is connected and ``P/+/cmd`` subscribed: tell systemd, with the status
        line in the same message (``systemctl enable --now`` returns with it shown)."""
        if self._service is None:
            systemd.notify("READY=1")
        else:
            self._status = self.status_line(self._service)
            systemd.notify(f"READY=1\nSTATUS={self._status}")
        self._changed.set()

    def stopping(self) -> None:
        systemd.notify("STOPPING=1\nSTATUS=stopping: closing upstream connections")

    @contextlib.asynccontextmanager
    async def running(self, service: RunningBridge) -> AsyncIterator[None]:
        """Report on ``service`` (the one this observes) while the body runs it.

        Enter before the service runs: Home Assistant's status topic is
        subscribed from the first connect on.
        """
        config = self.settings.config
        link = service.link
        self._service = service
        if self.metrics is not None:
            try:
                await self.metrics.serve(service, config.metrics.host, config.metrics.port)
            except OSError as exc:
                raise ConfigError(
                    "metrics.port",
                    f"cannot listen on {config.metrics.host}:{config.metrics.port}: "
                    f"{exc.strerror or exc}",
                ) from None
            logger.info("metrics at http://%s:%d/metrics", config.metrics.host, config.metrics.port)
        for topic, payload in self.discovery:
            link.announce(topic, payload)
        if self.discovery:
            link.listen(
                status_topic(config), lambda payload: _on_homeassistant_status(link, payload)
            )
            logger.info(
                "Home Assistant discovery: %d entities under %s/",
                len(self.discovery),
                config.homeassistant.prefix,
            )
        tasks = [asyncio.create_task(self._report(service), name="bridge.ops.operations.report")]
        if self.watchdog_interval is not None:
            logger.info(
                "systemd watchdog: a ping every %.1fs while the broker link is up",
                self.watchdog_interval,
            )
            tasks.append(
                asyncio.create_task(
                    systemd.watchdog(self.watchdog_interval, service.link.connected.is_set),
                    name="bridge.ops.operations.watchdog",
                )
            )
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.metrics is not None:
                await self.metrics.close()

    # Reporting -----------------------------------------------------------------------

    def status_line(self, service: RunningBridge) -> str:
        """The one-line ``STATUS=`` text systemctl shows."""
        count = service.connection_count
        connections = f"{count} connection{'' if count == 1 else 's'} open"
        mqtt = self.settings.config.mqtt
        if service.ready.is_set():
            return f"broker connected; {connections}"
        if service.link.connected.is_set():
            return "broker connected; calling the roll of the bridges on this prefix"
        if service.link.connects == 0:
            return f"connecting to the broker at {mqtt.host}:{mqtt.port}"
        return f"broker unreachable, reconnecting; {connections}"

    def info_payload(self, service: RunningBridge) -> bytes:
        document = info_document(
            self.settings,
            self.tally,
            service.usage,
            started_at=self.started_at,
            uptime=time.monotonic() - self._started,
            connections=service.connection_count,
            broker_connects=service.link.connects,
            buffer_waits=service.buffer_waits,
            usage_file=service.usage_problem,
            mcp_servers=service.mcp_servers,
        )
        return json.dumps(document, separators=(",", ":")).encode()

    async def _report(self, service: RunningBridge) -> None:
        """Send STATUS= and republish P/bridge/info on change; never more than once a second."""
        published: tuple[object, ...] = ()
        while True:
            await self._next_change(service)
            self._changed.clear()
            line = self.status_line(service)
            if line != self._status:
                systemd.notify(f"STATUS={line}")
                self._status = line
            state = (
                service.ready.is_set(),
                service.link.connects,  # broker_connects
                service.connection_count,
                self.tally.revision,
                service.usage.revision,  # tokens_today: every instance's
                service.usage_problem,
                service.buffer_waits,
                self._reloads,
                repr(service.mcp_servers),  # a server up or down, its tools listed again
            )
            # Only a serving bridge speaks for the prefix: one that joins, or was refused
            # because another serves it, must not write over that one's document. And not
            # before our retained usage is read back: a restart that lost usage.json would
            # show tokens_today 0 first, and Home Assistant would take it for a reset.
            serving = service.ready.is_set() and service.usage_settled
            if state != published and serving:
                published = state
                payload = self.info_payload(service)
                service.link.announce(self.info_topic, payload)
                if self.instance_info_topic is not None:
                    service.link.announce(self.instance_info_topic, payload)
                await asyncio.sleep(INFO_MIN_INTERVAL)

    async def _next_change(self, service: RunningBridge) -> None:
        """Wait for a poke, the broker link coming up, or the next tick."""
        waits = [asyncio.ensure_future(self._changed.wait())]
        if not service.ready.is_set():
            waits.append(asyncio.ensure_future(service.ready.wait()))
        try:
            await asyncio.wait(waits, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


def _on_homeassistant_status(link: MqttLink, payload: bytes) -> None:
    if payload.strip().lower() == b"online":
        logger.info("Home Assistant is online: announcing the bridge again")
        link.reannounce()


def _usage_doubted(connection_id: str, problem: str) -> None:
    logger.warning(
        "[%s] the upstream's usage was not taken as sent: %s "
        "(said once per connection; Spend guardrails in the README)",
        connection_id,
        problem,
    )
