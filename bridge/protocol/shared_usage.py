"""The day's usage of every instance on a prefix, and which day counts (pure).

Each instance keeps its own :class:`~bridge.protocol.guardrails.UsageBook`
and publishes it, retained, on ``P/bridge/instances/<name>/usage``; it reads
the others' from there. :class:`SharedUsage` holds its own book and the latest
book of every other instance, and answers what the budgets ask: the tokens of
the whole prefix, of a profile, of an id, on the current day, whatever the
liveness of the instances (a lost instance's spend still counts).

Days move forward only (a clock that jumps must not hand out fresh budgets):

- the clock goes forward: the current book is set aside (``earlier``) and a
  new one starts;
- the clock goes back: counting goes on into the latest day, unless the day
  the clock went back to is the one set aside: then that book is folded back
  in, with everything counted since (nothing is lost). The later day's book
  is remembered (``folded``): a copy of it read back later (our retained
  document, after a restart) adds only what it has more, never all of it again.

Books of one instance for one day only grow, so two copies of one (the file
and the retained document after a restart, or two documents of a peer) are
merged by taking the larger of each count. Nothing here reads a clock, a
file or the network.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Final

from bridge.protocol.guardrails import MAX_USAGE_IDS, OTHER_IDS, Tokens, UsageBook

# Instances whose books are kept (each document is bounded: usage_documents.py).
MAX_INSTANCES: Final = 32


def _nothing() -> None:
    pass


class SharedUsage:
    """This instance's usage of the day and the other instances', as the budgets see it."""

    def __init__(
        self,
        own: UsageBook | None = None,
        earlier: UsageBook | None = None,
        folded: UsageBook | None = None,
        name: str = "",
    ) -> None:
        self.name = name  # this instance's
        self.own = own if own is not None else UsageBook()  # the latest day's
        self.earlier = earlier  # set aside by the last forward move of the day
        self.folded = folded  # the later day's book last folded back into ``own``
        self.peers: dict[str, UsageBook] = {}  # the latest book of each other instance
        self._peer_sum = UsageBook()  # the peers' books of the current day, added up
        self.revision = 0  # bumped whenever a total may have changed
        self.unsaved = own is not None  # the own books changed since they were last saved
        self.unpublished = own is not None  # the own book changed since it was last published
        self.on_change: Callable[[], None] = _nothing  # told of every change (a wake-up)

    @property
    def day(self) -> date | None:
        """The day being counted (None until the first look at the clock)."""
        return self.own.day

    # What the budgets read --------------------------------------------------------------

    def used(self) -> int:
        return self.own.bridge.total + self._peer_sum.bridge.total

    def used_by(self, connection_id: str) -> int:
        return self.own.used_by(connection_id) + self._peer_sum.used_by(connection_id)

    def used_by_profile(self, profile: str) -> int:
        return self.own.used_by_profile(profile) + self._peer_sum.used_by_profile(profile)

    def totals(self) -> UsageBook:
        """Every instance's usage of the day, added up (a new book)."""
        total = UsageBook(day=self.own.day)
        add_book(total, self.own)
        add_book(total, self._peer_sum)
        return total

    def shares(self) -> dict[str, Tokens]:
        """Each instance's tokens of the day: this one first, then those that spent any."""
        shares = {self.name: self.own.bridge}
        for name, book in sorted(self.peers.items()):
            if book.day == self.own.day and name != self.name:
                shares[name] = book.bridge
        return shares

    # What changes it ---------------------------------------------------------------------

    def roll(self, today: date) -> None:
        """The clock says ``today``: the day counted moves forward, or folds back."""
        day = self.own.day
        if day == today:
            return
        if day is None:
            self.own.day = today
        elif today > day:
            self.earlier, self.own, self.folded = self.own, UsageBook(day=today), None
        elif self.earlier is not None and self.earlier.day == today:
            back, self.earlier = self.earlier, None
            self.folded = copy_book(self.own)
            add_book(back, self.own, limit=MAX_USAGE_IDS)
            self.own = back
        else:
            return  # back to a day never counted: counting goes on into the latest one
        self._sum_peers()
        self._own_changed()

    def charge(self, connection_id: str, profile: str, tokens: Tokens) -> None:
        self.own.charge(connection_id, profile, tokens)
        self._own_changed()

    def merge_own(self, book: UsageBook) -> None:
        """This instance's document as the broker kept it (after a restart, say): merged."""
        own, folded = self.own, self.folded
        if book.day is None:
            return
        if folded is not None and book.day == folded.day:  # folded in already: what is new
            grown = merge_larger(folded, book)
            if is_empty(grown):
                return
            add_book(own, grown, limit=MAX_USAGE_IDS)
        elif own.day is None or book.day > own.day:  # the later day is counted into
            if own.day is not None:
                self.earlier = own
            self.own = book
        elif book.day == own.day:
            if is_empty(merge_larger(own, book)):
                return
        elif self.earlier is not None and book.day == self.earlier.day:
            if not is_empty(merge_larger(self.earlier, book)):
                self.unsaved = True
            return
        else:
            return  # an earlier day's: over
        self._sum_peers()
        self._own_changed()

    def merge_peer(self, name: str, book: UsageBook) -> bool:
        """Another instance's latest document; False when too many instances are kept."""
        old = self.peers.get(name)
        if old is None and len(self.peers) >= MAX_INSTANCES:
            return False
        if old is not None and old.day == book.day:
            merge_larger(book, old)  # what it said before still counts (a restart lost it)
        self._replace_peer(name, old, book)
        return True

    def forget_peer(self, name: str) -> None:
        """Its document was cleared (by hand): its usage no longer counts."""
        old = self.peers.get(name)
        if old is not None:
            self._replace_peer(name, old, None)

    # Internals ---------------------------------------------------------------------------

    def _replace_peer(self, name: str, old: UsageBook | None, new: UsageBook | None) -> None:
        day = self.own.day
        if old is not None and old.day == day:
            subtract_book(self._peer_sum, old)
        if new is None:
            del self.peers[name]
        else:
            self.peers[name] = new
            if new.day == day:
                add_book(self._peer_sum, new)
        self._changed()

    def _sum_peers(self) -> None:
        self._peer_sum = UsageBook(day=self.own.day)
        for book in self.peers.values():
            if book.day == self.own.day:
                add_book(self._peer_sum, book)

    def _own_changed(self) -> None:
        self.unsaved = self.unpublished = True
        self._changed()

    def _changed(self) -> None:
        self.revision += 1
        self.on_change()


def add_book(into: UsageBook, other: UsageBook, limit: int | None = None) -> None:
    """Add ``other``'s counts to ``into``; past ``limit`` ids, new ones go to "(other)"."""
    into.bridge.add(other.bridge)
    for name, tokens in other.profiles.items():
        into.profiles.setdefault(name, Tokens()).add(tokens)
    for name, tokens in other.ids.items():
        if limit is not None and name not in into.ids and len(into.ids) >= limit:
            name = OTHER_IDS
        into.ids.setdefault(name, Tokens()).add(tokens)


def subtract_book(into: UsageBook, other: UsageBook) -> None:
    """Take ``other``'s counts (added before) out of ``into``; entries left at zero go."""
    _subtract(into.bridge, other.bridge)
    for counts, others in ((into.profiles, other.profiles), (into.ids, other.ids)):
        for name, tokens in others.items():
            kept = counts.get(name)
            if kept is not None:
                _subtract(kept, tokens)
                if kept.total == kept.input == kept.output == 0:
                    del counts[name]


def merge_larger(into: UsageBook, other: UsageBook) -> UsageBook:
    """Two copies of one instance's book of one day: keep the larger of each count in
    ``into`` (ids past the bound are left out). What grew, as a book."""
    grown = UsageBook(day=into.day, bridge=_larger(into.bridge, other.bridge))
    for counts, others, grew in (
        (into.profiles, other.profiles, grown.profiles),
        (into.ids, other.ids, grown.ids),
    ):
        for name, tokens in others.items():
            kept = counts.get(name)
            if kept is None:
                if len(counts) >= MAX_USAGE_IDS:
                    continue
                kept = counts[name] = Tokens()
            more = _larger(kept, tokens)
            if more.input or more.output or more.total:
                grew[name] = more
    return grown


def is_empty(book: UsageBook) -> bool:
    counts = book.bridge
    return not (counts.input or counts.output or counts.total or book.profiles or book.ids)


def copy_book(book: UsageBook) -> UsageBook:
    copy = UsageBook(day=book.day)
    add_book(copy, book)
    return copy


def _subtract(into: Tokens, other: Tokens) -> None:
    into.input -= other.input
    into.output -= other.output
    into.total -= other.total


def _larger(into: Tokens, other: Tokens) -> Tokens:
    """Raise each count of ``into`` to ``other``'s; by how much."""
    more = Tokens(
        max(other.input - into.input, 0),
        max(other.output - into.output, 0),
        max(other.total - into.total, 0),
    )
    into.add(more)
    return more
