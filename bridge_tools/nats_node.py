"""One nats-server of a test cluster (bridge_tools/nats_cluster.py): config, process, readiness."""

from __future__ import annotations

import contextlib
import json
import random
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path
from typing import Any, Final

from bridge.errors import BrokerError
from bridge_tools.local_broker import free_port, is_listening, stop_process

SEARCH_PATH: Final = ("/usr/sbin/nats-server", "/usr/local/bin/nats-server", "/usr/bin/nats-server")
HOST: Final = "127.0.0.1"


def find_nats_server() -> str | None:
    """The nats-server binary, or None if it is not installed."""
    found = shutil.which("nats-server")
    if found:
        return found
    return next((path for path in SEARCH_PATH if Path(path).exists()), None)


class NatsNode:
    """One nats-server of the cluster: its ports, its directory, its process."""

    def __init__(self, binary: str, directory: Path, name: str) -> None:
        self.binary = binary
        self.name = name
        self.host = HOST
        self.client_port = self.cluster_port = self.mqtt_port = self.http_port = 0
        self.directory = directory
        self.store_dir = directory / "store"
        self.config = directory / "nats-server.conf"
        self.log = directory / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    def assign_ports(self) -> None:
        self.client_port, self.cluster_port, self.mqtt_port, self.http_port = (
            listen_port() for _ in range(4)
        )

    @property
    def mqtt(self) -> tuple[str, int]:
        """Where MQTT clients connect: (host, port)."""
        return self.host, self.mqtt_port

    def write_config(self, cluster: str, routes: list[int], mqtt_replicas: int | None) -> None:
        replicas = f"  stream_replicas: {mqtt_replicas}\n" if mqtt_replicas else ""
        route_urls = ", ".join(f'"nats-route://{HOST}:{port}"' for port in routes)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.config.write_text(
            f"server_name: {self.name}\n"
            f"listen: {HOST}:{self.client_port}\n"
            f"http: {HOST}:{self.http_port}\n"
            "jetstream {\n"
            f'  store_dir: "{self.store_dir}"\n'
            "  max_memory_store: 64MB\n"
            "  max_file_store: 256MB\n"
            "}\n"
            "cluster {\n"
            f"  name: {cluster}\n"
            f"  listen: {HOST}:{self.cluster_port}\n"
            f"  routes: [{route_urls}]\n"
            "}\n"
            f"mqtt {{\n  listen: {HOST}:{self.mqtt_port}\n{replicas}}}\n"
        )

    def start(self) -> None:
        """Start the process (readiness is the cluster's business: NatsCluster.wait_ready)."""
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(  # noqa: S603 (our binary, our config)
                [self.binary, "-c", str(self.config)], stdout=log, stderr=subprocess.STDOUT
            )

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is not None:
            stop_process(self.process, timeout)
            self.process = None

    def kill(self) -> None:
        """SIGKILL: the node vanishes without a word to its peers or clients."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """One monitoring endpoint (``jsz``, ``routez``, ``varz``...) as JSON."""
        url = f"http://{HOST}:{self.http_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=1.0) as response:
            document: dict[str, Any] = json.load(response)
            return document

    def not_ready(self, peers: int) -> str | None:
        """Why this node is not ready yet (None: it is)."""
        if self.process is None or self.process.poll() is not None:
            raise BrokerError(f"nats-server {self.name} exited; see {self.log}:\n{self.tail()}")
        if not is_listening(self.host, self.mqtt_port, timeout=0.2):
            return "MQTT port not listening"
        try:
            routes = self.monitor("routez").get("num_routes", 0)
            meta = self.monitor("jsz").get("meta_cluster") or {}
        except OSError as exc:
            return f"monitoring endpoint: {exc}"
        if routes < peers:
            return f"{routes} of {peers} routes"
        if not meta.get("leader") or meta.get("cluster_size") != peers + 1:
            return f"JetStream meta group not formed ({meta})"
        # One client id per node: the same id on two nodes at once is a takeover.
        return mqtt_connack(self.host, self.mqtt_port, client_id=f"nats-cluster-probe-{self.name}")

    def port_taken(self) -> bool:
        with contextlib.suppress(OSError):
            return "address already in use" in self.log.read_text(errors="replace")
        return False

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        return ""


def listen_port() -> int:
    """A free port below the ephemeral range.

    A port from :func:`free_port` is an ephemeral one: until the node binds
    it, the kernel may hand it to an outgoing connection (the first node's
    routes dial out while the second starts), and the node dies with
    "address already in use". Below the range only another listener can take it.
    """
    low = 32768
    with contextlib.suppress(OSError, ValueError):
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for _ in range(50):
        port = random.randrange(10000, max(low, 10001))  # noqa: S311 (not cryptography)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return port
    return free_port(HOST)


def mqtt_connack(
    host: str, port: int, timeout: float = 5.0, client_id: str = "nats-cluster-probe"
) -> str | None:
    """Connect with MQTT 3.1.1 and disconnect: None when the CONNACK accepts us, else why not.

    The first MQTT connection on a node creates the account's MQTT streams
    (sessions, QoS 1 messages, retained messages) in JetStream; we pay for it
    here, once, rather than in a test's first connection.
    """
    identifier = client_id.encode()
    variable = b"\x00\x04MQTT\x04\x02\x00\x3c"  # 3.1.1, clean session, keepalive 60 s
    payload = len(identifier).to_bytes(2, "big") + identifier
    body = variable + payload
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(bytes([0x10, len(body)]) + body)
            answer = _read_exactly(sock, 4)
            sock.sendall(b"\xe0\x00")  # DISCONNECT: no will, the session goes
    except OSError as exc:
        return f"MQTT connect: {exc}"
    if answer[0] != 0x20 or answer[3] != 0:
        return f"MQTT CONNACK {answer.hex()}"
    return None


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed before the CONNACK")
        data += chunk
    return data
