"""What the upstream sockets may hold at once: server events read and not yet handed on.

Pure (no I/O): the sockets' bytes come in through :meth:`FrameMeter.received`,
and reading is paused and resumed through two callbacks.

A server event is held from its first byte off a socket until the reader
hands it to the event buffer: while its frame is read (the WebSocket library
gathers it whole), while it waits in the library's queue, and while its
reader waits for room in the event buffer. :class:`ReadBudget` bounds that
across every connection: the data frames whose headers a read completes
reserve their payload sizes from one pool (``openai.max_bytes_in_flight``),
before their payloads are read on; a socket whose frames do not fit pauses
until earlier events have been handed on, and each handed-on event gives back
its size. Sockets are granted in the order they asked (a large frame is not
passed over by smaller ones), and a frame larger than the whole pool is read
alone. What one read brings past a frame that waits is not counted: at most
one read (256 KiB) per connection. (With permessage-deflate, frames count as
sent, compressed.)
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
        self._waiting: deque[FrameMeter] = deque()  # in the order they asked

    def ask(self, meter: FrameMeter, size: int) -> bool:
        """Reserve ``size`` for ``meter`` now (True), or queue it until there is room."""
        if not self._waiting and (self.reserved + size <= self.limit or not self.reserved):
            self.reserved += size
            return True
        self._waiting.append(meter)
        return False

    def release(self, size: int) -> None:
        self.reserved -= size
        waiting = self._waiting
        while waiting:
            size = waiting[0].wanted
            if self.reserved + size > self.limit and self.reserved:
                return
            self.reserved += size
            waiting.popleft().granted()

    def forget(self, meter: FrameMeter) -> None:
        """A socket is gone: it waits no more (its reservations are released by the meter)."""
        if meter in self._waiting:
            self._waiting.remove(meter)


class FrameMeter:
    """The frames of one upstream socket's byte stream, and what they reserved.

    It finds the frame headers in the bytes the socket reads (after the HTTP
    handshake response), asks the budget for the payload sizes of the data
    frames each read announces, pauses reading while they wait, and gives
    back each event's size when the reader has handed it on
    (:meth:`delivered`).
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
        self._partial = b""  # a frame header (or the handshake's end) split across reads
        self._payload_left = 0  # bytes of the current frame's payload still to come
        self.held = 0  # reserved for this socket's frames and not yet given back
        self.wanted = 0  # what the frames of the read that waits ask for (0: none waits)

    def received(self, data: bytes) -> None:
        """The socket read ``data``: reserve the data frames whose headers it completes."""
        start = 0
        if self._in_handshake:
            start = self._handshake_end(data)
            if start < 0:
                return
        wanted = self._scan(data, start)
        if not wanted:
            return
        if self.wanted:  # an earlier read waits: this one waits with it
            self.wanted += wanted
        elif self._budget.ask(self, wanted):
            self.held += wanted
        else:
            self.wanted = wanted
            self._pause()

    def delivered(self, size: int) -> None:
        """The reader handed on an event of ``size`` bytes: its frames leave the budget."""
        size = min(size, self.held)
        if size:
            self.held -= size
            self._budget.release(size)

    def granted(self) -> None:
        """The budget granted what waited."""
        self.held += self.wanted
        self.wanted = 0
        self._resume()

    def close(self) -> None:
        """The socket is gone: give back everything it held, and wait no more."""
        self._budget.forget(self)
        self.wanted = 0
        held, self.held = self.held, 0
        if held:
            self._budget.release(held)

    def _scan(self, data: bytes, start: int) -> int:
        """Read the headers from ``start`` on, skipping payloads: the data frames' sizes."""
        if self._partial:  # a header split across reads: complete it first
            data, start = self._partial + data[start:], 0
            self._partial = b""
        end = len(data)
        start += self._payload_left
        wanted = 0
        max_frame = self._max_frame
        while start < end:
            if end - start < 2:
                break
            second = data[start + 1]
            length = second & 0x7F
            size = 2 if length < 126 else 4 if length == 126 else 10
            header = size + 4 if second & 0x80 else size
            if end - start < header:
                break
            if length >= 126:
                length = int.from_bytes(data[start + 2 : start + size], "big")
            if data[start] & 0x0F < _CONTROL and length <= max_frame:
                wanted += length
            start += header + length
        if start > end:  # the payload goes on in the next reads
            self._payload_left = start - end
        else:
            self._payload_left = 0
            self._partial = data[start:]
        return wanted

    def _handshake_end(self, data: bytes) -> int:
        """Where the frames start in ``data``, past the HTTP response; -1: not yet."""
        seen = self._partial + data
        at = seen.find(_END_OF_HEADERS)
        if at < 0:
            self._partial = seen[-3:]
            return -1
        self._in_handshake = False
        start = at + len(_END_OF_HEADERS) - len(self._partial)
        self._partial = b""
        return start
