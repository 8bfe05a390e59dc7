"""The supervisor: wires the MQTT link and the upstream sockets to the core.

It owns every task: the broker link, and one task per connection id that
opens its upstream and relays its events until it ends. It feeds the core
each fact and performs the actions the core returns, in order; what each
published message means (its outcome) goes to the :class:`Observer`. The
tasks are supervised: one that fails unexpectedly is logged with its
traceback and its connection is ended (``disconnected`` 1011), so the id
can connect again and a stop never waits for it. Shutdown follows
a fixed order: stop taking commands, close every upstream with 1001 and
publish a close acknowledgement for each, flush the buffer, say ``offline``,
disconnect.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Final, assert_never

from bridge.config.settings import Settings, instance_name
from bridge.daemon import logs, parts
from bridge.daemon.buffer_waits import BufferWaits
from bridge.daemon.cluster import ClusterMember
from bridge.daemon.endpoints import Endpoints
from bridge.daemon.relay import Relay
from bridge.daemon.timers import Timers
from bridge.daemon.upstream_tasks import UpstreamTasks
from bridge.daemon.usage_store import UsageStore, default_state_dir
from bridge.errors import InstanceConflict
from bridge.mqtt.link import Inbound
from bridge.ops.observer import Observer
from bridge.protocol.actions import (
    AbortUpstream,
    Action,
    ArmTimer,
    CallMcpTool,
    CloseUpstream,
    Observe,
    OpenUpstream,
    SendUpstream,
    ToolDeadline,
)
from bridge.protocol.contract import Rejection, Topics, peek
from bridge.protocol.error_codes import INSTANCE_BUSY
from bridge.protocol.messages import Publish
from bridge.protocol.shared_usage import SharedUsage

logger = logging.getLogger(__name__)

BROKER_FLUSH_GRACE: Final = 5.0  # seconds to deliver what is buffered once upstreams are closed
IDLE_SWEEP_INTERVAL: Final = 1.0  # seconds between looks for idle connections, at most


class Service:
    """The running daemon: one broker link, many upstream connections, one core."""

    def __init__(
        self,
        settings: Settings,
        observer: Observer | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        config = settings.config
        self.settings = settings
        self.observer = observer or Observer()
        self.topics = Topics(config.mqtt.topic_prefix)
        self.wall_clock = wall_clock  # the budgets' days (tests move it)
        self.timers = Timers()  # every timer armed: cancelled when run ends
        state_dir = config.state_dir or default_state_dir()
        self.usage_store = UsageStore(state_dir, instance_name(config))
        self.core = parts.core(settings, self.topics, self.usage_store.load())
        # websockets logs handshake headers (Authorization) and the URL at DEBUG;
        # the handler logs.setup installs scrubs every line, this covers other handlers.
        logs.redact(settings.redactor, "bridge.websockets", "bridge.paho")
        self.link = parts.link(settings, self.topics, self._on_inbound, self.observer)
        parts.listen_for_tool_replies(self.link, config.tools, self._on_tool_reply)
        self.usage_sharing = parts.usage_sharing(
            self.core, self.usage_store, self.link, self.topics, lambda: self.wall_clock()
        )
        self.membership = parts.membership(
            config,
            self.topics,
            self.link,
            handle=self._handle,
            busy=self._busy,
            observer=self.observer,
            timers=self.timers,
        )
        # Several instances on one prefix: which commands are this one's (cluster.enabled).
        self.cluster = (
            ClusterMember(
                config,
                self.topics,
                self.link,
                self.core,
                self._perform,
                self._handle,
                self.membership,
                self.timers,
            )
            if config.cluster.enabled
            else None
        )
        self._buffer_waits = BufferWaits(
            self.link.room,
            limit=config.limits.event_buffer_wait,
            buffered=lambda: self.link.buffered_messages,
            log=logger,
        )
        self.relay = Relay(self.core, self.link, self.observer, self._perform, self._buffer_waits)
        self._observed_count = 0
        # The `openai` endpoint and the named ones; a connection's profile picks.
        endpoints = Endpoints(settings)
        self.upstreams = UpstreamTasks(self.core, endpoints, self.relay, self._perform)
        # The house's MCP servers (mcp_servers): nothing is built when none is configured.
        self.mcp = parts.mcp_servers(settings, self.core, self._mcp_result)

    def reconfigure(self, settings: Settings) -> None:
        """Run with a reloaded config from now on (bridge/daemon/reload.py says what changes
        live): nothing open is dropped, new tools' reply topics are subscribed."""
        self.settings, config = settings, settings.config
        self.core.reconfigure(
            limits=config.limits,
            sessions=config.sessions,
            profiles=config.profiles,
            tools=config.tools,
            assistants=config.homeassistant.assistants,
            response_topics=parts.response_topics(config, self.topics),
        )
        self._buffer_waits.limit = config.limits.event_buffer_wait
        self.link.max_packet_bytes = parts.max_packet_bytes(config)  # at the next connect
        parts.listen_for_tool_replies(self.link, config.tools, self._on_tool_reply)

    @property
    def ready(self) -> asyncio.Event:
        """Set while this bridge serves: the broker link is up, commands are subscribed,
        and no other bridge serves the prefix that it cannot share it with."""
        return self.membership.serving

    @property
    def events_relayed(self) -> int:
        """Server events the link took."""
        return self.relay.events_relayed

    @property
    def buffer_waits(self) -> int:
        """Times a reader had to wait for room in the buffer."""
        return self.relay.buffer_waits

    @property
    def connection_count(self) -> int:
        """Upstream connections in any phase."""
        return self.core.connection_count

    @property
    def mcp_servers(self) -> dict[str, dict[str, object]]:
        """Each MCP server's state and the tools it offers (``P/bridge/info``)."""
        return self.mcp.report() if self.mcp is not None else {}

    @property
    def usage(self) -> SharedUsage:
        """The day's token usage, every instance's."""
        return self.core.guardrails.usage

    @property
    def usage_problem(self) -> str | None:
        """Why today's usage cannot be kept on disk, or None."""
        return self.usage_store.problem

    @property
    def usage_settled(self) -> bool:
        """Our retained usage document has been read back (or there was none)."""
        return self.usage_sharing.settled

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], object] | None = None) -> None:
        """Run until ``stop`` is set, then shut down in order; raise if the link is fatal."""
        self.membership.start()
        link = asyncio.create_task(self.link.run(), name="bridge.mqtt_link")
        ready = asyncio.create_task(self.membership.serving.wait(), name="bridge.ready")
        stopping = asyncio.create_task(stop.wait(), name="bridge.stop")
        refused = asyncio.create_task(self.membership.refused_event.wait(), name="bridge.refused")
        sweeper = asyncio.create_task(self._sweep_idle(), name="bridge.idle_sweep")
        usage = asyncio.create_task(self.usage_sharing.run(), name="bridge.usage")
        if self.mcp is not None:
            self.mcp.start()
        try:
            done, _ = await asyncio.wait(
                [link, ready, stopping, refused], return_when=asyncio.FIRST_COMPLETED
            )
            if ready in done and on_ready is not None:
                on_ready()
            if not done & {link, stopping, refused}:
                done, _ = await asyncio.wait(
                    [link, stopping, refused], return_when=asyncio.FIRST_COMPLETED
                )
            if link in done:
                link.result()  # raises the fatal broker error that ended the link
                return
            await self._shutdown()
            await link
            if refused in done:
                raise InstanceConflict("another bridge serves this prefix (logged above)")
        finally:
            for task in (ready, stopping, refused, sweeper, usage):
                task.cancel()
            self.usage_store.save(self.core.guardrails.usage)
            await self.upstreams.cancel_all()
            if self.mcp is not None:
                await self.mcp.aclose()
            await self.upstreams.endpoints.aclose()  # the HTTP transports' connection pools
            self.timers.close()
            # However run ends (an error, a second signal), the link says `offline`
            # before it goes: give it the time to.
            link.cancel()
            await asyncio.wait([link], timeout=BROKER_FLUSH_GRACE)

    async def _sweep_idle(self) -> None:
        """Close connections idle for ``sessions.idle_timeout`` and let conversations
        expire (checked every second or so)."""
        while True:
            timeout = self.core.idle_timeout  # a reload may change it
            await asyncio.sleep(min(IDLE_SWEEP_INTERVAL, (timeout or math.inf) / 4))
            self._perform(self.core.sweep(time.monotonic(), self.wall_clock()))
            if self.cluster is not None:
                self.cluster.sweep()

    # Inbound facts ------------------------------------------------------------------

    def _on_inbound(self, message: Inbound) -> None:
        self.membership.command(message)  # on to the cluster, or to _handle

    def _busy(self, message: Inbound) -> None:
        """Refuse a command that cannot be placed now (retryable)."""
        action, request_id = peek(message.payload, max_bytes=1 << 20)
        message_text = "too many commands wait for this bridge to join; publish it again"
        rejection = Rejection(INSTANCE_BUSY, message_text, action, request_id)
        self._perform(self.core.refuse(message.connection_id, rejection))

    def _handle(self, message: Inbound) -> None:
        """Carry out a command here: the core decides, the actions are performed."""
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "[%s] < command %s%s",
                message.connection_id,
                message.payload[:75],
                " (retained)" if message.retained else "",
            )
        try:
            actions = self.core.receive_command(
                message.connection_id,
                message.payload,
                retained=message.retained,
                reply_to=message.reply_to,
                now=time.monotonic(),
                wall=self.wall_clock(),
            )
        except Exception:
            # A bug, never a client's doing: contained to this one command.
            logger.exception(
                "[%s] handling a command failed; it is answered with internal_error",
                message.connection_id,
            )
            actions = self.core.internal_error(message.connection_id, message.payload)
        self._perform(actions)

    def _on_tool_reply(
        self, topic: str, payload: bytes, retained: bool, correlation: bytes | None
    ) -> None:
        self._perform(self.core.tool_reply(topic, payload, retained, correlation))

    def _tool_deadline(self, wait: int) -> None:
        self._perform(self.core.tool_timed_out(wait))

    def _mcp_result(self, wait: int, text: str, is_error: bool) -> None:
        self._perform(self.core.mcp_result(wait, text, is_error))

    def _output_due(self, connection_id: str) -> None:
        self._perform(self.core.output_due(connection_id))

    # Actions ---------------------------------------------------------------------------

    def _perform(self, actions: list[Action]) -> None:
        for action in actions:
            match action:
                case Publish():
                    self.link.publish(action)
                    if action.outcome is not None:
                        self.observer.observe(action.outcome)
                case OpenUpstream(connection_id):
                    self.upstreams.open(connection_id)
                case SendUpstream(connection_id, data):
                    self.upstreams.socket(connection_id).send(data)
                case CloseUpstream(connection_id, code, reason):
                    self.upstreams.socket(connection_id).close(code, reason)
                case AbortUpstream(connection_id):
                    self.upstreams.abort(connection_id)
                case ArmTimer(connection_id, delay):
                    key = ("output", connection_id)  # device output: one per id
                    self.timers.later(delay, self._output_due, connection_id, key=key)
                case Observe(outcome):
                    self.observer.observe(outcome)
                case ToolDeadline(delay=delay, wait=wait):
                    self.timers.later(delay, self._tool_deadline, wait)
                case CallMcpTool():
                    if self.mcp is not None:
                        self.mcp.call(action)
                    else:  # pragma: no cover (the core offers no MCP tool then)
                        self._mcp_result(action.wait, "no MCP servers are configured", True)
                case _:
                    assert_never(action)
        if self.core.connection_count != self._observed_count:
            self._observed_count = self.core.connection_count
            self.observer.connections_changed(self._observed_count)

    # Shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        grace = self.settings.config.shutdown.grace_seconds
        logger.info("stopping: closing %d upstream connections", self.core.connection_count)
        self._perform(self.core.begin_shutdown())
        try:
            async with asyncio.timeout(grace):
                await self.upstreams.idle.wait()
        except TimeoutError:
            logger.warning(
                "%d upstream connections did not close within %.0fs; dropping them",
                self.core.connection_count,
                grace,
            )
            await self.upstreams.cancel_all()
        if self.cluster is not None:
            self.cluster.stop()
        self.usage_sharing.publish_now()
        self.membership.stop()
        self.link.stop(BROKER_FLUSH_GRACE)
