"""Every bridge among the bridges of its prefix (pure): roll calls, joins and conflicts."""

from __future__ import annotations

from bridge.cluster.membership import (
    JOINING,
    MAX_HELD,
    OFFLINE,
    ONLINE,
    Announce,
    Busy,
    Conflict,
    Membership,
    PeerState,
    Phase,
    Presence,
    Serve,
)


def bridge(name: str, *, standalone: bool = True, incarnation: str = "1") -> Membership:
    return Membership(name, incarnation, standalone, roll_call_seconds=1.0)


def serving(name: str, *, standalone: bool = True, incarnation: str = "1") -> Membership:
    member = bridge(name, standalone=standalone, incarnation=incarnation)
    member.join(0.0, rejoin=False)
    member.over(1.0)
    assert member.phase is Phase.SERVING
    return member


def said(name: str, state: str, *, standalone: bool = True, roll: bool = False) -> Presence:
    return Presence(name, state, "9", standalone, roll)


def test_commands_wait_for_the_roll_call_then_are_served_in_order() -> None:
    a = bridge("a")
    assert a.join(0.0, rejoin=False) == [Announce(a.presence(JOINING, roll=True))]
    assert a.command("c1") == []
    assert a.command("c2") == []
    assert a.over(0.5) == []
    assert a.over(1.0) == [
        Announce(a.presence(ONLINE)),
        Serve(("c1", "c2"), rejoined=False, others_served=False),
    ]
    assert a.command("c3") is None  # serving: carried out at once


def test_held_commands_are_bounded_and_the_oldest_refused() -> None:
    a = bridge("a")
    a.join(0.0, rejoin=False)
    for n in range(MAX_HELD):
        assert a.command(n) == []
    assert a.command("one more") == [Busy(0)]


def test_a_second_standalone_bridge_refuses_to_serve_next_to_a_serving_one() -> None:
    first = serving("host-a")
    second = bridge("host-b")
    second.join(0.0, rejoin=False)
    second.command("cmd")
    # The first hears the newcomer's roll call: it answers, and says the conflict once.
    decisions = first.heard(said("host-b", JOINING, roll=True), live=True)
    assert Announce(first.presence(ONLINE)) in decisions
    assert [d for d in decisions if isinstance(d, Conflict)] == [
        Conflict(said("host-b", JOINING, roll=True), refuse=False)
    ]
    assert first.heard(said("host-b", JOINING), live=True) == []  # said once
    second.heard(Presence("host-a", ONLINE, "1", True), live=True)
    (conflict,) = second.over(1.0)
    assert isinstance(conflict, Conflict)
    assert conflict.refuse
    assert conflict.other.instance == "host-a"
    assert conflict.held == ("cmd",)
    assert second.phase is Phase.REFUSED
    assert second.command("later") == []  # never carried out


def test_a_cluster_instance_and_a_standalone_bridge_cannot_share() -> None:
    member = bridge("w1", standalone=False)
    member.join(0.0, rejoin=False)
    member.heard(said("host-a", ONLINE), live=True)
    assert member.over(1.0)[0] == Conflict(said("host-a", ONLINE), refuse=True)


def test_two_bridges_starting_together_the_higher_key_serves() -> None:
    low, high = bridge("a"), bridge("b")
    for one in (low, high):
        one.join(0.0, rejoin=False)
    low.heard(Presence("b", JOINING, "1", True, True), live=True)
    high.heard(Presence("a", JOINING, "1", True, True), live=True)
    assert isinstance(low.over(1.0)[0], Conflict)
    assert low.phase is Phase.REFUSED
    high.heard(Presence("a", OFFLINE, "1", True), live=True)  # it stops
    assert isinstance(high.over(1.0)[-1], Serve)


def test_two_serving_bridges_that_meet_the_lower_key_stops() -> None:
    """One was away (SIGSTOP) while the other started: both serve when they meet."""
    low, high = serving("a"), serving("b")
    (conflict,) = low.heard(Presence("b", ONLINE, "1", True), live=True)
    assert isinstance(conflict, Conflict)
    assert conflict.refuse
    assert high.heard(Presence("a", ONLINE, "1", True), live=True) == [
        Conflict(Presence("a", ONLINE, "1", True), refuse=False)
    ]
    assert high.phase is Phase.SERVING


def test_a_restarted_bridge_ignores_its_own_retained_presence_but_not_a_live_twin() -> None:
    again = bridge("host-a", incarnation="2")
    again.join(0.0, rejoin=False)
    assert again.heard(Presence("host-a", ONLINE, "1", True), live=False) == []
    assert isinstance(again.over(1.0)[-1], Serve)
    twin = bridge("w1", standalone=False, incarnation="3")
    twin.join(0.0, rejoin=False)
    twin.heard(Presence("w1", ONLINE, "1", False), live=True)  # the same name, alive
    assert isinstance(twin.over(1.0)[0], Conflict)


def test_cluster_instances_share_and_a_join_knows_whether_others_served() -> None:
    w1 = serving("w1", standalone=False)
    w2 = bridge("w2", standalone=False)
    w2.join(0.0, rejoin=True)
    w2.command("held")
    assert w2.heard(Presence("w1", ONLINE, "1", False), live=True) == [PeerState("w1", ONLINE)]
    assert w2.over(1.0)[-1] == Serve(("held",), rejoined=True, others_served=True)
    assert w1.heard(Presence("w2", JOINING, "1", False), live=True) == [PeerState("w2", JOINING)]


def test_the_roll_call_finds_who_is_gone() -> None:
    a = serving("a", standalone=False)
    for name in ("b", "c"):
        a.heard(Presence(name, ONLINE, "1", False), live=True)
    a.roll_call(2.0)
    a.heard(Presence("c", ONLINE, "1", False), live=True)
    assert a.over(2.5) == []
    assert a.over(3.0) == [PeerState("b", OFFLINE)]
    assert set(a.peers) == {"c"}


def test_a_retained_presence_answers_no_roll_call() -> None:
    """The last word of an instance long gone is retained: it must not count as alive."""
    a = bridge("a", standalone=False)
    a.join(0.0, rejoin=False)
    a.heard(Presence("stale", ONLINE, "1", False), live=False)
    decisions = a.over(1.0)
    assert PeerState("stale", OFFLINE) in decisions
    assert decisions[-1] == Serve((), rejoined=False, others_served=False)


def test_a_retained_standalone_presence_is_no_conflict() -> None:
    """A standalone bridge that crashed left its presence: a new one on another host may
    serve (the old one answers no roll call)."""
    b = bridge("host-b")
    b.join(0.0, rejoin=False)
    b.heard(Presence("host-a", ONLINE, "1", True), live=False)
    assert isinstance(b.over(1.0)[-1], Serve)


def test_garbage_presence_is_none() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    for payload in (deep, b"x" * 5000, b'{"state": 7}', b"[]", b"\xff", b'{"state":"odd"}'):
        assert Presence.decode("x", payload) is None
    assert Presence.decode("x", b"") == Presence("x", OFFLINE)
    old = Presence.decode("x", b'{"state":"online","instance":"x"}')
    assert old == Presence("x", ONLINE)  # an older cluster instance: no mode, no incarnation


def test_held_commands_are_bounded_by_their_bytes_too() -> None:
    """They are acknowledged to the broker while held: nothing else bounds their memory."""
    a = bridge("a")
    a.join(0.0, rejoin=False)
    mib = 1024 * 1024
    for n in range(16):
        assert a.command(n, mib) == []
    assert a.command("one more", 1) == [Busy(0)]
    assert a.command("big", 2 * mib) == [Busy(1), Busy(2)]


def test_of_two_serving_bridges_the_one_that_served_longer_goes_on() -> None:
    """A newcomer whose roll call was shorter than the broker's latency serves for a moment
    next to an old bridge: the newcomer stops, whatever the names."""
    old = serving("a")  # began to serve at 1.0
    new = serving("z")
    answer = old.presence(ONLINE, now=600.0)  # served 599 s
    assert answer.served == 599.0
    (conflict,) = new.heard(answer, live=True, now=2.0)
    assert isinstance(conflict, Conflict)
    assert conflict.refuse
    assert old.heard(new.presence(ONLINE, now=1.5), live=True, now=600.0) == [
        Conflict(new.presence(ONLINE, now=1.5), refuse=False)
    ]
    decoded = Presence.decode("a", answer.encode())
    assert decoded is not None
    assert decoded.served == 599.0
