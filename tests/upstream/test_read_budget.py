"""The read budget without sockets: frame headers found in a byte stream, reservations,
pauses, and the order in which waiting sockets go on."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from bridge.upstream.read_budget import FrameMeter, ReadBudget

HANDSHAKE = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"


def frame(payload_size: int, *, opcode: int = 1, final: bool = True) -> bytes:
    """A server frame (unmasked) with ``payload_size`` bytes of payload."""
    first = (0x80 if final else 0) | opcode
    if payload_size < 126:
        header = bytes([first, payload_size])
    elif payload_size < 1 << 16:
        header = bytes([first, 126]) + payload_size.to_bytes(2, "big")
    else:
        header = bytes([first, 127]) + payload_size.to_bytes(8, "big")
    return header + b"x" * payload_size


class Socket:
    """A meter with its reading switch."""

    def __init__(self, budget: ReadBudget, max_frame: int = 1 << 30) -> None:
        self.reading = True
        self.meter = FrameMeter(budget, self.pause, self.resume, max_frame)
        self.meter.received(HANDSHAKE)

    def pause(self) -> None:
        assert self.reading
        self.reading = False

    def resume(self) -> None:
        assert not self.reading
        self.reading = True


def test_small_frames_go_through_and_leave_when_handed_on() -> None:
    budget = ReadBudget(1000)
    socket = Socket(budget)
    socket.meter.received(frame(100) + frame(200))
    assert (budget.reserved, socket.reading) == (300, True)
    socket.meter.delivered(100)
    assert budget.reserved == 200
    socket.meter.delivered(200)
    assert budget.reserved == 0


def test_a_frame_that_does_not_fit_pauses_its_socket_until_room_comes() -> None:
    budget = ReadBudget(1000)
    first, second = Socket(budget), Socket(budget)
    first.meter.received(frame(800)[:500])  # the header is enough to reserve it
    assert budget.reserved == 800
    second.meter.received(frame(300)[:10])
    assert (second.reading, budget.reserved) == (False, 800)
    first.meter.received(frame(800)[500:])
    first.meter.delivered(800)
    assert (second.reading, budget.reserved) == (True, 300)


def test_larger_than_the_pool_is_read_alone_and_in_turn() -> None:
    budget = ReadBudget(1000)
    small, big, later = Socket(budget), Socket(budget), Socket(budget)
    small.meter.received(frame(100))
    big.meter.received(frame(5000)[:20])
    assert not big.reading  # waits for the pool to be empty
    later.meter.received(frame(10))
    assert not later.reading  # no passing the large one
    small.meter.delivered(100)
    assert (big.reading, later.reading, budget.reserved) == (True, False, 5000)
    big.meter.received(frame(5000)[20:])
    big.meter.delivered(5000)
    assert (later.reading, budget.reserved) == (True, 10)


def test_fragments_headers_split_across_reads_and_control_frames() -> None:
    budget = ReadBudget(1 << 20)
    socket = Socket(budget)
    stream = (
        frame(70_000, final=False)
        + frame(9, opcode=9)  # a ping: not reserved
        + frame(300, opcode=0, final=True)
        + frame(5)
    )
    for start in range(0, len(stream), 7):  # every header split somewhere
        socket.meter.received(stream[start : start + 7])
    assert budget.reserved == 70_000 + 300 + 5
    socket.meter.delivered(70_300)  # the fragmented message, both fragments
    assert budget.reserved == 5


def test_the_handshake_may_share_a_read_with_frames_or_be_split() -> None:
    budget = ReadBudget(1000)
    meter = FrameMeter(budget, lambda: None, lambda: None, 1 << 20)
    data = HANDSHAKE + frame(40)
    meter.received(data[:20])
    meter.received(data[20:70])
    meter.received(data[70:])
    assert budget.reserved == 40


def test_a_closed_socket_gives_back_everything() -> None:
    budget = ReadBudget(1000)
    first, second = Socket(budget), Socket(budget)
    first.meter.received(frame(900))
    second.meter.received(frame(900)[:4])
    first.meter.close()
    assert (second.reading, budget.reserved) == (True, 900)
    second.meter.close()
    assert budget.reserved == 0


def test_frames_over_the_message_limit_are_not_reserved() -> None:
    budget = ReadBudget(1000)
    socket = Socket(budget, max_frame=500)
    socket.meter.received(frame(600)[:50])  # the library fails the connection (1009)
    assert (socket.reading, budget.reserved) == (True, 0)


@given(
    sizes=st.lists(st.integers(min_value=0, max_value=3000), min_size=1, max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=4000), max_size=40),
)
def test_any_reads_reserve_exactly_the_frames(sizes: list[int], cuts: list[int]) -> None:
    """However a stream is cut into reads, each frame is reserved once, for its size."""
    budget = ReadBudget(1 << 30)
    socket = Socket(budget)
    stream = b"".join(frame(size) for size in sizes)
    start = 0
    for cut in cuts:
        socket.meter.received(stream[start : start + cut])
        start += cut
    socket.meter.received(stream[start:])
    assert budget.reserved == sum(sizes)
    for size in sizes:
        socket.meter.delivered(size)
    assert budget.reserved == 0
