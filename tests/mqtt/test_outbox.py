"""Unit tests of the outbox: order, bounds, acknowledgement, requeue after a drop."""

from __future__ import annotations

import asyncio

from bridge.mqtt.outbox import Entry, Outbox
from bridge.protocol.messages import Publish
from tests.helpers import SECOND


def take(box: Outbox) -> Entry:
    """The next entry to send; the test expects one to be there."""
    entry = box.take_nowait()
    assert entry is not None
    return entry


def event(n: int, *, relayed: bool = True, size: int = 10) -> Publish:
    return Publish("ai/c1/events", str(n).encode().ljust(size), 1, relayed=relayed)


async def test_fifo_and_acknowledgement() -> None:
    """Entries come out in order and leave the count only once acknowledged."""
    box = Outbox(max_messages=100, max_bytes=10_000)
    for n in range(3):
        assert box.put(event(n))
    taken = [take(box) for _ in range(3)]
    assert [e.publish.payload.strip() for e in taken] == [b"0", b"1", b"2"]
    assert len(box) == 3
    box.done(taken[1])
    assert len(box) == 3  # 0 is still unacknowledged, 1 waits behind it
    box.done(taken[0])
    assert len(box) == 1
    box.done(taken[2])
    assert len(box) == 0
    await asyncio.wait_for(box.wait_empty(), 1 * SECOND)


async def test_bound_refuses_relayed_but_not_bridge_messages() -> None:
    """When full, relayed events are refused; acknowledgements still get in."""
    box = Outbox(max_messages=2, max_bytes=10_000)
    assert box.put(event(0))
    assert box.put(event(1))
    assert box.full
    assert not box.put(event(2))
    assert box.put(event(3, relayed=False))
    assert len(box) == 3


async def test_byte_bound() -> None:
    """The byte bound counts payload sizes."""
    box = Outbox(max_messages=100, max_bytes=25)
    assert box.put(event(0, size=20))
    assert box.put(event(1, size=20))
    assert not box.put(event(2, size=1))
    assert box.size_bytes == 40


async def test_requeue_keeps_order() -> None:
    """After a drop, unacknowledged entries go back in front, before unsent ones."""
    box = Outbox(max_messages=100, max_bytes=10_000)
    for n in range(5):
        box.put(event(n))
    first = [take(box) for _ in range(3)]
    box.done(first[0])
    assert box.requeue_unacknowledged() == 2
    again = [take(box).publish.payload.strip() for _ in range(4)]
    assert again == [b"1", b"2", b"3", b"4"]


async def test_wait_for_space_wakes_on_ack() -> None:
    """A waiter for space wakes when an acknowledgement frees room."""
    box = Outbox(max_messages=1, max_bytes=10_000)
    box.put(event(0))
    waiter = asyncio.create_task(box.wait_for_space())
    await asyncio.sleep(0)
    assert not waiter.done()
    box.done(take(box))
    await asyncio.wait_for(waiter, 1 * SECOND)


async def test_waiting_readers_go_on_at_the_low_water_mark() -> None:
    """A full buffer wakes its waiting readers once it is down to 90%, not at each freed slot."""
    box = Outbox(max_messages=100, max_bytes=1_000_000)
    for n in range(100):
        assert box.put(event(n))
    assert not box.put(event(100))
    waiting = asyncio.ensure_future(box.wait_for_space())
    taken = [take(box) for _ in range(100)]
    for entry in taken[:9]:
        box.done(entry)
        await asyncio.sleep(0)
        assert not waiting.done()  # 91..99 held: still above the mark
    assert box.put(event(200))  # there is room, for a reader that was not waiting
    box.done(taken[9])
    box.done(taken[10])
    await asyncio.wait_for(waiting, 1 * SECOND)  # 90 held: the waiting readers go on
