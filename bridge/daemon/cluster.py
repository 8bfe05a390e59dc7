"""One instance among several on a prefix: the adapter of :mod:`bridge.cluster.ownership`.

Owned by the :class:`~bridge.daemon.service.Service` when ``cluster.enabled``:
it sits between the broker link and the core. Commands pass through
:class:`~bridge.cluster.ownership.Ownership` (carried out here, left to the
instance that holds the id, or kept while a claim settles); presence and
claims arrive on the link's filter listeners; its decisions become publishes
and timers. The rules are the pure module's; here is only the wiring.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Final, assert_never

from bridge.cluster.membership import JOINING, ONLINE, Serve
from bridge.cluster.ownership import (
    Claim,
    Decision,
    Handle,
    InstanceLost,
    Ownership,
    PublishClaim,
    Refuse,
    Settle,
    Yield,
)
from bridge.config.settings import Config
from bridge.daemon.membership import MembershipAgent
from bridge.daemon.timers import Timers
from bridge.mqtt.link import Inbound, MqttLink
from bridge.protocol.actions import Action
from bridge.protocol.contract import RESERVED_ID, Rejection, Topics, peek
from bridge.protocol.core import BridgeCore
from bridge.protocol.messages import Publish

logger = logging.getLogger(__name__)

# `disconnected` for the ids of a lost instance: 1012 "service restart" (RFC 6455 §7.4.1,
# IANA registry): the server side went away and the client may connect again at once.
INSTANCE_LOST_CODE: Final = 1012


class ClusterMember:
    """This instance's part in a cluster of bridges sharing one prefix."""

    def __init__(
        self,
        config: Config,
        topics: Topics,
        link: MqttLink,
        core: BridgeCore,
        perform: Callable[[list[Action]], None],
        handle: Callable[[Inbound], None],
        membership: MembershipAgent,
        timers: Timers,
    ) -> None:
        self.name = membership.name
        self.topics = topics
        self.link = link
        self.core = core
        self.perform = perform
        self.handle = handle  # carry a command out here (the core)
        self.membership = membership
        self.timers = timers  # the claims' settle timers
        keepalive = config.mqtt.keepalive
        self.ownership = Ownership(
            self.name, claim_window=config.cluster.claim_window, claim_timeout=2.0 * keepalive
        )
        self._claims = f"{topics.prefix}/{RESERVED_ID}/claims/"
        link.listen_filter(self._claims + "+", self._on_claim)
        membership.carry_out = self.command
        membership.on_peer = self._peer
        membership.on_serve = self._serve
        membership.on_join = self._join
        self._held_before_join: set[str] = set()

    # Inbound ------------------------------------------------------------------------

    def command(self, message: Inbound) -> None:
        self._carry_out(self.ownership.command(message.connection_id, message, time.monotonic()))

    def _on_claim(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        connection_id = topic[len(self._claims) :]
        claim = Claim.decode(payload) if payload else None
        self._carry_out(self.ownership.claim_seen(connection_id, claim))

    # What the membership says ----------------------------------------------------------

    def _peer(self, name: str, state: str) -> None:
        if state == ONLINE:
            self._carry_out(self.ownership.member_online(name))
        elif state == JOINING:
            self._carry_out(self.ownership.member_joining(name))
        else:
            self._carry_out(self.ownership.member_offline(name))

    def _join(self) -> None:
        """This instance (re)joins: it claims nothing until it serves again, and what the
        others hold by then is theirs (it may have been declared lost meanwhile)."""
        if self.ownership.ready:
            self._held_before_join = set(self.ownership.held_here())
        self.ownership.ready = False

    def _serve(self, serve: Serve) -> None:
        """The join is over. Commands held meanwhile: when other instances served, they
        had them too, so only those of ids this instance still holds are its own; the
        rest were carried out there, or answered with ``disconnected`` if this instance
        was declared lost, and are dropped here."""
        self.ownership.ready = True
        dropped = 0
        for command in serve.commands:
            assert isinstance(command, Inbound)
            if not serve.others_served or self.ownership.holds(command.connection_id):
                self.command(command)
            else:
                dropped += 1
        if dropped:
            logger.warning(
                "dropped %d commands that arrived while this instance %s; "
                "the other instances had them",
                dropped,
                "was away" if serve.rejoined else "joined",
            )
        for connection_id in sorted(self._held_before_join):
            if not self.ownership.holds(connection_id):
                self._lost_while_away(connection_id)
        self._held_before_join = set()
        self._carry_out(self.ownership.reevaluate())

    def _lost_while_away(self, connection_id: str) -> None:
        """An id this instance held before it was away is no longer its own."""
        if not self.core.in_use(connection_id):
            return
        logger.warning("[%s] taken over while this instance was away: ended here", connection_id)
        reason = "this bridge instance was away and the connection was taken over"
        self.perform(self.core.hand_over(connection_id, INSTANCE_LOST_CODE, reason))

    # Timers and the supervisor's sweep ------------------------------------------------

    def sweep(self) -> None:
        """Every second or so: unclaimed commands, claims no longer needed."""
        if not self.ownership.ready:
            return
        decisions = self.ownership.sweep(time.monotonic())
        for connection_id in self.ownership.held_here():
            open_ = self.core.phase(connection_id) is not None
            in_use = self.core.in_use(connection_id)
            decisions += self.ownership.local_state(connection_id, open=open_, in_use=in_use)
        self._carry_out(decisions)

    def stop(self) -> None:
        """A clean stop: this instance's claims cleared."""
        self._carry_out(self.ownership.release_all())

    # Decisions ------------------------------------------------------------------------

    def _carry_out(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            match decision:
                case Handle(_, command):
                    assert isinstance(command, Inbound)
                    self.handle(command)
                case PublishClaim(connection_id, claim):
                    payload = claim.encode() if claim is not None else b""
                    topic = self._claims + connection_id
                    self.link.publish(Publish(topic, payload, 1, retain=True))
                case Settle(connection_id, delay):
                    self.timers.later(delay, self._settle, connection_id)
                case InstanceLost(connection_id, instance, _):
                    # Said for every id it held, open or not (a connection it had just
                    # opened may not show in its claim yet; its conversation is gone too).
                    reason = f"the bridge instance {instance} holding it was lost"
                    self.perform(self.core.disconnected(connection_id, INSTANCE_LOST_CODE, reason))
                case Yield(connection_id, to):
                    logger.warning("[%s] held by %s as well: it is theirs now", connection_id, to)
                    reason = f"the connection moved to the bridge instance {to}"
                    self.perform(self.core.hand_over(connection_id, INSTANCE_LOST_CODE, reason))
                case Refuse(connection_id, command, code, message):
                    assert isinstance(command, Inbound)
                    action, request_id = peek(command.payload, max_bytes=1 << 20)
                    rejection = Rejection(code, message, action, request_id)
                    self.perform(self.core.refuse(connection_id, rejection))
                case _:
                    assert_never(decision)

    def _settle(self, connection_id: str) -> None:
        self._carry_out(self.ownership.settle(connection_id))
