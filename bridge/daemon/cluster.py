"""One instance among several on a prefix: the adapter of :mod:`bridge.cluster.ownership`.

Owned by the :class:`~bridge.daemon.service.Service` when ``cluster.enabled``:
it sits between the broker link and the core. Commands pass through
:class:`~bridge.cluster.ownership.Ownership` (carried out here, left to the
instance that holds the id, or kept while a claim settles); presence and
claims arrive on the link's filter listeners; its decisions become publishes
and timers. The rules are the pure module's; here is only the wiring.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from collections.abc import Callable
from typing import Final

from bridge.cluster.ownership import (
    Claim,
    Decision,
    Handle,
    InstanceLost,
    Ownership,
    PublishClaim,
    Refuse,
    Roster,
    Settle,
    Yield,
)
from bridge.daemon.config import Config
from bridge.mqtt.link import Inbound, MqttLink
from bridge.protocol.actions import Action
from bridge.protocol.contract import RESERVED_ID, Rejection, Topics, peek
from bridge.protocol.core import BridgeCore
from bridge.protocol.messages import Publish

logger = logging.getLogger(__name__)

# `disconnected` for the ids of a lost instance: 1012 "service restart" (RFC 6455 §7.4.1,
# IANA registry): the server side went away and the client may connect again at once.
INSTANCE_LOST_CODE: Final = 1012


def instance_name(config: Config) -> str:
    return config.cluster.instance or f"{socket.gethostname()}-{config.mqtt.client_id}"


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
    ) -> None:
        self.name = instance_name(config)
        self.topics = topics
        self.link = link
        self.core = core
        self.perform = perform
        self.handle = handle  # carry a command out here (the core)
        self.qos = config.mqtt.qos
        keepalive = config.mqtt.keepalive
        self.ownership = Ownership(
            self.name, claim_window=config.cluster.claim_window, claim_timeout=2.0 * keepalive
        )
        self.roster = Roster(self.name, config.cluster.roll_call)
        self.roster.members.add(self.name)
        base = f"{topics.prefix}/{RESERVED_ID}"
        self.presence_topic = f"{base}/instances/{self.name}"
        self._instances = f"{base}/instances/"
        self._claims = f"{base}/claims/"
        link.listen_filter(f"{base}/instances/+", self._on_presence)
        link.listen_filter(f"{base}/claims/+", self._on_claim)
        link.listen_filter(topics.state, self._on_state)
        link.offline_at_stop = lambda: len(self.roster.members) <= 1
        self._roll_called = False  # the first roll call waits for the broker link
        self._stopped = False  # said `offline`: says nothing else

    # Inbound ------------------------------------------------------------------------

    def command(self, message: Inbound) -> None:
        self._carry_out(self.ownership.command(message.connection_id, message, time.monotonic()))

    def _on_presence(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        name = topic[len(self._instances) :]
        if "/" in name or name == self.name:
            return
        try:
            document = json.loads(payload) if payload else {}
        except ValueError:
            return
        if isinstance(document, dict) and document.get("state") == "online":
            new = self.roster.online(name, live=not retained)
            self.ownership.member_online(name)
            if new:
                logger.info("instance %s is here (%d instances)", name, len(self.roster.members))
            if document.get("roll") and not retained and not self._stopped:
                self._say_online(roll=False)  # answer the roll call
        elif self.roster.offline(name):
            logger.info("instance %s stopped", name)
            self._carry_out(self.ownership.member_offline(name))

    def _on_claim(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        connection_id = topic[len(self._claims) :]
        claim = Claim.decode(payload) if payload else None
        self._carry_out(self.ownership.claim_seen(connection_id, claim))

    def _on_state(self, topic: str, payload: bytes, retained: bool, _: bytes | None) -> None:
        if self._stopped:
            return
        if payload == b"offline" and not retained:  # an instance's will, or the last one stopped
            self.link.reannounce()  # we are still here: `online` again
            self._say_online(roll=True)
            self.roster.start_roll_call(time.monotonic())

    # Timers and the supervisor's sweep ------------------------------------------------

    def sweep(self) -> None:
        """Every second or so: roll calls, unclaimed commands, claims no longer needed."""
        now = time.monotonic()
        if not self._roll_called:
            if not self.link.connected.is_set():
                return
            self._roll_called = True  # who is alive, of those the retained presences name
            self._say_online(roll=True)
            self.roster.start_roll_call(now)
        for name in self.roster.roll_call_over(now):
            logger.warning("instance %s did not answer the roll call: it is lost", name)
            self._carry_out(self.ownership.member_offline(name))
        decisions: list[Decision] = []
        if not self.ownership.ready and self.roster.deadline is None:
            self.ownership.ready = True
            logger.info("cluster: %d instances: %s", len(self.roster.members), self.roster.members)
            decisions += self.ownership.reevaluate()
        decisions += self.ownership.sweep(now)
        for connection_id in self.ownership.held_here():
            open_ = self.core.phase(connection_id) is not None
            in_use = open_ or connection_id in self.core.conversations
            decisions += self.ownership.local_state(connection_id, open=open_, in_use=in_use)
        self._carry_out(decisions)

    def stop(self) -> None:
        """A clean stop: this instance's claims cleared, its presence `offline`."""
        self._stopped = True
        self._carry_out(self.ownership.release_all())
        self.link.announce(self.presence_topic, b'{"state":"offline"}')

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
                    asyncio.get_running_loop().call_later(delay, self._settle, connection_id)
                case InstanceLost(connection_id, instance, _):
                    # Said for every id it held, open or not (a connection it had just
                    # opened may not show in its claim yet; its conversation is gone too).
                    reason = f"the bridge instance {instance} holding it was lost"
                    replies = self.core.replies
                    self.perform(replies.disconnected(connection_id, INSTANCE_LOST_CODE, reason))
                case Yield(connection_id, to):
                    logger.warning("[%s] held by %s as well: it is theirs now", connection_id, to)
                    self.core.conversations.forget(connection_id)
                    reason = f"the connection moved to the bridge instance {to}"
                    self.perform(
                        self.core.end_connection(connection_id, INSTANCE_LOST_CODE, reason)
                    )
                case Refuse(connection_id, command, code, message):
                    assert isinstance(command, Inbound)
                    action, request_id = peek(command.payload, max_bytes=1 << 20)
                    rejection = Rejection(code, message, action, request_id)
                    self.perform(self.core.replies.refuse(connection_id, rejection, None))

    def _settle(self, connection_id: str) -> None:
        self._carry_out(self.ownership.settle(connection_id))

    def _say_online(self, *, roll: bool) -> None:
        """Say this instance is online (retained, and again after each reconnect); ``roll``
        asks the others to say so too."""
        document = {"state": "online", "instance": self.name, "roll": roll}
        self.link.announce(self.presence_topic, json.dumps(document).encode())
