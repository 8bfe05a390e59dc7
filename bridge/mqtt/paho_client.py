"""The paho client, as :class:`~bridge.mqtt.client.BrokerConnection` drives it: built here
from ``mqtt``, its bytes sent and read through the bridge's buffers.

Only :mod:`bridge.mqtt.client` uses what this module builds; nothing else
touches paho.
"""

from __future__ import annotations

import logging
import ssl
from typing import Final

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.config.sections import MqttConfig
from bridge.mqtt.read_buffer import ReadBuffer
from bridge.mqtt.write_buffer import WriteBuffer

PAHO_LOGGER: Final = logging.getLogger("bridge.paho")


class _PahoLevels(logging.Filter):
    """paho logs a broker going away at ERROR; for us that is WARNING (we reconnect)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


PAHO_LOGGER.addFilter(_PahoLevels())


class PahoClient(paho.Client):
    """paho, still the protocol's owner, its bytes sent through :attr:`write_buffer` and
    read through :attr:`read_buffer`: paho sends each packet with a system call of its own,
    the relay's largest cost per event, and reads each with three (modules of the buffers).
    ``_sock_send`` and ``_sock_recv`` are where paho sends and reads; the buffers keep
    their contract: bytes, or BlockingIOError, or OSError."""

    write_buffer: WriteBuffer
    read_buffer: ReadBuffer

    def _sock_recv(self, bufsize: int) -> bytes:
        return self.read_buffer.take(bufsize, super()._sock_recv)

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._sock is None:
            raise ConnectionError("self._sock is None")  # as paho's own
        return self.write_buffer.take(self._sock, buf)


def paho_client(
    config: MqttConfig,
    *,
    clean_start: bool,
    will: tuple[str, bytes] | None,
    password: str | None,
    tls: ssl.SSLContext | None,
) -> PahoClient:
    """A paho client for one connection to the broker, nothing connected yet."""
    v5 = config.protocol == "5"
    client = PahoClient(
        CallbackAPIVersion.VERSION2,
        client_id=config.client_id,
        protocol=paho.MQTTv5 if v5 else paho.MQTTv311,
        # 3.1.1 decides here; v5 at connect (clean_start).
        clean_session=None if v5 else clean_start,
        reconnect_on_failure=False,
        manual_ack=True,
    )
    client.write_buffer = WriteBuffer()
    client.read_buffer = ReadBuffer()
    client.enable_logger(PAHO_LOGGER)
    client.connect_timeout = config.connect_timeout
    client.max_inflight_messages_set(config.max_inflight)
    if config.username is not None:
        client.username_pw_set(config.username, password)
    if will is not None:
        client.will_set(will[0], will[1], qos=1, retain=True)
    if tls is not None:
        client.tls_set_context(tls)
    return client


def connect_packet_properties(
    config: MqttConfig, extra: dict[str, int] | None
) -> Properties | None:
    """The CONNECT packet's MQTT 5 properties (None under 3.1.1): the session expiry, and
    ``extra`` by property name."""
    if config.protocol != "5":
        return None
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.SessionExpiryInterval = config.session_expiry
    for name, value in (extra or {}).items():
        setattr(properties, name, value)
    return properties
