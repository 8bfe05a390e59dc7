"""Every bridge's place on its prefix: the adapter of :mod:`bridge.cluster.membership`.

Owned by the :class:`~bridge.daemon.service.Service`, for standalone bridges
and cluster instances alike. It says this bridge's presence, listens to the
others', holds commands while the bridge joins (at start, after its broker
link came back, after its event loop stood still), and tells the service
when it may serve, or that it must not (another bridge serves the prefix and
cannot share it). It owns one timer: the heartbeat that ends roll calls and
notices a stall.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Final

from bridge.cluster.membership import (
    OFFLINE,
    ONLINE,
    Announce,
    Busy,
    Conflict,
    Decision,
    Membership,
    PeerState,
    Phase,
    Presence,
    Serve,
)
from bridge.daemon.timers import Timers
from bridge.mqtt.link import Inbound, MqttLink
from bridge.protocol.contract import RESERVED_ID, Topics
from bridge.protocol.error_codes import INSTANCE_CONFLICT

logger = logging.getLogger(__name__)

MIN_STALL_SECONDS: Final = 0.5
_HEARTBEAT: Final = "membership.heartbeat"  # the key of its timer


class MembershipAgent:
    """This bridge among the bridges of its prefix: presence, joins, conflicts."""

    def __init__(
        self,
        name: str,
        topics: Topics,
        link: MqttLink,
        *,
        standalone: bool,
        roll_call: float,
        carry_out: Callable[[Inbound], None],
        busy: Callable[[Inbound], None],
        on_error: Callable[[str, str], None],
        timers: Timers | None = None,
    ) -> None:
        self.link = link
        self.carry_out = carry_out  # a command this bridge may serve (the cluster, or the core)
        self.busy = busy  # refuse a command with instance_busy
        self.on_error = on_error  # (code, message): P/bridge/info's last_error
        self.state = Membership(name, secrets.token_hex(6), standalone, roll_call)
        base = f"{topics.prefix}/{RESERVED_ID}/instances/"
        self.presence_topic = base + name
        self._instances = base
        self._prefix = topics.prefix
        link.listen_filter(base + "+", self._on_presence)
        link.listen_filter(topics.state, self._on_state)
        link.on_connecting = self._on_connecting
        link.offline_at_stop = self._last_one
        self.serving = asyncio.Event()  # set while this bridge serves commands
        self.refused: Conflict | None = None
        self.refused_event = asyncio.Event()  # set when this bridge must stop serving
        # Listeners for what the cluster needs: (name, state), the end of a join, a join.
        self.on_peer: Callable[[str, str], None] | None = None
        self.on_serve: Callable[[Serve], None] | None = None
        self.on_join: Callable[[], None] | None = None
        # A loop that stood still this long may have missed a roll call: join again
        # (not under half a second: a busy loop is not a stopped one).
        self._stall_after = max(roll_call, MIN_STALL_SECONDS)
        self._beat_every = max(roll_call / 4, 0.01)
        self._last_beat = time.monotonic()
        self.timers = timers if timers is not None else Timers()  # the heartbeat's
        self._stopped = False
        self._connect_pending = False  # the roll call starts once the link is up

    @property
    def name(self) -> str:
        return self.state.me

    # Lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._last_beat = time.monotonic()
        self.timers.later(self._beat_every, self._beat, key=_HEARTBEAT)

    def stop(self) -> None:
        """A clean stop: say ``offline`` on the presence topic; say nothing after."""
        self._stopped = True
        self.serving.clear()
        self.timers.cancel(_HEARTBEAT)
        if self.refused is not None and self.refused.other.instance == self.name:
            return  # its twin serves under this name: its presence is theirs to say
        self.link.announce(self.presence_topic, self.state.presence(OFFLINE).encode())

    # Inbound -----------------------------------------------------------------------

    def command(self, message: Inbound) -> None:
        self._awake()
        decisions = self.state.command(message, len(message.payload))
        if decisions is None:
            self.carry_out(message)
        else:
            self._perform(decisions)

    def _on_connecting(self) -> None:
        """The broker link is (re)connecting: what arrives from now on waits for a join."""
        self._connect_pending = True
        self._join(rejoin=self.link.connects > 0)

    def _on_presence(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        self._awake()
        name = topic[len(self._instances) :]
        if "/" in name or self._stopped:
            return
        presence = Presence.decode(name, payload)
        if presence is not None:
            self._perform(self.state.heard(presence, live=not retained, now=time.monotonic()))

    def _on_state(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        if self._stopped or retained or payload != b"offline":
            return
        # A bridge's will, or the last one stopped: we are still here, and who else is?
        self.link.reannounce()
        self._perform(self.state.roll_call(time.monotonic()))

    # The heartbeat -----------------------------------------------------------------

    def _beat(self) -> None:
        self._awake()
        if self.link.connected.is_set():
            if self._connect_pending:  # subscribed now: the roll call's time starts
                self._connect_pending = False
                self._perform(self.state.join(time.monotonic(), rejoin=False))
            self._perform(self.state.over(time.monotonic()))
        self.timers.later(self._beat_every, self._beat, key=_HEARTBEAT)

    def _awake(self) -> None:
        """Notice a stall (SIGSTOP, a paused VM, a frozen loop): others may have declared
        this bridge lost and taken what it held, so it joins again before acting."""
        now = time.monotonic()
        stood_still = now - self._last_beat
        self._last_beat = now
        if stood_still >= self._stall_after and self.state.phase is Phase.SERVING:
            logger.warning(
                "this bridge stood still for %.1fs (stopped, paused or starved): "
                "joining again before it acts on anything",
                stood_still,
            )
            self._join(rejoin=True)

    def _join(self, *, rejoin: bool) -> None:
        if self._stopped:
            return
        self.serving.clear()
        if self.on_join is not None:
            self.on_join()
        self._perform(self.state.join(time.monotonic(), rejoin=rejoin))

    def _last_one(self) -> bool:
        """Whether a clean stop says ``offline`` on ``P/bridge/state``."""
        return self.state.phase is not Phase.REFUSED and not self.state.peers

    # Decisions ---------------------------------------------------------------------

    def _perform(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            match decision:
                case Announce(presence):
                    self.link.announce(self.presence_topic, presence.encode())
                case PeerState(name, state):
                    self._peer(name, state)
                case Serve():
                    self._serve(decision)
                case Conflict():
                    self._conflict(decision)
                case Busy(command):
                    assert isinstance(command, Inbound)
                    self.busy(command)

    def _peer(self, name: str, state: str) -> None:
        if state == OFFLINE:
            logger.info("instance %s is gone (%d others)", name, len(self.state.peers))
        elif state == ONLINE:
            logger.debug("instance %s is here", name)
        if self.on_peer is not None:
            self.on_peer(name, state)

    def _serve(self, serve: Serve) -> None:
        others = sorted(self.state.peers)
        logger.info(
            "serving prefix %s as %s%s",
            self._prefix,
            self.name,
            f" with {len(others)} other instances: {', '.join(others)}" if others else "",
        )
        self.serving.set()
        if self.on_serve is not None:
            self.on_serve(serve)
        else:
            for command in serve.commands:
                assert isinstance(command, Inbound)
                self.carry_out(command)

    def _conflict(self, conflict: Conflict) -> None:
        other = conflict.other
        mine = "standalone" if self.state.standalone else "cluster instance"
        theirs = "standalone" if other.standalone else "cluster instance"
        what = (
            f"two bridges serve prefix {self._prefix!r}: this one, "
            f"{self.name} ({mine}), and {other.instance} ({theirs})"
        )
        if other.instance == self.name:
            what += ", with the same instance name"
        advice = (
            "; only one may serve it: stop one, give it another mqtt.topic_prefix, or "
            "set cluster.enabled: true (and a unique cluster.instance) on both"
        )
        if conflict.refuse:
            message = f"{what}{advice}. This one does not serve and stops"
            if conflict.held:
                message += f" ({len(conflict.held)} commands it held are left to {other.instance})"
            self.refused = conflict
            self.serving.clear()
            self.refused_event.set()
        else:
            message = f"{what}{advice}. {other.instance} must stop; this one serves"
            if other.instance == self.name:  # the twin wrote over our presence: say it again
                self.link.announce(self.presence_topic, self.state.presence(ONLINE).encode())
        logger.error("%s", message)
        self.on_error(INSTANCE_CONFLICT, message)
