"""Ownership of connection ids among instances (pure): claims, races, losses, releases."""

from __future__ import annotations

from bridge.cluster.ownership import (
    MAX_WAITING_PER_ID,
    Claim,
    Handle,
    InstanceLost,
    Ownership,
    PublishClaim,
    Refuse,
    Settle,
    Yield,
    owner_of,
    score,
)


def member(me: str, *others: str) -> Ownership:
    ownership = Ownership(me, claim_window=0.25, claim_timeout=10.0)
    for name in others:
        ownership.member_online(name)
    ownership.ready = True
    return ownership


def an_id_owned_by(owner: str, members: list[str]) -> str:
    return next(f"id-{n}" for n in range(1000) if owner_of(f"id-{n}", members) == owner)


def test_the_owner_claims_waits_its_window_then_carries_out() -> None:
    a = member("a", "b")
    cid = an_id_owned_by("a", ["a", "b"])
    decisions = a.command(cid, "cmd1", now=0.0)
    assert decisions == [PublishClaim(cid, Claim("a", False)), Settle(cid, 0.25)]
    assert a.command(cid, "cmd2", now=0.1) == []  # waits with the first
    decisions = a.settle(cid)
    assert decisions == [
        PublishClaim(cid, Claim("a", True)),
        Handle(cid, "cmd1"),
        Handle(cid, "cmd2"),
    ]
    assert a.command(cid, "cmd3", now=0.3) == [Handle(cid, "cmd3")]


def test_a_non_owner_keeps_the_command_until_the_owner_claims() -> None:
    b = member("b", "a")
    cid = an_id_owned_by("a", ["a", "b"])
    assert b.command(cid, "cmd1", now=0.0) == []
    assert b.waiting_count() == 1
    assert b.claim_seen(cid, Claim("a", False)) == []
    assert b.waiting_count() == 0  # the owner has it
    assert b.command(cid, "cmd2", now=0.1) == []  # the holder carries it out


def test_two_claims_race_the_better_score_wins_on_both_sides() -> None:
    """Views differ for a moment (a joined instance not yet seen): both claim."""
    cid = "contested"
    high, low = sorted(["a", "b"], key=lambda name: score(name, cid), reverse=True)
    winner, loser = member(high), member(low)  # each thinks it is alone
    assert winner.command(cid, "cmd", 0.0)[0] == PublishClaim(cid, Claim(high, False))
    assert loser.command(cid, "cmd", 0.0)[0] == PublishClaim(cid, Claim(low, False))
    winner.member_online(low)
    loser.member_online(high)
    assert winner.claim_seen(cid, Claim(low, False)) == [PublishClaim(cid, Claim(high, False))]
    assert loser.claim_seen(cid, Claim(high, False)) == []
    assert loser.settle(cid) == []  # lost: carries out nothing
    assert [type(d) for d in winner.settle(cid)] == [PublishClaim, Handle]


def test_a_held_claim_beats_a_new_one_whatever_its_score() -> None:
    cid = "held-id"
    holder = member("a", "b")
    holder.claims[cid] = Claim("a", True)
    stale = Claim("b", False)
    assert holder.claim_seen(cid, stale) == [PublishClaim(cid, Claim("a", True))]  # repaired
    other = member("b", "a")
    other.command(cid, "cmd", 0.0)
    other.claim_seen(cid, Claim("a", True))
    assert other.claims[cid].instance == "a"


def test_a_lost_instance_is_reported_by_the_new_owner_only() -> None:
    members = ["a", "b", "c"]
    cid = an_id_owned_by("b", members)
    new_owner = owner_of(cid, ["a", "c"])
    assert new_owner is not None
    bystander = "c" if new_owner == "a" else "a"
    owners = {name: member(name, *[m for m in members if m != name]) for name in ("a", "c")}
    for ownership in owners.values():
        ownership.claim_seen(cid, Claim("b", True, open=True))
    assert owners[new_owner].member_offline("b") == [
        InstanceLost(cid, "b", True),
        PublishClaim(cid, None),
    ]
    assert owners[bystander].member_offline("b") == []
    assert cid not in owners[bystander].claims


def test_a_claim_is_released_when_the_id_is_no_longer_used() -> None:
    a = member("a")
    a.command("x", "cmd", 0.0)
    a.settle("x")
    assert a.local_state("x", open=True, in_use=True) == [PublishClaim("x", Claim("a", True, True))]
    assert a.local_state("x", open=True, in_use=True) == []
    assert a.local_state("x", open=False, in_use=False) == [PublishClaim("x", None)]
    assert a.held_here() == []


def test_waiting_is_bounded_and_refused_not_dropped() -> None:
    b = member("b", "a")
    cid = an_id_owned_by("a", ["a", "b"])
    decisions = []
    for n in range(MAX_WAITING_PER_ID + 3):
        decisions += b.command(cid, n, now=0.0)
    refused = [d for d in decisions if isinstance(d, Refuse)]
    assert [d.command for d in refused] == [0, 1, 2]
    assert refused[0].code == "instance_busy"


def test_unclaimed_commands_are_claimed_after_the_timeout() -> None:
    b = member("b", "a")  # "a" owns it but never claims (gone, not yet known)
    cid = an_id_owned_by("a", ["a", "b"])
    b.command(cid, "cmd", now=0.0)
    assert b.sweep(now=5.0) == []
    assert b.sweep(now=10.0) == [PublishClaim(cid, Claim("b", False)), Settle(cid, 0.25)]


def test_two_held_claims_after_a_partition_the_better_one_keeps_the_id() -> None:
    cid = "split"
    high, low = sorted(["a", "b"], key=lambda name: score(name, cid), reverse=True)
    weaker = member(low, high)
    weaker.claims[cid] = Claim(low, True, open=True)
    stronger = member(high, low)
    stronger.claims[cid] = Claim(high, True, open=True)
    assert weaker.claim_seen(cid, Claim(high, True)) == [Yield(cid, high)]
    assert weaker.claims[cid].instance == high
    # The stronger one says its claim again; no ping-pong: the weaker does not answer.
    assert stronger.claim_seen(cid, Claim(low, True)) == [
        PublishClaim(cid, Claim(high, True, True))
    ]


def test_waiting_commands_are_claimed_when_their_owner_turns_out_gone() -> None:
    b = member("b", "stale")
    cid = an_id_owned_by("stale", ["b", "stale"])
    assert b.command(cid, "cmd", now=0.0) == []
    assert b.member_offline("stale") == [PublishClaim(cid, Claim("b", False)), Settle(cid, 0.25)]


def test_garbage_claims_are_no_claims() -> None:
    """P/bridge/claims/<id> is the bridges' own (the README's ACL); still, what is not a
    claim (deep, huge, wrong types) reads as none, and cannot take an id."""
    deep = b"[" * 100_000 + b"]" * 100_000
    for payload in (deep, b"x" * (1 << 20), b'{"instance": 7}', b"[]", b"\xff"):
        assert Claim.decode(payload) is None
    a = member("a")
    a.command("x", "cmd", 0.0)
    assert a.claim_seen("x", Claim.decode(deep)) == []  # a clear of nothing: ours stands
    assert [type(d) for d in a.settle("x")] == [PublishClaim, Handle]


def test_a_joining_instance_keeps_its_claims_but_takes_no_new_id() -> None:
    """While ``b`` (re)joins, commands that wait for it as their owner go to ``a``; what
    ``b`` holds stays ``b``'s."""
    a = member("a", "b")
    cid = an_id_owned_by("b", ["a", "b"])
    held = an_id_owned_by("b", ["a", "b"]) + "-held"
    a.claims[held] = Claim("b", True)
    assert a.command(cid, "cmd", now=0.0) == []  # b's to claim
    assert a.member_joining("b") == [PublishClaim(cid, Claim("a", False)), Settle(cid, 0.25)]
    assert a.command(held, "cmd2", now=0.0) == []  # still b's
    a.member_online("b")
    assert a.members == {"a", "b"}
    assert not a.joining


def test_a_rejoining_instance_yields_to_whatever_the_others_hold_now() -> None:
    """Declared lost while it was away (the partition rule does not apply): the claim
    the others hold now wins, whatever the scores."""
    cid = "split"
    high, low = sorted(["a", "b"], key=lambda name: score(name, cid), reverse=True)
    stronger = member(high, low)
    stronger.claims[cid] = Claim(high, True, open=True)
    stronger.ready = False  # joining again
    assert stronger.claim_seen(cid, Claim(low, True)) == [Yield(cid, low)]
    assert not stronger.holds(cid)
