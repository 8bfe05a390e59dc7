"""Which instance serves which connection id, when several bridges share a prefix (pure).

Every instance subscribes to every command (``P/+/cmd``), to the presence of
the others (``P/bridge/instances/<name>``, retained, with a last will) and to
the claims (``P/bridge/claims/<id>``, retained). An id is served by the
instance that holds its claim; an unclaimed id is claimed by its owner by
rendezvous hashing over the live instances (:func:`score`), so ids spread
evenly and a joining instance takes only new ids. A claim is first published
as ``claiming``; the claimer waits ``claim_window`` seconds for a competing
claim (two instances whose views of the membership differ for a moment),
the better one by :func:`score` wins, and only then is the id ``held`` and its
waiting commands carried out. A held claim beats any new one. Commands for an
id being claimed wait (bounded) on every instance that saw them, so whichever
instance wins has them. A claim is kept while the instance has the id's
connection or its ``ask`` conversation, then cleared. When an instance is
lost (its will), the live owner by hashing of each of its ids publishes
``disconnected`` (for those it had open) and clears the claim.

:class:`Ownership` takes these facts and returns :data:`Decision` values for
the adapter to carry out; it keeps no clock (``now`` comes in) and does no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

from bridge.protocol.error_codes import INSTANCE_BUSY

# Commands of one id waiting for its claim to settle, and in all: past these the
# oldest is refused (instance_busy), never dropped in silence.
MAX_WAITING_PER_ID: Final = 64
MAX_WAITING_IDS: Final = 10_000


def score(instance: str, connection_id: str) -> int:
    """Rendezvous hashing: the live instance with the highest score owns a free id."""
    digest = hashlib.blake2b(f"{instance}\x1f{connection_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner_of(connection_id: str, members: Iterable[str]) -> str | None:
    return max(members, key=lambda name: score(name, connection_id), default=None)


@dataclass(frozen=True, slots=True)
class Claim:
    instance: str
    held: bool  # False: claiming (within its window); True: established
    open: bool = False  # the instance has an upstream connection for the id

    def encode(self) -> bytes:
        return json.dumps(
            {
                "instance": self.instance,
                "state": "held" if self.held else "claiming",
                "open": self.open,
            },
            separators=(",", ":"),
        ).encode()

    @staticmethod
    def decode(payload: bytes) -> Claim | None:
        """A claim message; None for an empty (cleared) or unreadable one."""
        try:
            document = json.loads(payload)
        except (ValueError, RecursionError):
            return None
        if not isinstance(document, dict) or not isinstance(document.get("instance"), str):
            return None
        return Claim(
            document["instance"], document.get("state") == "held", document.get("open") is True
        )


# Decisions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Handle:
    """Carry out this command here (hand it to the core)."""

    connection_id: str
    command: object


@dataclass(frozen=True, slots=True)
class Refuse:
    """Answer this command with a retryable error (``code``): it cannot be placed now."""

    connection_id: str
    command: object
    code: str
    message: str


@dataclass(frozen=True, slots=True)
class PublishClaim:
    connection_id: str
    claim: Claim | None  # None: clear it


@dataclass(frozen=True, slots=True)
class Settle:
    """Call :meth:`Ownership.settle` for this id in ``delay`` seconds."""

    connection_id: str
    delay: float


@dataclass(frozen=True, slots=True)
class InstanceLost:
    """This id was held by ``instance``, which is gone: tell its client (when ``open``)."""

    connection_id: str
    instance: str
    open: bool


@dataclass(frozen=True, slots=True)
class Yield:
    """This instance held the id, and so does a better claim (after a partition, both
    sides took it): end what this instance has of it."""

    connection_id: str
    to: str


Decision = Handle | Refuse | PublishClaim | Settle | InstanceLost | Yield


@dataclass(slots=True)
class _Waiting:
    """Commands of an unclaimed id, waiting for a claim to settle."""

    commands: deque[object] = field(default_factory=deque)
    claiming: bool = False  # this instance has published a claim for it
    since: float = 0.0


class Ownership:
    """The claims of one prefix as this instance sees them."""

    def __init__(self, me: str, *, claim_window: float, claim_timeout: float) -> None:
        self.me = me
        self.claim_window = claim_window
        self.claim_timeout = claim_timeout  # unclaimed commands: claim them anyway after this
        self.members: set[str] = {me}  # the live instances that take new ids
        self.joining: set[str] = set()  # live, keep what they hold, take nothing new yet
        self.claims: dict[str, Claim] = {}
        self._waiting: dict[str, _Waiting] = {}
        self.ready = False  # the retained claims and presences have been read

    # Introspection --------------------------------------------------------------------

    def held_here(self) -> list[str]:
        return [cid for cid, claim in self.claims.items() if claim.instance == self.me]

    def waiting_count(self) -> int:
        return sum(len(waiting.commands) for waiting in self._waiting.values())

    # Facts ----------------------------------------------------------------------------

    def command(self, connection_id: str, command: object, now: float) -> list[Decision]:
        """A command arrived for ``connection_id``."""
        claim = self.claims.get(connection_id)
        if claim is not None and self._alive(claim.instance):
            if claim.instance != self.me:
                return []  # its holder carries it out
            if claim.held:
                return [Handle(connection_id, command)]
        waiting = self._waiting.get(connection_id)
        decisions: list[Decision] = []
        if waiting is None:
            if len(self._waiting) >= MAX_WAITING_IDS:
                return [Refuse(connection_id, command, INSTANCE_BUSY, _BUSY)]
            waiting = self._waiting[connection_id] = _Waiting(since=now)
        if len(waiting.commands) >= MAX_WAITING_PER_ID:
            oldest = waiting.commands.popleft()
            decisions.append(Refuse(connection_id, oldest, INSTANCE_BUSY, _BUSY))
        waiting.commands.append(command)
        if claim is None or not self._alive(claim.instance):
            decisions += self._maybe_claim(connection_id, waiting)
        return decisions

    def claim_seen(self, connection_id: str, claim: Claim | None) -> list[Decision]:
        """A claim message (retained or live) for ``connection_id``; None: cleared."""
        current = self.claims.get(connection_id)
        waiting = self._waiting.get(connection_id)
        if claim is None:
            if (current is not None and current.instance != self.me) or (
                current is not None and not (waiting and waiting.claiming)
            ):
                del self.claims[connection_id]
            return self._maybe_claim(connection_id, waiting) if waiting else []
        if claim.instance == self.me:
            return []  # our own, echoed (what we hold is in self.claims already)
        decisions: list[Decision] = []
        if current is not None and current.instance == self.me:
            # Not ready: this instance is (re)joining and may have been declared lost
            # meanwhile; what the others hold now is theirs.
            if self.ready and not self._beats(claim, current, connection_id):
                # A stale or weaker claimer: ours stands; say it again (the retained
                # copy is theirs now), and they yield to it.
                return [PublishClaim(connection_id, current)]
            del self.claims[connection_id]  # theirs is better
            if current.held:  # two held claims (after a partition): the better one keeps it
                decisions.append(Yield(connection_id, claim.instance))
        self.claims[connection_id] = claim
        self._waiting.pop(connection_id, None)  # the winner has these commands too
        return decisions

    def settle(self, connection_id: str) -> list[Decision]:
        """The claim window of an id this instance claims is over."""
        waiting = self._waiting.get(connection_id)
        claim = self.claims.get(connection_id)
        if waiting is None or not waiting.claiming or claim is None or claim.instance != self.me:
            return []
        held = Claim(self.me, True, claim.open)
        self.claims[connection_id] = held
        del self._waiting[connection_id]
        decisions: list[Decision] = [PublishClaim(connection_id, held)]
        decisions += [Handle(connection_id, command) for command in waiting.commands]
        return decisions

    def sweep(self, now: float) -> list[Decision]:
        """Commands nobody claimed within ``claim_timeout``: claim them here (a competing
        claim is settled by the window), so none waits for ever."""
        decisions: list[Decision] = []
        for connection_id, waiting in list(self._waiting.items()):
            if not waiting.claiming and now - waiting.since >= self.claim_timeout:
                decisions += self._claim(connection_id, waiting)
        return decisions

    def holds(self, connection_id: str) -> bool:
        """Whether this instance holds the id's claim (established)."""
        claim = self.claims.get(connection_id)
        return claim is not None and claim.instance == self.me and claim.held

    def member_online(self, name: str) -> list[Decision]:
        self.joining.discard(name)
        self.members.add(name)
        return []

    def member_joining(self, name: str) -> list[Decision]:
        """``name`` (re)joins: it keeps what it holds but takes no new id until it is
        online, so commands waiting for it as their owner go to another."""
        if name == self.me:
            return []
        self.members.discard(name)
        self.joining.add(name)
        return self.reevaluate()

    def member_offline(self, name: str) -> list[Decision]:
        """``name`` is gone: the ids it held are free; their new owner says so."""
        if name == self.me:
            return []
        self.members.discard(name)
        self.joining.discard(name)
        decisions: list[Decision] = []
        for connection_id, claim in list(self.claims.items()):
            if claim.instance != name:
                continue
            del self.claims[connection_id]
            if owner_of(connection_id, self.members) == self.me:
                decisions.append(InstanceLost(connection_id, name, claim.open))
                decisions.append(PublishClaim(connection_id, None))
        return decisions + self.reevaluate()

    def reevaluate(self) -> list[Decision]:
        """The membership changed (or this instance became ready): commands waiting for an
        unclaimed id are claimed by their owner now."""
        decisions: list[Decision] = []
        for connection_id, waiting in list(self._waiting.items()):
            claim = self.claims.get(connection_id)
            if claim is None or not self._alive(claim.instance):
                decisions += self._maybe_claim(connection_id, waiting)
        return decisions

    def local_state(self, connection_id: str, *, open: bool, in_use: bool) -> list[Decision]:
        """The core's view of an id this instance holds: keep, update or release the claim."""
        claim = self.claims.get(connection_id)
        if claim is None or claim.instance != self.me or not claim.held:
            return []
        if not in_use and connection_id not in self._waiting:
            del self.claims[connection_id]
            return [PublishClaim(connection_id, None)]
        if claim.open != open:
            self.claims[connection_id] = updated = Claim(self.me, True, open)
            return [PublishClaim(connection_id, updated)]
        return []

    def release_all(self) -> list[Decision]:
        """This instance stops: every claim it holds is cleared."""
        decisions: list[Decision] = [PublishClaim(cid, None) for cid in self.held_here()]
        for connection_id in self.held_here():
            del self.claims[connection_id]
        return decisions

    # Internals ------------------------------------------------------------------------

    def _maybe_claim(self, connection_id: str, waiting: _Waiting) -> list[Decision]:
        if not self.ready or waiting.claiming:
            return []
        if owner_of(connection_id, self.members) != self.me:
            return []
        return self._claim(connection_id, waiting)

    def _claim(self, connection_id: str, waiting: _Waiting) -> list[Decision]:
        waiting.claiming = True
        claim = Claim(self.me, False)
        self.claims[connection_id] = claim
        return [PublishClaim(connection_id, claim), Settle(connection_id, self.claim_window)]

    def _alive(self, instance: str) -> bool:
        return instance in self.members or instance in self.joining

    def _beats(self, theirs: Claim, ours: Claim, connection_id: str) -> bool:
        if theirs.held != ours.held:
            return theirs.held
        return score(theirs.instance, connection_id) > score(ours.instance, connection_id)


_BUSY: Final = "too many commands wait for their connection's instance; publish it again"
