"""What paho reads, taken from the socket in one system call per readable event.

paho reads each packet with three ``recv()`` calls (its type, its length,
the rest): at QoS 1 that was three system calls per relayed event, for its
PUBACK. :class:`ReadBuffer` stands between paho and the socket
(:mod:`bridge.mqtt.client` routes paho's ``_sock_recv`` through :meth:`take`):
one read of up to :data:`READ_SIZE` bytes per pass of the reader callback
(:meth:`next_pass`), and paho's small reads served from it; once it is used
up, paho is told the socket would block, and what came meanwhile is read at
the next readable event (not with one more system call that finds nothing).
The reader callback comes back while bytes wait here (the selector does not
see them). The mirror of :mod:`bridge.mqtt.write_buffer`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

READ_SIZE: Final = 64 * 1024  # bytes asked of the socket at once


class ReadBuffer:
    """Bytes read from the socket that paho has not taken yet, in order."""

    def __init__(self) -> None:
        self._data = b""
        self._start = 0
        self._read = False  # this pass read the socket already

    def __len__(self) -> int:
        return len(self._data) - self._start

    def take(self, size: int, receive: Callable[[int], bytes]) -> bytes:
        """paho's ``recv(size)``: up to ``size`` bytes, from what was read before or else
        from one ``receive(READ_SIZE)`` (paho's own, which raises BlockingIOError when the
        socket has nothing and returns b"" at its end)."""
        data, start = self._data, self._start
        if start == len(data):
            if self._read:
                raise BlockingIOError
            self._read = True
            if size >= READ_SIZE:  # a large payload: straight to paho, not copied
                return receive(size)
            data, start = self._data, self._start = receive(READ_SIZE), 0
        end = start + size
        if end >= len(data):
            self._data, self._start = b"", 0
            return data[start:] if start else data
        self._start = end
        return data[start:end]

    def next_pass(self) -> None:
        """The reader callback runs again: the socket may be read once more."""
        self._read = False

    def clear(self) -> None:
        """The socket is gone: what it gave and paho did not take is dropped."""
        self._data, self._start = b"", 0
