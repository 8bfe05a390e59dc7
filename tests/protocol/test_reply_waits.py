"""Which waiting tool call a reply answers (pure): its own topic, its own correlation."""

from __future__ import annotations

from bridge.protocol.reply_waits import ReplyWaits

DOOR, LIGHT = "dev/door/state", "dev/light/state"


def test_a_reply_counts_only_on_its_calls_reply_topic() -> None:
    waits = ReplyWaits()
    door = waits.add("c1", 0, DOOR)
    waits.add("c1", 1, LIGHT)
    assert waits.match(LIGHT, door.correlation) is None  # the door's correlation, wrong topic
    assert waits.match(DOOR, door.correlation) is door


def test_a_correlated_reply_that_matches_no_wait_is_dropped() -> None:
    waits = ReplyWaits()
    timed_out = waits.add("c1", 0, DOOR)
    waits.forget(timed_out.number)
    newer = waits.add("c1", 0, DOOR)  # same id, same position, same topic: a new wait
    assert newer.correlation != timed_out.correlation
    assert waits.match(DOOR, timed_out.correlation) is None  # the late reply
    assert waits.match(DOOR, b"forged") is None
    assert waits.match(DOOR, None) is newer  # no correlation data: the oldest waiting call


def test_replies_without_correlation_take_the_oldest_wait_of_their_topic() -> None:
    waits = ReplyWaits()
    first, second = waits.add("c1", 0, DOOR), waits.add("c2", 0, DOOR)
    waits.add("c1", 1, LIGHT)
    assert waits.match(DOOR, None) is first
    assert waits.match(DOOR, b"") is first  # empty correlation data is none
    waits.forget(first.number)
    assert waits.match(DOOR, None) is second
    waits.forget(second.number)
    assert waits.match(DOOR, None) is None
    assert len(waits) == 1


def test_forgetting_leaves_nothing_behind() -> None:
    waits = ReplyWaits()
    numbers = [waits.add("c1", position, DOOR).number for position in range(3)]
    assert len(set(numbers)) == 3
    for number in numbers:
        waits.forget(number)
        waits.forget(number)  # twice: harmless
    assert len(waits) == 0
    assert waits.match(DOOR, None) is None
    assert waits.get(numbers[0]) is None
