"""What the upstream sockets may hold at once: server events read and not yet handed on.

Pure (no I/O): the sockets' bytes come in through :meth:`FrameMeter.received`,
and reading is paused and resumed through two callbacks.

A server event is held from its first byte off a socket until the reader
hands it to the event buffer: while its frame is read (the WebSocket library
gathers it whole), while it waits in the library's queue, and while its
reader waits for room in the event buffer. :class:`ReadBudget` bounds that
across every connection: each data frame reserves its size from one pool
(``openai.max_bytes_in_flight``) as its header arrives, before its payload is
read; a socket whose frame does not fit pauses until earlier events have
been handed on. Frames are granted in the order they asked (a large one is
not passed over by smaller ones), and one larger than the whole pool is read
alone. What a socket reads past a frame that waits, in the same read, is not
counted: at most one read (256 KiB) per connection.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Final

_END_OF_HEADERS: Final = b"\r\n\r\n"
_CONTROL: Final = 0x08  # opcodes from 8 up: close, ping, pong (at most 125 bytes)


class ReadBudget:
    """The pool that every upstream socket's data frames reserve their size from."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.reserved = 0
        self._waiting: deque[FrameMeter] = deque()  # each waits for its first pending frame

    def ask(self, meter: FrameMeter, size: int) -> bool:
        """Reserve ``size`` for ``meter``'s next frame now, or queue it; True if granted."""
        if not self._waiting and self._fits(size):
            self.reserved += size
            return True
        if meter not in self._waiting:
            self._waiting.append(meter)
        return False

    def release(self, size: int) -> None:
        self.reserved -= size
        while self._waiting:
            meter = self._waiting[0]
            size = meter.wanted
            if not self._fits(size):
                return
            self._waiting.popleft()
            self.reserved += size
            meter.granted()

    def forget(self, meter: FrameMeter) -> None:
        """A socket is gone: it waits no more (its reservations are released by the meter)."""
        if meter in self._waiting:
            self._waiting.remove(meter)

    def _fits(self, size: int) -> bool:
        return self.reserved + size <= self.limit or self.reserved == 0


class FrameMeter:
    """The frames of one upstream socket's byte stream, and their reservations.

    It finds the frame headers in the bytes the socket reads (after the HTTP
    handshake response), asks the budget for each data frame's payload size,
    pauses reading while a frame waits, and releases a message's frames when
    the reader has handed it on (:meth:`delivered`).
    """

    def __init__(
        self,
        budget: ReadBudget,
        pause: Callable[[], None],
        resume: Callable[[], None],
        max_frame: int,
    ) -> None:
        self._budget = budget
        self._pause = pause
        self._resume = resume
        self._max_frame = max_frame  # larger frames fail the connection: never reserved
        self._in_handshake = True
        self._partial = bytearray()  # a frame header (or the handshake's end) split across reads
        self._payload_left = 0  # bytes of the current frame's payload still to come
        self._pending: deque[tuple[int, bool]] = deque()  # (size, final) waiting for the pool
        self._granted: deque[tuple[int, bool]] = deque()  # reserved, not yet handed on
        self.waiting = False

    @property
    def wanted(self) -> int:
        """The size the first pending frame asks for."""
        return self._pending[0][0]

    @property
    def held(self) -> int:
        """Bytes reserved for this socket's frames not yet handed on."""
        return sum(size for size, _ in self._granted)

    def received(self, data: bytes) -> None:
        """The socket read ``data``: reserve the data frames whose headers it completes."""
        start = 0
        if self._in_handshake:
            start = self._handshake_end(data)
            if start < 0:
                return
        end = len(data)
        while start < end:
            if self._payload_left:
                step = min(self._payload_left, end - start)
                self._payload_left -= step
                start += step
            else:
                start = self._header(data, start)
        self._grant_pending()

    def delivered(self) -> None:
        """The reader handed one message on: its frames leave the budget."""
        released = 0
        granted = self._granted
        while granted:
            size, final = granted.popleft()
            released += size
            if final:
                break
        if released:
            self._budget.release(released)

    def granted(self) -> None:
        """The budget granted the first pending frame (it was waiting)."""
        self._granted.append(self._pending.popleft())
        self._grant_pending()

    def close(self) -> None:
        """The socket is gone: release everything it held or waited for."""
        self._budget.forget(self)
        self._pending.clear()
        held = self.held
        self._granted.clear()
        if held:
            self._budget.release(held)

    def _grant_pending(self) -> None:
        budget = self._budget
        while self._pending:
            if not budget.ask(self, self._pending[0][0]):
                if not self.waiting:
                    self.waiting = True
                    self._pause()
                return
            self._granted.append(self._pending.popleft())
        if self.waiting:
            self.waiting = False
            self._resume()

    def _handshake_end(self, data: bytes) -> int:
        """Where the frames start in ``data``, past the HTTP response; -1: not yet."""
        seen = bytes(self._partial) + data
        at = seen.find(_END_OF_HEADERS)
        if at < 0:
            self._partial = bytearray(seen[-3:])
            return -1
        self._in_handshake = False
        start = at + len(_END_OF_HEADERS) - len(self._partial)
        self._partial = bytearray()
        return start

    def _header(self, data: bytes, start: int) -> int:
        """Read one frame header at ``start`` (or its part); where its payload begins."""
        partial = self._partial
        need = _header_length(partial, data, start)
        have = len(partial)
        if have + len(data) - start < need:
            partial += data[start:]
            return len(data)
        header = bytes(partial) + data[start : start + need - have]
        self._partial = bytearray()
        start += need - have
        length = _payload_length(header)
        if header[0] & 0x0F < _CONTROL and length <= self._max_frame:
            self._pending.append((length, bool(header[0] & 0x80)))
        self._payload_left = length
        return start


def _header_length(partial: bytearray, data: bytes, start: int) -> int:
    """The length of the header that begins with ``partial`` and ``data[start:]``
    (2 until its second byte is known)."""
    if len(partial) >= 2:
        second = partial[1]
    elif len(partial) == 1:
        second = data[start]
    elif len(data) - start >= 2:
        second = data[start + 1]
    else:
        return 2
    size = second & 0x7F
    extended = 2 if size == 126 else 8 if size == 127 else 0
    return 2 + extended + (4 if second & 0x80 else 0)


def _payload_length(header: bytes) -> int:
    size = header[1] & 0x7F
    if size == 126:
        return int.from_bytes(header[2:4], "big")
    if size == 127:
        return int.from_bytes(header[2:10], "big")
    return size
