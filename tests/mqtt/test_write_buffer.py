"""paho's packets leave in few socket writes, and a socket that takes only part of
them (a small send buffer, a broker that stops reading) loses and reorders nothing.

The broker here is a stand-in that answers CONNECT, then reads nothing until the
test lets it, and then records every packet in the order it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.config.sections import MqttConfig
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.outbox import Outbox
from bridge.mqtt.write_buffer import GATHER_LIMIT, WriteBuffer
from bridge.protocol.messages import Publish
from tests.helpers import SECOND, eventually

SMALL_BUFFER = 4096  # bytes: SO_SNDBUF of the bridge's socket, SO_RCVBUF of the broker's
PUBLISH, DISCONNECT = 0x30, 0xE0


class CountingSocket(socket.socket):
    """The bridge's socket to the broker, with a small send buffer; records each send()."""

    sends: list[tuple[int, int]]  # (bytes offered, bytes taken; -1: would block)

    def send(self, data: Any, flags: int = 0, /) -> int:
        try:
            taken = super().send(data, flags)
        except BlockingIOError:
            self.sends.append((len(data), -1))
            raise
        self.sends.append((len(data), taken))
        return taken


@dataclass
class StallingBroker:
    """Answers CONNECT, then reads nothing until :attr:`go` is set."""

    go: asyncio.Event = field(default_factory=asyncio.Event)
    packets: list[tuple[int, bytes]] = field(default_factory=list)  # (type, body) after CONNECT
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    client: socket.socket | None = None  # the bridge's end

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await read_packet(reader)  # CONNECT
            writer.write(b"\x20\x02\x00\x00")  # CONNACK, 3.1.1, accepted
            await writer.drain()
            await self.go.wait()
            while True:
                kind, body = await read_packet(reader)
                self.packets.append((kind, body))
                if kind == DISCONNECT:
                    break
        self.ended.set()
        writer.close()

    def payloads(self) -> list[bytes]:
        """The payloads of the QoS 0 PUBLISH packets (3.1.1: topic length, topic, payload)."""
        return [
            body[2 + int.from_bytes(body[:2], "big") :]
            for kind, body in self.packets
            if kind == PUBLISH
        ]


async def read_packet(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    header = (await reader.readexactly(1))[0]
    length, shift = 0, 0
    while True:
        byte = (await reader.readexactly(1))[0]
        length |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            break
    return header & 0xF0, await reader.readexactly(length)


@contextlib.asynccontextmanager
async def stalling_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[StallingBroker, BrokerConnection, list[tuple[int, int]]]]:
    """A connection to a :class:`StallingBroker`, both sides' buffers small; its sends."""
    broker = StallingBroker()
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, SMALL_BUFFER)
    listener.bind(("127.0.0.1", 0))
    server = await asyncio.start_server(broker.serve, sock=listener, limit=SMALL_BUFFER)
    sends: list[tuple[int, int]] = []
    create_connection = socket.create_connection

    def small_buffered(*args: Any, **kwargs: Any) -> socket.socket:
        plain = create_connection(*args, **kwargs)
        sock = CountingSocket(fileno=plain.detach())
        sock.sends = sends
        broker.client = sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        return sock

    monkeypatch.setattr(socket, "create_connection", small_buffered)
    config = MqttConfig(
        host="127.0.0.1", port=listener.getsockname()[1], client_id="writes", protocol="3.1.1"
    )
    connection = BrokerConnection(config, clean_start=True, will=None, on_message=lambda *_: None)
    try:
        await connection.open()
        assert broker.client is not None
        yield broker, connection, sends
    finally:
        await connection.close(grace=0)
        server.close()


def relayed(count: int) -> list[Publish]:
    return [Publish("ai/c1/events", b"%06d:" % n + b"x" * 200, 0) for n in range(count)]


async def test_queued_publishes_leave_in_few_writes_and_a_full_socket_loses_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """2,000 QoS 0 publishes: the socket fills (partial writes), the broker reads again,
    and every message arrives once, in order, from far fewer writes than messages."""
    publishes = relayed(2000)
    outbox = Outbox(max_messages=100_000, max_bytes=1 << 26)
    async with stalling_broker(monkeypatch) as (broker, connection, sends):
        assert broker.client is not None  # each write leaves at once, not after an ACK (Nagle)
        assert broker.client.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        task = asyncio.create_task(connection.publish_outbox(outbox))
        for publish in publishes:
            assert outbox.put(publish)
        # The broker reads nothing: the socket fills and the window with it.
        await eventually(lambda: any(taken < offered for offered, taken in sends))
        await asyncio.sleep(0.2 * SECOND)  # a negative check: paho takes no more meanwhile
        assert len(outbox) > 1000  # the rest waits in the outbox, not in memory behind paho
        broker.go.set()
        async with asyncio.timeout(10 * SECOND):
            await outbox.wait_empty()
        await eventually(lambda: len(broker.payloads()) == len(publishes))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert broker.payloads() == [p.payload for p in publishes]
    assert any(0 < taken < offered for offered, taken in sends)  # a partial write
    assert len(sends) < len(publishes) / 10


async def test_a_disconnect_goes_out_after_everything_written_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closing while the socket is full: what paho holds, then `say`, then DISCONNECT."""
    outbox = Outbox(max_messages=100_000, max_bytes=1 << 26)
    async with stalling_broker(monkeypatch) as (broker, connection, sends):
        task = asyncio.create_task(connection.publish_outbox(outbox))
        for publish in relayed(500):
            outbox.put(publish)
        await eventually(lambda: any(taken < offered for offered, taken in sends))
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        closing = asyncio.create_task(connection.close(say=("ai/bridge/state", b"offline")))
        await asyncio.sleep(0.1 * SECOND)  # the close is under way before the broker reads
        broker.go.set()
        await closing
        async with asyncio.timeout(10 * SECOND):
            await broker.ended.wait()
    payloads = broker.payloads()
    assert payloads[-1] == b"offline"
    assert payloads[:-1] == [p.payload for p in relayed(len(payloads) - 1)]
    assert len(payloads) > 64  # more than the window: some had waited in the socket
    assert broker.packets[-1][0] == DISCONNECT


def test_gathered_packets_leave_in_order_however_much_the_socket_takes() -> None:
    """The buffer alone over a socket pair with a small send buffer: packets gathered,
    sent in part, refused while a remainder waits; the peer reads them all, in order."""
    plain, right = socket.socketpair()
    left = CountingSocket(fileno=plain.detach())
    left.sends = []
    with left, right:
        left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SMALL_BUFFER)
        left.setblocking(False)
        right.setblocking(False)
        buffer = WriteBuffer()
        packets = [b"\x30" + bytes([n % 251]) * 300 for n in range(400)]
        pending = list(packets)
        received = bytearray()
        while pending or len(buffer):
            if buffer.flush(left):  # a writer pass: what waits goes first, then new packets
                with contextlib.suppress(BlockingIOError):
                    while pending:
                        assert buffer.take(left, pending[0]) == len(pending[0])
                        pending.pop(0)
                buffer.flush(left)
            with contextlib.suppress(BlockingIOError):
                while chunk := right.recv(1 << 20):
                    received += chunk
    assert bytes(received) == b"".join(packets)
    assert any(0 < taken < offered for offered, taken in left.sends)  # partial writes
    assert len(left.sends) < len(packets) / 4
    assert GATHER_LIMIT > SMALL_BUFFER  # the socket, not the limit, cut the writes


class BrokenSocket(socket.socket):
    def send(self, data: Any, flags: int = 0, /) -> int:
        raise ConnectionResetError


def test_a_socket_that_fails_to_send_is_shut_down_and_nothing_counts_as_sent() -> None:
    """A send that fails (the broker reset the link) ends the socket for its reader,
    which makes paho drop the link; the bytes stay, so nothing is taken for written."""
    plain, right = socket.socketpair()
    with BrokenSocket(fileno=plain.detach()) as left, right:
        left.setblocking(False)
        buffer = WriteBuffer()
        assert not buffer.write_pass(left, lambda: buffer.take(left, b"\x30\x00"))
        assert len(buffer) == 2
        with pytest.raises(BlockingIOError):
            buffer.take(left, b"\x30\x00")
        assert left.recv(1) == b""  # shut down: the reader sees the end at once
