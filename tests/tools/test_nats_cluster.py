"""A real NATS cluster (bridge_tools/nats_cluster.py) as an MQTT 3.1.1 broker across nodes.

Each test prints how long its hop took (``pytest -s`` or ``-rP`` to see them).
"""

from __future__ import annotations

import queue
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from bridge_tools.nats_cluster import NatsCluster
from tests.helpers import SECOND, eventually_sync, require_nats_server

pytestmark = pytest.mark.integration


def timing(what: str, seconds: float) -> None:
    print(f"{what}: {seconds * 1000:.1f} ms")  # noqa: T201


@pytest.fixture(scope="module")
def cluster() -> Iterator[NatsCluster]:
    """Two nodes for the module (they start in seconds: JetStream elects a leader per stream)."""
    require_nats_server()
    with NatsCluster(2) as nats:
        assert nats.startup_seconds is not None
        timing("2-node cluster ready", nats.startup_seconds)
        yield nats


def unique(prefix: str) -> str:
    return f"{prefix}/{uuid.uuid4().hex[:8]}"


class Mqtt311:
    """A paho MQTT 3.1.1 client in its own thread: what it receives lands in ``received``."""

    def __init__(self, address: tuple[str, int], *, client_id: str | None = None) -> None:
        self.address = address
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"t-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv311,
        )
        self.received: queue.Queue[tuple[float, mqtt.MQTTMessage]] = queue.Queue()
        self.subacks: queue.Queue[list[int]] = queue.Queue()
        self.connacks: queue.Queue[str] = queue.Queue()
        self.client.on_message = lambda _c, _u, message: self.received.put(
            (time.monotonic(), message)
        )
        self.client.on_subscribe = lambda _c, _u, _mid, codes, _p: self.subacks.put(
            [code.value for code in codes]
        )
        self.client.on_connect = lambda _c, _u, _f, code, _p: self.connacks.put(str(code))
        self.client.reconnect_delay_set(1, 1)

    def connect(self, will: tuple[str, bytes] | None = None, wait: float = 10) -> Mqtt311:
        if will is not None:
            self.client.will_set(will[0], will[1], qos=1, retain=True)
        self.client.connect(*self.address, keepalive=10)
        self.client.loop_start()
        assert self.connacks.get(timeout=wait * SECOND) == "Success"
        return self

    def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        self.client.subscribe(topic, qos=qos)
        return self.subacks.get(timeout=10 * SECOND)

    def publish(
        self, topic: str, payload: bytes, *, retain: bool = False, wait: float = 10
    ) -> float:
        """Publish at QoS 1 and wait for the PUBACK; return when it was sent."""
        sent = time.monotonic()
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        info.wait_for_publish(wait * SECOND)
        assert info.is_published(), f"no PUBACK within {wait}s"
        return sent

    def next(self, wait: float = 10) -> tuple[float, mqtt.MQTTMessage]:
        return self.received.get(timeout=wait * SECOND)

    def nothing(self, wait: float = 0.5) -> list[Any]:
        """What arrives within ``wait`` seconds (a negative check: it should be nothing)."""
        time.sleep(wait * SECOND)
        return [self.received.get_nowait()[1].payload for _ in range(self.received.qsize())]

    def kill(self) -> float:
        """Vanish: close the socket without a DISCONNECT (the broker publishes our will)."""
        self.client.loop_stop()
        sock = self.client.socket()
        assert isinstance(sock, socket.socket)
        closed = time.monotonic()
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        return closed

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def clients(cluster: NatsCluster) -> Iterator[list[Mqtt311]]:
    """Connected clients, one per node, index = node; each test may add more to the list."""
    made = [Mqtt311(address).connect() for address in cluster.mqtt]
    yield made
    for client in made:
        client.close()


def test_cluster_is_formed(cluster: NatsCluster) -> None:
    """Routes to every other node, one JetStream meta group of all nodes, MQTT on each."""
    for node in cluster.nodes:
        assert node.monitor("routez")["num_routes"] == len(cluster.nodes) - 1
        meta = node.monitor("jsz")["meta_cluster"]
        assert meta["leader"]
        assert meta["cluster_size"] == len(cluster.nodes)
    assert len({port for _, port in cluster.mqtt}) == len(cluster.nodes)
    assert cluster.startup_seconds is not None
    assert cluster.startup_seconds < 20 * SECOND


def test_qos1_crosses_nodes(clients: list[Mqtt311]) -> None:
    """Published on node A at QoS 1, delivered at QoS 1 to a subscriber on node B, in order."""
    a, b = clients
    topic = unique("cross")
    assert b.subscribe(topic, qos=1) == [1]
    sent = a.publish(topic, b"first")
    arrived, message = b.next()
    timing("QoS 1 node A -> node B", arrived - sent)
    assert (message.payload, message.qos, message.retain) == (b"first", 1, False)
    for index in range(100):  # pipelined: paho keeps 20 in flight
        a.client.publish(topic, str(index).encode(), qos=1)
    started = time.monotonic()
    payloads = [b.next()[1].payload for _ in range(100)]
    timing("100 pipelined QoS 1, A -> B", time.monotonic() - started)
    assert payloads == [str(index).encode() for index in range(100)]


def test_retained_reaches_a_new_subscriber_on_another_node(clients: list[Mqtt311]) -> None:
    """A retained message published on A is delivered (retain flag set) to a new subscriber on B."""
    a, b = clients
    topic = unique("retained")
    sent = a.publish(topic, b"online", retain=True)
    assert b.subscribe(topic, qos=1) == [1]
    arrived, message = b.next()
    timing("retained on A -> new QoS 1 subscriber on B (SUBACK included)", arrived - sent)
    assert (message.payload, message.retain) == (b"online", True)
    a.publish(topic, b"", retain=True)  # cleared on A: a later subscriber on B gets none
    late = Mqtt311(b.address).connect()
    clients.append(late)
    late.subscribe(topic, qos=0)
    assert late.nothing() == []


def test_will_of_a_killed_client_reaches_the_other_node(
    cluster: NatsCluster, clients: list[Mqtt311]
) -> None:
    """A client on A vanishes: its will (QoS 1, retained) reaches B's subscribers, and stays."""
    _, b = clients
    topic = unique("will")
    b.subscribe(topic, qos=1)
    doomed = Mqtt311(cluster.mqtt[0]).connect(will=(topic, b"offline"))
    gone = doomed.kill()
    arrived, message = b.next()
    timing("will: socket closed on A -> subscriber on B", arrived - gone)
    assert message.payload == b"offline"
    late = Mqtt311(b.address).connect()
    clients.append(late)
    late.subscribe(topic, qos=1)
    _, retained = late.next()
    assert (retained.payload, retained.retain) == (b"offline", True)


def test_a_clean_disconnect_sends_no_will(cluster: NatsCluster, clients: list[Mqtt311]) -> None:
    _, b = clients
    topic = unique("will")
    b.subscribe(topic, qos=1)
    Mqtt311(cluster.mqtt[0]).connect(will=(topic, b"offline")).close()
    assert b.nothing() == []


def test_shared_subscriptions_are_not_supported(clients: list[Mqtt311]) -> None:
    """``$share/<group>/<filter>`` is granted but is a plain topic: nothing published matches it.

    nats-server 2.9 has no MQTT shared subscriptions: N bridges cannot split
    ``P/+/cmd`` among themselves with ``$share``; each subscriber gets everything.
    """
    a, b = clients
    topic = unique("shared")
    assert a.subscribe(f"$share/bridges/{topic}", qos=1) == [1]
    assert b.subscribe(f"$share/bridges/{topic}", qos=1) == [1]
    a.publish(topic, b"for one of the group")
    assert a.nothing() == []
    assert b.nothing(0) == []


def test_the_same_client_id_on_another_node_takes_the_session_over(
    cluster: NatsCluster,
) -> None:
    """As MQTT says, the newer connection wins, cluster-wide: two instances need two ids."""
    client_id = f"dup-{uuid.uuid4().hex[:6]}"
    first = Mqtt311(cluster.mqtt[0], client_id=client_id).connect()
    first.client.reconnect_delay_set(30, 30)  # no fight back within the test
    second = Mqtt311(cluster.mqtt[1], client_id=client_id).connect()
    try:
        eventually_sync(lambda: not first.client.is_connected(), 5, "the first is taken over")
        assert not first.client.is_connected()
        assert second.client.is_connected()
    finally:
        second.close()
        first.close()


def test_mqtt5_is_refused(cluster: NatsCluster) -> None:
    """The bridge must run with ``mqtt.protocol: "3.1.1"`` on NATS."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    codes: queue.Queue[str] = queue.Queue()
    client.on_connect = lambda _c, _u, _f, code, _p: codes.put(str(code))
    client.connect(*cluster.mqtt[0])
    client.loop_start()
    try:
        assert codes.get(timeout=10 * SECOND) == "Unsupported protocol version"
    finally:
        client.loop_stop()


def test_three_nodes_survive_the_loss_of_one() -> None:
    """With 3 nodes JetStream keeps its quorum when one dies: MQTT goes on across the others.

    QoS 0 and retained messages at once; QoS 1 publishes and subscriptions may
    stall for seconds while JetStream elects new stream leaders. (With 2 nodes
    the survivor refuses new MQTT connections and drops its clients until the
    other is back; see the module's docstring.)
    """
    require_nats_server()
    with NatsCluster(3) as nats:
        assert nats.startup_seconds is not None
        timing("3-node cluster ready", nats.startup_seconds)
        a, b, late = (Mqtt311(address).connect() for address in nats.mqtt)
        late.close()
        try:
            topic = unique("failover")
            b.subscribe(topic, qos=1)
            a.publish(topic + "/state", b"online", retain=True)
            nats.nodes[2].kill()
            # A session needs JetStream, which elects new stream leaders first: on a
            # loaded machine that took over 10 s once (the connect's ack came late).
            late = Mqtt311(nats.mqtt[1]).connect(wait=30)
            late.subscribe(topic + "/state", qos=0)
            assert late.next()[1].payload == b"online"
            sent = a.publish(topic, b"after the loss", wait=30)
            arrived, message = b.next(30)
            timing("QoS 1 A -> B just after node C died", arrived - sent)
            assert message.payload == b"after the loss"
            nats.nodes[2].start()
            started = time.monotonic()
            nats.wait_ready()
            timing("node C back in the cluster", time.monotonic() - started)
        finally:
            for client in (a, b, late):
                client.close()
