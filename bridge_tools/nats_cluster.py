"""A private NATS cluster with an MQTT listener on every node, for the tests.

``NatsCluster(nodes=2)`` starts ``nodes`` nats-servers on 127.0.0.1, every
port free (client, routes, MQTT, monitoring; below the ephemeral range, see
:func:`~bridge_tools.nats_node.listen_port`), each with its own JetStream
store in a temporary directory, routed into one cluster with JetStream
clustered (MQTT needs JetStream and a ``server_name``). ``start()`` returns
once every node is ready, polled, never slept for: its MQTT port accepts,
``/routez`` shows a route to every other node, ``/jsz`` a JetStream meta
leader in a group of all nodes, and an MQTT 3.1.1 CONNECT gets its CONNACK
(the first one on a node creates the MQTT streams: paid here, not by a test).
``cluster.mqtt`` lists each node's (host, port); ``nodes[i].kill()`` and
``nodes[i].start()`` + ``wait_ready()`` take a node away and back.

What nats-server 2.9.10 (Debian's) does as an MQTT cluster, measured here
(tests/tools/test_nats_cluster.py prints the timings with ``-s``):

- Startup: 2 nodes ready in 2.1-3.6 s, 3 nodes in 2.3-4 s. The meta leader
  takes 0.3 s; the rest is the first CONNACK, for which JetStream creates the
  five MQTT streams and a consumer per server, each a Raft group with its
  own election. ``mqtt_replicas=1`` (``stream_replicas: 1``) gets 0.2-0.7 s,
  but then the MQTT state lives on one node, and a QoS 1 publisher on a node
  that does not hold ``$MQTT_msgs`` gets ~60 messages/s when pipelining
  (300 in 4-6 s, half the runs, by where the stream landed). First CONNACKs
  on two nodes at once race to create the streams and one can stall ~4 s:
  node 1 is probed first, the others then in parallel.
- QoS 1 from node A to a subscriber on node B: 1-9 ms; 100 pipelined
  (paho keeps 20 in flight) in 0.13-1.2 s, slower from a node that does not
  lead ``$MQTT_msgs``.
- Retained: published on A, delivered to a new subscriber on B with the
  retain flag (every server keeps all retained messages, fed by its own
  consumer of ``$MQTT_rmsgs``): a QoS 0 subscription gets it within ms; a QoS
  1 subscription gets its SUBACK, and the message, only once its JetStream
  consumer exists: 0.15-1 s (once 5 s). An empty retained message on A
  clears it on B.
- Wills: a client on A whose socket closes without DISCONNECT has its will
  (QoS 1, retained) delivered on B in 2-3 ms (once 200 ms), and kept for
  later subscribers; a clean DISCONNECT sends none.
- Client ids are cluster-wide: connecting on B with an id connected on A
  closes the one on A, as MQTT says; two that keep reconnecting flap (the
  id is "jailed" ~1 s each time). Each bridge instance needs its own id.
- Order: one publisher's QoS 1 messages reach a QoS 1 subscriber on another
  node in order (500 pipelined, every run). Mixed QoS 0 and 1 from one
  publisher do not (QoS 0 goes straight over the route, QoS 1 through the
  stream: 0, 2, 1, 4, 6, 8, 3, ...). Nothing orders publishers on different
  nodes, as on any broker.
- Not supported: MQTT 5 (CONNACK "unsupported protocol version": the bridge
  needs ``mqtt.protocol: "3.1.1"``, so no response topics, correlation data,
  user properties or session expiry); QoS 2 (a QoS 2 SUBSCRIBE is granted
  QoS 1, a QoS 2 PUBLISH closes the connection: ``mqtt.qos`` 0 or 1); shared
  subscriptions (``$share/g/t`` is granted QoS 1 but is a plain topic that
  nothing published on ``t`` matches: every instance receives every
  command, and the instances must agree among themselves who acts).
- Losing a node. With 2 nodes JetStream loses its quorum: the survivor drops
  its MQTT clients and refuses new ones (no CONNACK) until the other is back
  (it rejoins in 5-6 s). With 3 nodes the survivors go on: QoS 0 and retained
  messages at once, but QoS 1 publishes and subscriptions stall 0-12 s while
  streams and consumers elect new leaders, and a QoS 1 SUBSCRIBE in that
  window may be refused (SUBACK 0x80 after 4 s). A node that comes back is
  ready again in 0.6-9 s. Use 3 nodes for failover tests.
"""

from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

from bridge.errors import BrokerError
from bridge_tools.nats_node import NatsNode, find_nats_server, mqtt_connack

__all__ = ["NatsCluster", "NatsNode", "find_nats_server", "mqtt_connack"]


class NatsCluster:
    """``nodes`` nats-servers routed into one cluster, JetStream clustered, MQTT on each.

    Every port is free and on 127.0.0.1 (a system NATS on 4222 is no bother),
    every node has its own store in ``directory`` (a temporary one by default).
    """

    def __init__(
        self,
        nodes: int = 2,
        directory: Path | None = None,
        *,
        name: str = "bridge-test",
        mqtt_replicas: int | None = None,
    ) -> None:
        binary = find_nats_server()
        if binary is None:
            raise BrokerError("nats-server is not installed: `sudo apt-get install -y nats-server`")
        if nodes < 2:
            raise ValueError("a cluster has two nodes or more")
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if directory is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="nats-cluster-")
            directory = Path(self._tmp.name)
        self.directory = directory
        self.name = name
        self.mqtt_replicas = mqtt_replicas
        self.nodes = [NatsNode(binary, directory / f"n{i}", f"n{i}") for i in range(nodes)]
        self._configure()
        self.startup_seconds: float | None = None

    @property
    def mqtt(self) -> list[tuple[str, int]]:
        """Each node's MQTT (host, port), in node order."""
        return [node.mqtt for node in self.nodes]

    def start(self, timeout: float = 30.0, attempts: int = 3) -> None:
        """Start every node; return once all of them are ready (see :meth:`wait_ready`).

        A node that finds one of its ports taken after all is started again,
        with the whole cluster on new ports (``attempts`` times in all).
        """
        started = time.monotonic()
        for attempt in range(1, attempts + 1):
            for node in self.nodes:
                node.start()
            try:
                self.wait_ready(timeout)
            except BrokerError:
                self.stop()
                if attempt == attempts or not any(node.port_taken() for node in self.nodes):
                    raise
                self._configure()
                continue
            except BaseException:
                self.stop()
                raise
            break
        self.startup_seconds = time.monotonic() - started

    def _configure(self) -> None:
        routes = []
        for node in self.nodes:
            node.assign_ports()
            routes.append(node.cluster_port)
        for node in self.nodes:
            node.log.unlink(missing_ok=True)
            node.write_config(self.name, routes, self.mqtt_replicas)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Poll until every node is ready, or raise BrokerError after ``timeout`` seconds.

        Ready: the MQTT port accepts; routes to every other node; a JetStream
        meta leader elected in a group of all nodes; an MQTT CONNECT accepted.
        """
        deadline = time.monotonic() + timeout
        running = [node for node in self.nodes if node.process is not None]
        # The first CONNACK creates the MQTT streams; two at once race to create them
        # and one may stall for seconds. The other nodes' first CONNACKs then only
        # add their own consumer of the retained messages: those go in parallel.
        self._wait_for(running[:1], deadline, timeout)
        self._wait_for(running[1:], deadline, timeout)

    def _wait_for(self, nodes: list[NatsNode], deadline: float, timeout: float) -> None:
        peers = len(self.nodes) - 1
        pending = list(nodes)
        while pending:
            with ThreadPoolExecutor(len(pending)) as pool:
                answers = pool.map(lambda node: node.not_ready(peers), pending)
                reasons = {node.name: reason for node, reason in zip(pending, answers, strict=True)}
            pending = [node for node in pending if reasons[node.name] is not None]
            if pending and time.monotonic() > deadline:
                waiting = "; ".join(f"{node.name}: {reasons[node.name]}" for node in pending)
                raise BrokerError(f"NATS cluster not ready in {timeout:.0f}s: {waiting}")
            if pending:
                time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> None:
        for node in self.nodes:
            node.stop(timeout)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._tmp is not None:
            self._tmp.cleanup()
