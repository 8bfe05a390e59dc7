"""Who else serves this prefix, and whether this bridge may serve it (pure).

Every bridge, standalone or one instance of a cluster, says who it is on
``P/bridge/instances/<name>`` (retained) and listens to the others. Before it
serves, and again whenever it may have been away (its broker link was lost,
or its event loop stood still long enough to miss a roll call: SIGSTOP, a
paused VM), it *joins*: it says ``joining`` with a roll call, holds every
command, and waits ``roll_call`` seconds for the others to answer. Then:

- another live bridge that cannot share the prefix with it (either of the two
  is standalone, or both carry the same name) and already serves, or joins
  with a better key: this bridge is ``REFUSED`` and must not serve at all;
- else it serves, and the held commands go on (:class:`Serve`), with what the
  cluster needs to know to drop those another instance served meanwhile.

Two bridges that both serve and cannot share find each other at once (each
one's presence reaches the other); the one with the lower key refuses. The
key is ``(name, incarnation)``; the incarnation is random per process, so a
restarted bridge tells its old retained presence from a live twin.

:class:`Membership` keeps no clock and does no I/O: ``now`` comes in, and it
returns :data:`Decision` values for :mod:`bridge.daemon.membership` to carry
out.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from dataclasses import dataclass, field
from typing import Final

ONLINE: Final = "online"
JOINING: Final = "joining"
OFFLINE: Final = "offline"
MAX_PRESENCE_BYTES: Final = 4096  # a presence is a few dozen bytes; larger ones are garbage
# Commands held while joining (they are acknowledged to the broker, so nothing else
# bounds them); past either bound the oldest is refused (instance_busy).
MAX_HELD: Final = 1024
MAX_HELD_BYTES: Final = 16 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Presence:
    """What one bridge says of itself on ``P/bridge/instances/<name>``."""

    instance: str
    state: str  # ONLINE, JOINING or OFFLINE
    incarnation: str = ""  # random per process ("" from bridges older than 0.x)
    standalone: bool = False
    roll: bool = False  # asks every other bridge of the prefix to say it is here
    served: float = 0.0  # seconds it has served when it said this (online only)

    @property
    def key(self) -> tuple[str, str]:
        return (self.instance, self.incarnation)

    def encode(self) -> bytes:
        document = {
            "state": self.state,
            "instance": self.instance,
            "incarnation": self.incarnation,
            "mode": "standalone" if self.standalone else "cluster",
            "roll": self.roll,
            "served": round(self.served, 1),
        }
        return json.dumps(document, separators=(",", ":")).encode()

    @staticmethod
    def decode(name: str, payload: bytes) -> Presence | None:
        """The presence of ``name``; None for garbage. Bridges that say no ``mode`` are
        cluster instances (standalone bridges said nothing before)."""
        if len(payload) > MAX_PRESENCE_BYTES:
            return None
        try:
            document = json.loads(payload) if payload else {"state": OFFLINE}
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict):
            return None
        state = document.get("state")
        incarnation = document.get("incarnation", "")
        if state not in (ONLINE, JOINING, OFFLINE) or not isinstance(incarnation, str):
            return None
        return Presence(
            name,
            state,
            incarnation[:64],
            document.get("mode") == "standalone",
            document.get("roll") is True,
            _seconds(document.get("served")),
        )


class Phase(enum.Enum):
    JOINING = "joining"  # a roll call runs; commands are held
    SERVING = "serving"
    REFUSED = "refused"  # another bridge serves the prefix: this one must not


# Decisions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Announce:
    """Say this presence (retained)."""

    presence: Presence


@dataclass(frozen=True, slots=True)
class PeerState:
    """A cluster peer is ``state`` now: ONLINE (a member), JOINING, or OFFLINE (gone)."""

    name: str
    state: str


@dataclass(frozen=True, slots=True)
class Serve:
    """The join is over: serve, starting with the held commands.

    ``others_served`` is True when other instances of the cluster served while
    this one joined: they had every command this one held, so only those for
    ids this instance still holds are its own.
    """

    commands: tuple[object, ...]
    rejoined: bool
    others_served: bool


@dataclass(frozen=True, slots=True)
class Conflict:
    """Another bridge serves this prefix and cannot share it with this one.

    ``refuse``: this bridge must stop serving (it joined later, or has the lower
    key); else the other one will, and this is said once as an error.
    """

    other: Presence
    refuse: bool
    held: tuple[object, ...] = ()  # the commands held when refusing: not carried out


@dataclass(frozen=True, slots=True)
class Busy:
    """Too many commands wait for the join: refuse this one (retryable)."""

    command: object


Decision = Announce | PeerState | Serve | Conflict | Busy


@dataclass(slots=True)
class Membership:
    """This bridge among the bridges of its prefix."""

    me: str
    incarnation: str
    standalone: bool
    roll_call_seconds: float
    phase: Phase = Phase.JOINING
    rejoining: bool = False
    deadline: float | None = None  # the end of the running roll call
    peers: dict[str, Presence] = field(default_factory=dict)  # alive, as far as we know
    conflicts: dict[tuple[str, str], Presence] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)
    _held: deque[tuple[object, int]] = field(default_factory=deque)
    _held_bytes: int = 0
    serving_since: float | None = None  # when this bridge last began to serve

    # What this bridge says -------------------------------------------------------------

    def presence(self, state: str, *, roll: bool = False, now: float = 0.0) -> Presence:
        served = now - self.serving_since if self.serving_since is not None else 0.0
        return Presence(self.me, state, self.incarnation, self.standalone, roll, max(0.0, served))

    def join(self, now: float, *, rejoin: bool) -> list[Decision]:
        """Start (again): hold commands, say ``joining`` and call the roll."""
        if self.phase is Phase.REFUSED:
            return []
        self.phase = Phase.JOINING
        self.rejoining = self.rejoining or rejoin
        self._answered = set()
        self.deadline = now + self.roll_call_seconds
        return [Announce(self.presence(JOINING, roll=True))]

    def roll_call(self, now: float) -> list[Decision]:
        """Ask every bridge to say it is here (a will was heard): those that do not
        within ``roll_call_seconds`` are gone. Commands go on meanwhile."""
        if self.phase is not Phase.SERVING:
            return []
        self._answered = set()
        self.deadline = now + self.roll_call_seconds
        return [Announce(self.presence(ONLINE, roll=True, now=now))]

    # Facts -----------------------------------------------------------------------------

    def command(self, command: object, size: int = 0) -> list[Decision] | None:
        """A command (of ``size`` bytes) arrived: None to carry it out now, else what to
        do instead."""
        if self.phase is Phase.SERVING:
            return None
        if self.phase is Phase.REFUSED:
            return []  # the bridge that serves the prefix has it too
        self._held.append((command, size))
        self._held_bytes += size
        busy: list[Decision] = []
        while len(self._held) > MAX_HELD or self._held_bytes > MAX_HELD_BYTES:
            oldest, oldest_size = self._held.popleft()
            self._held_bytes -= oldest_size
            busy.append(Busy(oldest))
        return busy

    def heard(self, presence: Presence, *, live: bool, now: float = 0.0) -> list[Decision]:
        """``presence`` arrived (``live``: just said; else a retained copy, which answers
        no roll call: it may be the last word of a bridge long gone)."""
        if presence.instance == self.me and presence.incarnation == self.incarnation:
            return []  # our own, echoed
        if presence.instance == self.me and not live:
            return []  # what this bridge said before a restart
        if presence.state == OFFLINE:
            return self._gone(presence.instance)
        if live:
            self._answered.add(presence.instance)
        decisions: list[Decision] = []
        if live and presence.roll and self.phase is not Phase.REFUSED:
            state = ONLINE if self.phase is Phase.SERVING else JOINING
            decisions.append(Announce(self.presence(state, now=now)))  # answer the roll call
        if self._can_share(presence):
            self.peers[presence.instance] = presence
            decisions.append(PeerState(presence.instance, presence.state))
        elif live:
            decisions += self._rival(presence, now)
        return decisions

    def over(self, now: float) -> list[Decision]:
        """Called now and then: the end of a roll call (who is gone; whether to serve)."""
        if self.deadline is None or now < self.deadline:
            return []
        self.deadline = None
        decisions: list[Decision] = []
        silent = {key[0] for key in self.conflicts} | set(self.peers)
        for name in sorted(silent - self._answered):
            decisions += self._gone(name)
        if self.phase is not Phase.JOINING:
            return decisions
        rivals = [
            rival
            for rival in self.conflicts.values()
            if rival.state == ONLINE or rival.key > (self.me, self.incarnation)
        ]
        if rivals:
            return decisions + self._refuse(max(rivals, key=lambda rival: rival.key))
        self.phase = Phase.SERVING
        self.serving_since = now
        others_served = any(peer.state == ONLINE for peer in self.peers.values())
        held = self._release()
        rejoined, self.rejoining = self.rejoining, False
        return [*decisions, Announce(self.presence(ONLINE)), Serve(held, rejoined, others_served)]

    # Internals -------------------------------------------------------------------------

    def _can_share(self, other: Presence) -> bool:
        return not (self.standalone or other.standalone or other.instance == self.me)

    def _rival(self, other: Presence, now: float) -> list[Decision]:
        before = self.conflicts.get(other.key)
        self.conflicts[other.key] = other
        # Both serve (one was away while the other started): the lower key stops.
        if self.phase is Phase.SERVING and other.state == ONLINE and self._yields_to(other, now):
            return self._refuse(other)
        if before is not None and before.state == other.state:
            return []  # said already
        return [Conflict(other, refuse=False)] if self.phase is Phase.SERVING else []

    def _yields_to(self, other: Presence, now: float) -> bool:
        """Both serve: the one that has served longer goes on (a roll call shorter than the
        broker's latency must not stop the bridge that was there first); else the higher key."""
        mine = now - self.serving_since if self.serving_since is not None else 0.0
        if abs(other.served - mine) > self.roll_call_seconds:
            return other.served > mine
        return other.key > (self.me, self.incarnation)

    def _refuse(self, other: Presence) -> list[Decision]:
        self.phase, self.serving_since = Phase.REFUSED, None
        return [Conflict(other, refuse=True, held=self._release())]

    def _release(self) -> tuple[object, ...]:
        held = tuple(command for command, _ in self._held)
        self._held, self._held_bytes = deque(), 0
        return held

    def _gone(self, name: str) -> list[Decision]:
        self._answered.discard(name)
        for key in [key for key in self.conflicts if key[0] == name]:
            del self.conflicts[key]
        if self.peers.pop(name, None) is None:
            return []
        return [PeerState(name, OFFLINE)]


def _seconds(value: object) -> float:
    """A non-negative number of seconds from a document; 0 for anything else."""
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1e12:
        return float(value)
    return 0.0
