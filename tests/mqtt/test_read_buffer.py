"""paho's reads served from one read of the socket: acknowledgements of many QoS 1
messages are read in far fewer system calls than messages (paho alone: three each)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from bridge.config.sections import MqttConfig
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.outbox import Outbox
from bridge.mqtt.read_buffer import READ_SIZE, ReadBuffer
from bridge.protocol.messages import Publish
from tests.conftest import Broker
from tests.helpers import SECOND


class Chunks:
    """A socket's receive side: what it has, in chunks; BlockingIOError when empty."""

    def __init__(self, *chunks: bytes) -> None:
        self.chunks = list(chunks)
        self.asked: list[int] = []

    def receive(self, size: int) -> bytes:
        self.asked.append(size)
        if not self.chunks:
            raise BlockingIOError
        chunk = self.chunks.pop(0)
        assert len(chunk) <= size
        return chunk


def test_small_reads_are_served_from_one_read_per_pass_in_order() -> None:
    stream = bytes(range(256)) * 8
    source = Chunks(stream[:1000], stream[1000:])
    buffer = ReadBuffer()
    got = bytearray()
    for size in [1, 1, 2, 700, 500]:  # paho's pattern: type, length, the rest
        got += buffer.take(size, source.receive)  # at most what the read gave
    with pytest.raises(BlockingIOError):  # used up: the next readable event reads on
        buffer.take(1, source.receive)
    assert source.asked == [READ_SIZE]  # one system call for five of paho's reads
    buffer.next_pass()
    for size in [1, 10_000]:
        got += buffer.take(size, source.receive)
    assert bytes(got) == stream
    assert source.asked == [READ_SIZE, READ_SIZE]
    buffer.next_pass()
    with pytest.raises(BlockingIOError):  # the socket has nothing
        buffer.take(1, source.receive)
    assert len(buffer) == 0


def test_the_end_of_the_stream_and_large_reads_pass_through() -> None:
    big = b"x" * (2 * READ_SIZE)
    source = Chunks(big, b"")
    buffer = ReadBuffer()
    assert buffer.take(len(big), source.receive) == big  # not copied through the buffer
    assert source.asked == [len(big)]
    buffer.next_pass()
    assert buffer.take(1, source.receive) == b""  # the end: paho drops the link


class CountingSocket(socket.socket):
    recvs: list[int]

    def recv(self, size: int, flags: int = 0, /) -> bytes:
        data = super().recv(size, flags)
        self.recvs.append(len(data))
        return data


async def test_acknowledgements_are_read_in_few_system_calls(
    broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    recvs: list[int] = []
    create_connection = socket.create_connection

    def counting(*args: Any, **kwargs: Any) -> socket.socket:
        sock = CountingSocket(fileno=create_connection(*args, **kwargs).detach())
        sock.recvs = recvs
        return sock

    monkeypatch.setattr(socket, "create_connection", counting)
    config = MqttConfig(host=broker.host, port=broker.port, client_id="reads", protocol="3.1.1")
    connection = BrokerConnection(config, clean_start=True, will=None, on_message=lambda *_: None)
    await connection.open()
    outbox = Outbox(max_messages=100_000, max_bytes=1 << 26)
    task = asyncio.create_task(connection.publish_outbox(outbox))
    try:
        for n in range(2000):
            outbox.put(Publish("pipe/acks", b"%d" % n, 1))
        async with asyncio.timeout(20 * SECOND):
            await outbox.wait_empty()  # every PUBACK read and completed
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await connection.close()
    assert len(recvs) < 2000 / 4  # paho alone: 3 per PUBACK, 6,000
