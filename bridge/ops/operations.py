"""Operations: how a running bridge reports itself to systemd, MQTT, Home Assistant, Prometheus.

:class:`Operations` observes the :class:`~bridge.service.Service` (it is its
:class:`~bridge.observer.Observer`) and runs beside it:

- systemd: ``READY=1``, a ``STATUS=`` line on every change of the broker link
  or the connection count, ``WATCHDOG=1`` while healthy, ``STOPPING=1``;
- ``P/bridge/info``, retained, published on connect and on every change,
  at most once a second (bursts are coalesced);
- Home Assistant discovery (``homeassistant.discovery``), published again
  when Home Assistant says ``online``;
- Prometheus metrics (``metrics.enabled``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING, Any, Final

from bridge.errors import ConfigError
from bridge.ops import systemd
from bridge.ops.discovery import discovery_messages, info_topic, status_topic
from bridge.ops.info import Tally, info_document, iso_time, usage_of
from bridge.ops.observer import Observer
from bridge.protocol import contract
from bridge.protocol.core import Publish

if TYPE_CHECKING:
    from bridge.daemon.service import Service
    from bridge.ops.metrics import Metrics

logger = logging.getLogger(__name__)

INFO_MIN_INTERVAL: Final = 1.0  # seconds between two P/bridge/info publishes, at least
TICK: Final = 1.0  # seconds between looks at the broker link and the clock


class Operations(Observer):
    """The operations side of one running :class:`~bridge.service.Service`."""

    def __init__(self, service: Service, environ: Mapping[str, str]) -> None:
        self.service = service
        self.settings = service.settings
        config = self.settings.config
        self.info_topic = info_topic(service.topics)
        self.tally = Tally()
        self.started_at = time.time()
        self._started = time.monotonic()
        self._changed = asyncio.Event()
        self._changed.set()  # the first look is at once
        self.watchdog_interval = systemd.watchdog_interval(environ)
        self.metrics: Metrics | None = None
        if config.metrics.enabled:
            from bridge.ops.metrics import Metrics  # the [metrics] extra: imported only when asked

            self.metrics = Metrics(service)
            service.link.on_published = self.metrics.publish_latency.observe
        self.discovery: list[tuple[str, bytes]] = []
        if config.homeassistant.discovery:
            self.discovery = discovery_messages(config, service.topics)
            service.link.listen(status_topic(config), self._on_homeassistant_status)
        service.observer = self

    # Observer ------------------------------------------------------------------------

    def connections_changed(self, count: int) -> None:
        self._changed.set()

    def bridge_message(self, publish: Publish) -> None:
        """Count acks and errors by action and result, closes by code; keep the last error."""
        try:
            message: dict[str, Any] = json.loads(publish.payload)
        except ValueError:
            return
        connection_id = message.get("connection_id")
        if not isinstance(connection_id, str):
            return
        if publish.topic != self.service.topics.events(connection_id):
            return  # the copy of a reply sent to an MQTT v5 response topic
        kind, action = message.get("object"), message.get("action")
        metrics = self.metrics
        if kind == contract.OBJECT_ERROR:
            error = message.get("error") or {}
            error_code = str(error.get("code"))
            if metrics is not None:
                metrics.command(str(action or "unknown"), error_code)
            self._note_error(error_code, str(error.get("message", "")), connection_id)
        elif kind == contract.OBJECT_CLIENT_EVENT:
            if metrics is not None:
                metrics.command(contract.SEND, "ok")
        elif kind == contract.OBJECT_CONNECTION:
            close_code = message.get("code")
            reason = str(message.get("reason", ""))
            if action in (contract.CLOSE, contract.DISCONNECTED) and metrics is not None:
                metrics.upstream_closed(close_code if isinstance(close_code, int) else 0)
            # The close acks of a stop answer no command.
            answers_a_command = action == contract.CONNECT or (
                action == contract.CLOSE and reason != contract.SHUTDOWN_CLOSE_REASON
            )
            if answers_a_command and metrics is not None:
                metrics.command(str(action), "ok")
            if action == contract.DISCONNECTED and close_code != contract.DEFAULT_CLOSE_CODE:
                self._note_error("disconnected", f"{close_code} {reason}".strip(), connection_id)

    def response_completed(self, connection_id: str, raw: bytes) -> None:
        usage = usage_of(raw)
        if self.metrics is not None:
            self.metrics.completed(usage)
        if usage is not None:
            self.tally.add_usage(usage, _today())
            self._changed.set()

    def _note_error(self, code: str, message: str, connection_id: str | None) -> None:
        self.tally.note_error(code, message, connection_id, iso_time(time.time()))
        self._changed.set()

    # Lifecycle -----------------------------------------------------------------------

    def ready(self) -> None:
        """The broker is connected and ``P/+/cmd`` subscribed: tell systemd."""
        systemd.notify("READY=1")
        self._changed.set()

    def stopping(self) -> None:
        systemd.notify("STOPPING=1\nSTATUS=stopping: closing upstream connections")

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Run the reporters (and the metrics endpoint) while the body runs."""
        config = self.settings.config
        if self.metrics is not None:
            try:
                await self.metrics.serve(config.metrics.host, config.metrics.port)
            except OSError as exc:
                raise ConfigError(
                    "metrics.port",
                    f"cannot listen on {config.metrics.host}:{config.metrics.port}: "
                    f"{exc.strerror or exc}",
                ) from None
            logger.info("metrics at http://%s:%d/metrics", config.metrics.host, config.metrics.port)
        for topic, payload in self.discovery:
            self.service.link.announce(topic, payload)
        if self.discovery:
            logger.info(
                "Home Assistant discovery: %d entities under %s/",
                len(self.discovery),
                config.homeassistant.prefix,
            )
        tasks = [asyncio.create_task(self._report(), name="bridge.ops.operations.report")]
        if self.watchdog_interval is not None:
            logger.info(
                "systemd watchdog: a ping every %.1fs while the broker link is up",
                self.watchdog_interval,
            )
            tasks.append(
                asyncio.create_task(
                    systemd.watchdog(self.watchdog_interval, self.service.ready.is_set),
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

    def status_line(self) -> str:
        """The one-line ``STATUS=`` text systemctl shows."""
        service = self.service
        count = service.core.connection_count
        connections = f"{count} connection{'' if count == 1 else 's'} open"
        mqtt = self.settings.config.mqtt
        if service.ready.is_set():
            return f"broker connected; {connections}"
        if service.link.connects == 0:
            return f"connecting to the broker at {mqtt.host}:{mqtt.port}"
        return f"broker unreachable, reconnecting; {connections}"

    def info_payload(self) -> bytes:
        service = self.service
        document = info_document(
            self.settings,
            self.tally,
            started_at=self.started_at,
            uptime=time.monotonic() - self._started,
            connections=service.core.connection_count,
            broker_connects=service.link.connects,
        )
        return json.dumps(document, separators=(",", ":")).encode()

    async def _report(self) -> None:
        """Send STATUS= and republish P/bridge/info on change; never more than once a second."""
        status = ""
        published: tuple[object, ...] = ()
        while True:
            await self._next_change()
            self._changed.clear()
            line = self.status_line()
            if line != status:
                systemd.notify(f"STATUS={line}")
                status = line
            self.tally.roll(_today())
            service = self.service
            state = (service.ready.is_set(), service.core.connection_count, self.tally.revision)
            if state != published:
                published = state
                service.link.announce(self.info_topic, self.info_payload())
                await asyncio.sleep(INFO_MIN_INTERVAL)

    async def _next_change(self) -> None:
        """Wait for a poke, the broker link coming up, or the next tick."""
        waits = [asyncio.ensure_future(self._changed.wait())]
        if not self.service.ready.is_set():
            waits.append(asyncio.ensure_future(self.service.ready.wait()))
        try:
            await asyncio.wait(waits, timeout=TICK, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()

    def _on_homeassistant_status(self, payload: bytes) -> None:
        if payload.strip().lower() == b"online":
            logger.info("Home Assistant is online: announcing the bridge again")
            self.service.link.reannounce()


def _today() -> str:
    return datetime.date.today().isoformat()
