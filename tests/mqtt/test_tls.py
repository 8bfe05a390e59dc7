"""Broker security: Mosquitto with a TLS listener, a CA made by the test, client
certificates and password auth; a good connection (MQTT 3.1.1 and 5) and rejected ones."""

from __future__ import annotations

import asyncio
import gc
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
import trustme

from bridge import cli
from bridge.daemon.service import Service
from bridge.errors import BrokerRefused
from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, RunningBridge, bridge_settings
from tests.helpers import SECOND
from tests.ops_helpers import daemon_config, finish, spawn_daemon

pytestmark = pytest.mark.integration

USER, PASSWORD = "bridge", "correct horse battery staple"


@dataclass(frozen=True)
class Pki:
    """Files of a test CA: the broker's certificate (for 127.0.0.1) and a client's."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here


def write_pki(directory: Path, *server_names: str) -> Pki:
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert(*(server_names or ("127.0.0.1",)))
    client = ca.issue_cert("bridge.client.test")
    paths = Pki(
        *(
            directory / name
            for name in ("ca.pem", "srv.pem", "srv.key", "cl.pem", "cl.key", "other.pem")
        )
    )
    ca.cert_pem.write_to_path(str(paths.ca))
    other.cert_pem.write_to_path(str(paths.other_ca))
    paths.server_cert.write_bytes(b"".join(pem.bytes() for pem in server.cert_chain_pems))
    server.private_key_pem.write_to_path(str(paths.server_key))
    paths.client_cert.write_bytes(b"".join(pem.bytes() for pem in client.cert_chain_pems))
    client.private_key_pem.write_to_path(str(paths.client_key))
    return paths


class SecureBroker(Broker):
    """Mosquitto whose one listener speaks only TLS, wants a client certificate and a password."""

    def __init__(self, directory: Path, pki: Pki) -> None:
        super().__init__(directory)
        passwd = shutil.which("mosquitto_passwd")
        if passwd is None:
            pytest.fail("mosquitto_passwd is missing (it comes with the mosquitto package)")
        passwords = directory / "passwords"
        subprocess.run([passwd, "-c", "-b", str(passwords), USER, PASSWORD], check=True)
        text = self.config.read_text().replace("allow_anonymous true", "allow_anonymous false")
        # These follow the one `listener` line, so they configure that listener.
        text += (
            f"password_file {passwords}\n"
            f"cafile {pki.ca}\ncertfile {pki.server_cert}\nkeyfile {pki.server_key}\n"
            "require_certificate true\ntls_version tlsv1.2\n"
        )
        self.config.write_text(text)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return write_pki(tmp_path)


@pytest.fixture
def secure_broker(tmp_path: Path, pki: Pki) -> Iterator[SecureBroker]:
    broker = SecureBroker(tmp_path, pki)
    broker.start()
    yield broker
    broker.stop()


def tls_section(pki: Pki, **extra: Any) -> dict[str, Any]:
    return {
        "enabled": True,
        "ca_file": str(pki.ca),
        "cert_file": str(pki.client_cert),
        "key_file": str(pki.client_key),
        **extra,
    }


def client_context(pki: Pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    return context


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_tls_with_client_certificate_and_password_carries_commands(
    tmp_path: Path, secure_broker: SecureBroker, pki: Pki, simulator: Simulator, protocol: str
) -> None:
    """Over TLS with a verified broker, a client certificate and a password, commands work."""
    password_file = tmp_path / "mqtt_password"
    password_file.write_text(PASSWORD + "\n")
    settings = bridge_settings(
        secure_broker,
        simulator,
        tmp_path,
        mqtt={
            "protocol": protocol,
            "username": USER,
            "password_file": str(password_file),
            "tls": tls_section(pki),
        },
    )
    bridge = RunningBridge(Service(settings))
    try:
        await bridge.ready()
        async with aiomqtt.Client(
            secure_broker.host,
            secure_broker.port,
            username=USER,
            password=PASSWORD,
            tls_context=client_context(pki),
            timeout=10 * SECOND,
        ) as client:
            await client.subscribe("ai/+/events", qos=1)
            await client.publish("ai/tls1/cmd", json.dumps({"action": "connect"}), qos=1)
            async with asyncio.timeout(10 * SECOND):
                message = await anext(aiter(client.messages))
            assert isinstance(message.payload, bytes)
            ack = json.loads(message.payload)
            assert (ack["action"], ack["connection_id"]) == ("connect", "tls1")
    finally:
        await bridge.stop()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_wrong_password_exits_77_at_once_with_a_clear_message(
    tmp_path: Path, secure_broker: SecureBroker, pki: Pki, protocol: str
) -> None:
    """A refused login stops the daemon with exit 77 (not restarted), and says why."""
    config = daemon_config(
        tmp_path,
        {
            "host": secure_broker.host,
            "port": secure_broker.port,
            "protocol": protocol,
            "username": USER,
            "tls": tls_section(pki),
        },
    )
    started = time.monotonic()
    process = spawn_daemon(config, MQTT_PASSWORD="wrong-password-canary")
    try:
        await asyncio.to_thread(process.wait, 20 * SECOND)
    finally:
        code, stderr = finish(process)
    assert code == cli.EXIT_REFUSED, stderr
    assert time.monotonic() - started < 10 * SECOND
    assert "the broker refused the connection: " in stderr
    assert "bad user name or password" in stderr or "not authorized" in stderr
    assert "retrying in" not in stderr  # no reconnect loop inside the process either
    assert "wrong-password-canary" not in stderr
    assert KEY not in stderr


# paho leaves the socket of a failed TLS handshake for the garbage collector; the
# tests that cause one collect it at once and accept the ResourceWarning it makes.
HANDSHAKE_LEAK = pytest.mark.filterwarnings(
    r"ignore:Exception ignored in. <ssl\.SSLSocket:pytest.PytestUnraisableExceptionWarning"
)


async def expect_refused(
    settings_kwargs: dict[str, Any], broker: Broker, tmp_path: Path, simulator: Simulator
) -> str:
    """Run a bridge that must fail its first connect; the error's text."""
    settings = bridge_settings(broker, simulator, tmp_path, **settings_kwargs)
    try:
        await asyncio.wait_for(Service(settings).run(asyncio.Event()), 15 * SECOND)
    except BrokerRefused as exc:
        message = str(exc)
    else:
        pytest.fail("the bridge connected")
    del settings
    gc.collect()  # now, while this test accepts the leak's warning
    return message


@HANDSHAKE_LEAK
async def test_broker_certificate_from_another_ca_is_a_clear_error(
    tmp_path: Path, secure_broker: SecureBroker, pki: Pki, simulator: Simulator
) -> None:
    """A broker certificate that does not chain to mqtt.tls.ca_file stops the first connect."""
    mqtt = {
        "username": USER,
        "password": PASSWORD,
        "tls": tls_section(pki, ca_file=str(pki.other_ca)),
    }
    message = await expect_refused({"mqtt": mqtt}, secure_broker, tmp_path, simulator)
    assert message.startswith("cannot connect to the broker: the broker's TLS certificate failed")
    assert "certificate" in message.rpartition("verification:")[2]  # OpenSSL's reason


@HANDSHAKE_LEAK
async def test_host_name_is_checked_unless_insecure_is_asked_for(
    tmp_path: Path, simulator: Simulator
) -> None:
    """A certificate for another name is refused; mqtt.tls.insecure accepts it (chain checked)."""
    pki = write_pki(tmp_path, "mqtt.example.test")
    broker = SecureBroker(tmp_path, pki)
    broker.start()
    try:
        mqtt: dict[str, Any] = {"username": USER, "password": PASSWORD, "tls": tls_section(pki)}
        message = await expect_refused({"mqtt": mqtt}, broker, tmp_path, simulator)
        assert "failed verification" in message
        assert "mismatch" in message

        mqtt["tls"] = tls_section(pki, insecure=True)
        bridge = RunningBridge(Service(bridge_settings(broker, simulator, tmp_path, mqtt=mqtt)))
        try:
            await bridge.ready()
        finally:
            await bridge.stop()
    finally:
        broker.stop()
