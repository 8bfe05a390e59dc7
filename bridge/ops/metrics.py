"""Prometheus metrics (``metrics.enabled``; needs the ``[metrics]`` extra: prometheus-client).

Counters that change per command or per response are kept here; values the
bridge already holds (open connections, buffer depth, events relayed, waits
for room in the buffer, broker state) are read from the service when
Prometheus scrapes, so relaying an event costs nothing extra. The only
per-publish cost is timing it for ``publish_latency_seconds``. ``/metrics``
is served by a small asyncio HTTP server in the bridge's own event loop: no
thread, nothing else exposed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final, TypedDict

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.protocol.contract import ACTIONS
from bridge.protocol.guardrails import Tokens

if TYPE_CHECKING:
    from bridge.ops.observer import RunningBridge

logger = logging.getLogger(__name__)

NAMESPACE: Final = "openai_mqtt_bridge"
LATENCY_BUCKETS: Final = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
MAX_REQUEST_BYTES: Final = 8192
REQUEST_TIMEOUT: Final = 5.0


# Label values clients choose (ids) or the upstream names (models) are bounded: the
# first ones seen get their own series, the rest share "other".
MAX_ID_LABELS: Final = 100
MAX_MODEL_LABELS: Final = 20


def _bounded(value: str, seen: set[str], limit: int) -> str:
    if value in seen:
        return value
    if len(seen) < limit:
        seen.add(value)
        return value
    return "other"


class _Named(TypedDict):
    """What every metric of the bridge is created with."""

    namespace: str
    registry: CollectorRegistry


class Metrics:
    """The bridge's metrics in a registry of their own, and the HTTP endpoint that serves them."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        named: _Named = {"namespace": NAMESPACE, "registry": registry}
        self.commands = Counter(
            "commands",
            "Commands answered, by action and result (ok, or the error code)",
            ["action", "result"],
            **named,
        )
        self.upstream_closes = Counter(
            "upstream_closes",
            "Upstream WebSocket connections that ended, by close code",
            ["code"],
            **named,
        )
        self.tokens = Counter(
            "tokens",
            "Tokens reported in the usage of response.completed, by kind",
            ["kind"],
            **named,
        )
        self.tokens_by_id = Counter(
            "connection_tokens",
            "Tokens of completed responses, by connection id and model "
            f"(the first {MAX_ID_LABELS} ids and {MAX_MODEL_LABELS} models; the rest are 'other')",
            ["connection_id", "model"],
            **named,
        )
        self._id_labels: set[str] = set()
        self._model_labels: set[str] = set()
        self.tool_calls = Counter(
            "tool_calls",
            "Tool calls of the model the bridge handled, by tool and status",
            ["tool", "status"],
            **named,
        )
        self.responses = Counter(
            "responses_completed", "response.completed events relayed", **named
        )
        self.publish_latency = Histogram(
            "publish_latency_seconds",
            "Time from handing a message to the MQTT client to the broker's acknowledgement",
            buckets=LATENCY_BUCKETS,
            **named,
        )
        build = Gauge("build_info", "The bridge's version (always 1)", ["version"], **named)
        build.labels(__version__).set(1)
        self._live: _Live | None = None
        self._server: asyncio.Server | None = None

    def command(self, action: str, result: str) -> None:
        # A client names the action: only the known ones become label values.
        self.commands.labels(action if action in ACTIONS else "unknown", result).inc()

    def upstream_closed(self, code: int) -> None:
        self.upstream_closes.labels(str(code)).inc()

    def completed(
        self, tokens: Tokens | None, connection_id: str = "", model: str = "unknown"
    ) -> None:
        self.responses.inc()
        if tokens is not None:
            self.tokens.labels("input").inc(tokens.input)
            self.tokens.labels("output").inc(tokens.output)
            connection = _bounded(connection_id, self._id_labels, MAX_ID_LABELS)
            kind = _bounded(model, self._model_labels, MAX_MODEL_LABELS)
            self.tokens_by_id.labels(connection, kind).inc(tokens.total)

    def tool_called(self, name: str, status: str) -> None:
        # Tool names come from the config; statuses from the bridge: both bounded.
        self.tool_calls.labels(name, status).inc()

    def exposition(self) -> bytes:
        """The text Prometheus scrapes."""
        return generate_latest(self.registry)

    async def serve(self, service: RunningBridge, host: str, port: int) -> asyncio.Server:
        """Serve the metrics of ``service`` on ``host:port``; OSError if that address is taken."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self._live = _Live(service)
        self.registry.register(self._live)
        return self._server

    async def close(self) -> None:
        if self._live is not None:
            self.registry.unregister(self._live)
            self._live = None
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, path = _request_line(head)
            if method not in (b"GET", b"HEAD"):
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path.split(b"?", 1)[0] in (b"/metrics", b"/"):
                status, body, kind = "200 OK", self.exposition(), CONTENT_TYPE_LATEST
            else:
                status, body, kind = "404 Not Found", b"try /metrics\n", "text/plain"
            header = (
                f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(header.encode() + (body if method != b"HEAD" else b""))
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # a client that does not send a request gets nothing
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


def _request_line(head: bytes) -> tuple[bytes, bytes]:
    parts = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].split()
    return (parts[0], parts[1]) if len(parts) >= 2 else (b"", b"")


class _Live(Collector):
    """Values read from the running bridge at scrape time."""

    def __init__(self, service: RunningBridge) -> None:
        self.service = service

    def collect(self) -> Iterable[Metric]:
        service = self.service
        link = service.link
        yield GaugeMetricFamily(
            f"{NAMESPACE}_connections",
            "Upstream connections open (in any phase)",
            value=service.connection_count,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_broker_connected",
            "1 while the broker link is up and commands are subscribed",
            value=1 if link.connected.is_set() else 0,
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_broker_connects",
            "Successful connections to the broker (the first and every reconnect)",
            value=link.connects,
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_events_relayed",
            "Server events handed to the broker link",
            value=service.events_relayed,
        )
        yield CounterMetricFamily(
            f"{NAMESPACE}_buffer_waits",
            "Times a reader waited for room in the event buffer (back-pressure)",
            value=service.buffer_waits,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_buffer_messages",
            "Messages waiting for the broker or its acknowledgement",
            value=link.buffered_messages,
        )
        yield GaugeMetricFamily(
            f"{NAMESPACE}_buffer_bytes",
            "Payload bytes waiting for the broker or its acknowledgement",
            value=link.buffered_bytes,
        )
