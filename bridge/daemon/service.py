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
import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from bridge.daemon import logs
from bridge.daemon.buffer_waits import BufferWaits
from bridge.daemon.cluster import ClusterMember, instance_name
from bridge.daemon.config import Config, Settings
from bridge.daemon.membership import MembershipAgent
from bridge.daemon.relay import Relay
from bridge.daemon.upstreams import AnyConnection as UpstreamConnection  # issue 26
from bridge.daemon.upstreams import Upstreams
from bridge.daemon.usage_sharing import UsageSharing
from bridge.daemon.usage_store import UsageStore, default_state_dir
from bridge.errors import InstanceConflict, UpstreamError
from bridge.mqtt.link import Inbound, MqttLink
from bridge.ops.observer import Observer
from bridge.protocol.actions import (
    AbortUpstream,
    Action,
    ArmTimer,
    CloseUpstream,
    Observe,
    OpenUpstream,
    SendUpstream,
    ToolDeadline,
)
from bridge.protocol.contract import Rejection, Topics, peek
from bridge.protocol.core import BridgeCore, Phase
from bridge.protocol.error_codes import INSTANCE_BUSY
from bridge.protocol.guardrails import local_time
from bridge.protocol.messages import Publish
from bridge.protocol.response_topics import ResponseTopicPolicy
from bridge.protocol.usage_documents import MAX_DOCUMENT_BYTES

logger = logging.getLogger(__name__)

BROKER_FLUSH_GRACE: Final = 5.0  # seconds to deliver what is buffered once upstreams are closed
# Room in an inbound packet for its topic and properties besides the payload.
PACKET_OVERHEAD_BYTES: Final = 256 * 1024
IDLE_SWEEP_INTERVAL: Final = 1.0  # seconds between looks for idle connections, at most


@dataclass(eq=False, slots=True)
class _Upstream:
    """One connection id's upstream, from its handshake to its end, and the task driving it."""

    connection_id: str
    task: asyncio.Task[None] | None = None
    socket: UpstreamConnection | None = None  # None while the handshake runs
    reported: bool = False  # the core was told how it ended
    # The reader's wait for room in the buffer: since when, and the count of
    # relayed events when it last came back from waiting (see Relay.room).
    waiting_since: float = 0.0
    relayed_mark: int = -1


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
        state_dir = config.state_dir or default_state_dir()
        self.usage_store = UsageStore(state_dir, instance_name(config))
        self.core = BridgeCore(
            self.topics,
            url=settings.endpoint.display_url,
            qos=config.mqtt.qos,
            limits=config.limits,
            v5=config.mqtt.protocol == "5",
            redactor=settings.redactor,
            sessions=config.sessions,
            profiles=config.profiles,
            assistants=config.homeassistant.assistants,
            usage=self.usage_store.load(),
            tools=config.tools,
            response_topics=self._response_topics(config),
        )
        # websockets logs handshake headers (Authorization) and the URL at DEBUG;
        # the handler logs.setup installs scrubs every line, this covers other handlers.
        logs.redact(settings.redactor, "bridge.websockets", "bridge.paho")
        # issue 26: the `openai` endpoint and the named ones; a profile picks (daemon/upstreams.py)
        self.upstreams = Upstreams(settings)
        self.link = MqttLink(
            config.mqtt,
            self.topics,
            self._on_inbound,
            password=settings.mqtt_password.value if settings.mqtt_password else None,
            tls=settings.mqtt_tls,
            # Commands up to twice the limit still get `payload_too_large` (and other
            # instances' usage documents fit); the broker drops larger ones (MQTT v5).
            max_packet_bytes=max(2 * config.limits.max_command_bytes, MAX_DOCUMENT_BYTES)
            + PACKET_OVERHEAD_BYTES,
            on_published=self.observer.publish_latency,
        )
        for tool in config.tools:  # replies to tool calls (MQTT v5 correlation, or the first)
            if tool.reply is not None:
                self.link.listen_for_replies(tool.reply.topic, self._on_tool_reply)
        # The day's usage of every instance on the prefix, as budgets count it.
        self.usage_sharing = UsageSharing(
            self.core.guardrails,
            self.usage_store,
            self.link,
            self.topics,
            lambda: local_time(self.wall_clock(), self.core.timezone),
        )
        # Every bridge says who it is on its prefix and serves only after a roll call
        # found no other bridge it cannot share the prefix with (README: Several instances).
        self.membership = MembershipAgent(
            instance_name(config),
            self.topics,
            self.link,
            standalone=not config.cluster.enabled,
            roll_call=config.cluster.roll_call,
            carry_out=self._handle,
            busy=self._busy,
            on_error=self.observer.error,
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
        self._upstreams: dict[str, _Upstream] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}  # device output (ArmTimer), per id
        self._idle = asyncio.Event()
        self._idle.set()

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
            response_topics=self._response_topics(config),
        )
        self._buffer_waits.limit = config.limits.event_buffer_wait
        self.link.max_packet_bytes = 2 * config.limits.max_command_bytes + PACKET_OVERHEAD_BYTES
        for tool in config.tools:
            if tool.reply is not None:
                self.link.listen_for_replies(tool.reply.topic, self._on_tool_reply)

    def _response_topics(self, config: Config) -> ResponseTopicPolicy:
        return ResponseTopicPolicy(
            allowed=config.mqtt.response_topics,
            refused=(f"{self.topics.prefix}/#", f"{config.homeassistant.prefix}/#"),
        )

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

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], object] | None = None) -> None:
        """Run until ``stop`` is set, then shut down in order; raise if the link is fatal."""
        self.membership.start()
        link = asyncio.create_task(self.link.run(), name="bridge.mqtt_link")
        ready = asyncio.create_task(self.membership.serving.wait(), name="bridge.ready")
        stopping = asyncio.create_task(stop.wait(), name="bridge.stop")
        refused = asyncio.create_task(self.membership.refused_event.wait(), name="bridge.refused")
        sweeper = asyncio.create_task(self._sweep_idle(), name="bridge.idle_sweep")
        usage = asyncio.create_task(self.usage_sharing.run(), name="bridge.usage")
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
            await self._cancel_all()
            await self.upstreams.aclose()  # issue 26: the HTTP transports' connection pools
            for timer in self._timers.values():
                timer.cancel()
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
        self._perform(self.core.replies.refuse(message.connection_id, rejection, None))

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

    def _output_due(self, connection_id: str) -> None:
        del self._timers[connection_id]
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
                    self._idle.clear()
                    upstream = self._upstreams[connection_id] = _Upstream(connection_id)
                    upstream.task = asyncio.create_task(
                        self._drive(upstream), name=f"bridge.upstream[{connection_id}]"
                    )
                    upstream.task.add_done_callback(functools.partial(self._driven, upstream))
                case SendUpstream(connection_id, data):
                    self._socket(connection_id).send(data)
                case CloseUpstream(connection_id, code, reason):
                    self._socket(connection_id).close(code, reason)
                case AbortUpstream(connection_id):
                    upstream = self._upstreams[connection_id]
                    if upstream.socket is not None:
                        upstream.socket.abort()
                    elif upstream.task is not None:
                        upstream.task.cancel()  # the handshake is abandoned
                case ArmTimer(connection_id, delay):
                    timer = self._timers.pop(connection_id, None)
                    if timer is not None:
                        timer.cancel()
                    self._timers[connection_id] = asyncio.get_running_loop().call_later(
                        delay, self._output_due, connection_id
                    )
                case Observe(outcome):
                    self.observer.observe(outcome)
                case ToolDeadline(delay=delay, wait=wait):
                    asyncio.get_running_loop().call_later(delay, self._tool_deadline, wait)
        if self.core.connection_count != self._observed_count:
            self._observed_count = self.core.connection_count
            self.observer.connections_changed(self._observed_count)

    def _socket(self, connection_id: str) -> UpstreamConnection:
        socket = self._upstreams[connection_id].socket
        assert socket is not None, "the core sends only to open connections"
        return socket

    # One task per connection id ------------------------------------------------------------

    async def _drive(self, upstream: _Upstream) -> None:
        """Open one id's upstream and relay its events until it ends (supervised: _driven)."""
        socket = await self._open(upstream)
        if socket is not None:
            code, reason = await self._relay(upstream, socket)
            logger.info("[%s] upstream closed: %d %s", upstream.connection_id, code, reason)
            self._report(upstream, self.core.upstream_closed(upstream.connection_id, code, reason))

    def _driven(self, upstream: _Upstream, task: asyncio.Task[None]) -> None:
        """The task of one connection id is over: however it ended, the core learns how.

        An unexpected error is logged with its traceback and ends the
        connection (``disconnected`` 1011, or ``internal_error`` for a
        handshake), so the id can connect again; a task cancelled before it
        ever ran abandons its handshake.
        """
        connection_id = upstream.connection_id
        error = None if task.cancelled() else task.exception()
        if error is not None:
            logger.error(
                "[%s] the bridge failed while driving this connection; it is ended",
                connection_id,
                exc_info=error,
            )
            if upstream.socket is not None:
                upstream.socket.abort()
        if not upstream.reported:
            if error is None and self.core.phase(connection_id) is Phase.OPENING:
                actions = self.core.upstream_failed(connection_id, "the handshake was abandoned")
            else:
                actions = self.core.connection_failed(connection_id)
            self._report(upstream, actions)
        self._forget(upstream)
        if self.core.idle:
            self._idle.set()

    async def _open(self, upstream: _Upstream) -> UpstreamConnection | None:
        """The open socket; None if the handshake failed or was abandoned (and reported)."""
        connection_id = upstream.connection_id
        started = time.monotonic()
        try:
            socket = await self.upstreams.open(self.core.profile_of(connection_id))
        except asyncio.CancelledError:
            failed = self.core.upstream_failed(connection_id, "the handshake was abandoned")
            self._report(upstream, failed)
            return None
        except UpstreamError as exc:
            logger.warning("[%s] upstream connect failed: %s", connection_id, exc)
            self._report(upstream, self.core.upstream_failed(connection_id, str(exc), exc.status))
            return None
        logger.info(
            "[%s] upstream open (%.0f ms)", connection_id, (time.monotonic() - started) * 1000
        )
        upstream.socket = socket
        self._perform(self.core.upstream_opened(connection_id))
        return socket

    async def _relay(self, upstream: _Upstream, socket: UpstreamConnection) -> tuple[int, str]:
        """Relay server events until the connection ends; its close code and reason."""
        try:
            return await socket.run(
                self.relay.deliverer(upstream.connection_id),
                functools.partial(self.relay.room, upstream),
                self.core.upstream_written,
            )
        except asyncio.CancelledError:
            socket.abort()
            return 1006, "the bridge stopped without a close handshake"

    def _report(self, upstream: _Upstream, actions: list[Action]) -> None:
        """Perform what the core answered to how this upstream ended.

        The upstream is forgotten first: those actions may open the id again.
        """
        upstream.reported = True
        self._forget(upstream)
        self._perform(actions)

    def _forget(self, upstream: _Upstream) -> None:
        if self._upstreams.get(upstream.connection_id) is upstream:
            del self._upstreams[upstream.connection_id]

    # Shutdown --------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        grace = self.settings.config.shutdown.grace_seconds
        logger.info("stopping: closing %d upstream connections", self.core.connection_count)
        self._perform(self.core.begin_shutdown())
        try:
            async with asyncio.timeout(grace):
                await self._idle.wait()
        except TimeoutError:
            logger.warning(
                "%d upstream connections did not close within %.0fs; dropping them",
                self.core.connection_count,
                grace,
            )
            await self._cancel_all()
        if self.cluster is not None:
            self.cluster.stop()
        self.usage_sharing.publish_now()
        self.membership.stop()
        self.link.stop(BROKER_FLUSH_GRACE)

    async def _cancel_all(self) -> None:
        tasks = [upstream.task for upstream in self._upstreams.values() if upstream.task]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # how each ended is _driven's business
