"""The packets of one write pass of paho, sent to the socket in one system call.

paho writes every packet with its own ``send()``: with the bridge handing it
up to 64 messages at a time, that was one system call per relayed event
(32,096 sends for 32,031 events, the largest single cost of the bridge's own
work; issue 29). :class:`WriteBuffer` stands between paho and the socket
(:mod:`bridge.mqtt.client` routes paho's ``_sock_send`` to :meth:`take`): it
gathers what paho writes in one pass of the event loop's writer callback and
:meth:`flush` sends it at the end of that pass, never later (no timer: a lone
message leaves in the same loop iteration as before).

What the kernel does not take waits here, in order, and goes first at the
next writable event; until then paho is told the socket would block, so the
rest stays queued in paho (which keeps its QoS 1 state and back pressure as
before) and nothing is reordered. At most :data:`GATHER_LIMIT` bytes are
gathered before they are sent mid-pass; a packet that large, and a
DISCONNECT (after which paho closes the socket at once), are sent directly,
once everything before them is out.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
from collections.abc import Callable
from typing import Final, Protocol

GATHER_LIMIT: Final = 64 * 1024  # bytes gathered before they are sent mid-pass
_DISCONNECT: Final = 0xE0  # MQTT fixed header, packet type 14
# The socket cannot take more now (TLS may also have to read first): try at the next
# writable event.
_WOULD_BLOCK: Final = (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError)


class Sendable(Protocol):
    def send(self, data: bytes | bytearray, /) -> int: ...


class WriteBuffer:
    """Bytes paho wrote and the socket has not taken yet, in order."""

    def __init__(self) -> None:
        self._data = bytearray()
        self._blocked = False  # the socket took only part: paho waits for a writable event
        self._direct = False  # a packet sent directly went out in part; paho sends the rest

    def __len__(self) -> int:
        return len(self._data)

    def take(self, sock: Sendable, data: bytes | bytearray) -> int:
        """paho's ``send()``: gather ``data`` (a whole packet) and return its length.

        Raises BlockingIOError (paho keeps the packet and stops the pass) while
        bytes wait for the socket; passes OSError on (paho drops the link).
        """
        size = len(data)
        if (
            not (self._blocked or self._direct)
            and len(self._data) + size < GATHER_LIMIT
            and data[0] & 0xF0 != _DISCONNECT
        ):
            self._data += data  # the common case: gathered
            return size
        if self._direct:  # the rest of a packet sent directly
            return self._send_directly(sock, data)
        if self._blocked or (self._data and not self.flush(sock)):
            raise BlockingIOError
        if size >= GATHER_LIMIT or data[0] & 0xF0 == _DISCONNECT:
            return self._send_directly(sock, data)
        self._data += data
        return size

    def write_pass(self, sock: Sendable, write: Callable[[], object]) -> bool:
        """One pass of the writer callback: what waits goes first; if all of it went,
        ``write()`` (paho's loop_write, which calls :meth:`take`) and one send.

        True if everything went; False if the rest waits for the next writable
        event. A socket that fails to send is shut down and its bytes kept (not
        written): its reader sees the end, and paho drops the link.
        """
        try:
            if self.flush(sock):
                write()
                return self.flush(sock)
        except OSError:
            self._blocked = True
            shut_down(sock)
        return False

    def flush(self, sock: Sendable) -> bool:
        """Send what is gathered; True if all of it went. Passes OSError on."""
        if not self._data:
            return True
        try:
            sent = sock.send(self._data)
        except _WOULD_BLOCK:
            sent = 0
        # A TLS socket takes all or nothing, so a retry sends the same bytes, as TLS needs.
        del self._data[:sent]
        self._blocked = bool(self._data)
        return not self._blocked

    def clear(self) -> None:
        """The socket is gone: what it did not take is dropped."""
        self._data.clear()
        self._blocked = self._direct = False

    def _send_directly(self, sock: Sendable, data: bytes | bytearray) -> int:
        try:
            sent = sock.send(data)
        except _WOULD_BLOCK:
            raise BlockingIOError from None
        self._direct = sent < len(data)
        return sent


def shut_down(sock: object) -> None:
    """End a socket whose send failed, so its reader sees the end and paho drops the link."""
    if isinstance(sock, socket.socket):
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)


def no_delay(sock: object) -> None:
    """Send each write at once (TCP_NODELAY): the buffer already makes one segment of a
    pass, and with Nagle's algorithm a lone message after a large write waited for the
    broker's delayed ACK (40 ms): large segments make the broker's kernel delay its ACKs."""
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
