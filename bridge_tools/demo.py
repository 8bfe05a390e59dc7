"""``openai-mqtt-bridge demo``: the seed flow, end to end, on this machine.

It brings up what the flow needs and runs it like a person clicking the seed
flow's three inject nodes, printing what arrives on the events topic as it
streams in:

- a broker: the configured one if it is reachable and no other bridge is
  online on it, else a private Mosquitto on a free port (see local_broker);
- an upstream: the simulator on a free port (no key, no network), or the
  real API with ``--upstream openai`` and ``OPENAI_API_KEY``;
- the bridge itself, in this process;
- a client that publishes ``connect``, ``send`` and ``close`` on
  ``ai/demo-connection-1/cmd`` and reads ``ai/demo-connection-1/events``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TextIO, TypeVar

from bridge.config.sections import MqttConfig
from bridge.config.settings import Settings, parse_config, resolve
from bridge.daemon.service import Service
from bridge.errors import BridgeError, BrokerError
from bridge.mqtt.client import BrokerConnection
from bridge.mqtt.outbox import Outbox
from bridge.protocol.messages import Publish
from bridge_tools.local_broker import LocalMosquitto, is_listening
from bridge_tools.simulator import Simulator, SimulatorOptions

CONNECTION_ID: Final = "demo-connection-1"
MODEL: Final = "gpt-5.4-nano-2026-03-17"
QUESTION: Final = "Say hello from Responses websocket mode in one sentence."
STEP_TIMEOUT: Final = 60.0  # seconds for any one step; the real API can be slow

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DemoOptions:
    broker_host: str = "127.0.0.1"
    broker_port: int = 1883
    upstream: str = "simulator"  # or "openai"
    raw: bool = False
    question: str = QUESTION
    model: str = MODEL
    tokens_per_second: float = 30.0


class DemoFailed(BridgeError):
    """The flow did not complete; the message says where it stopped."""


FOLLOW_UP = "What about Venus?"
# Server events that end a request.
ENDINGS = frozenset({"response.completed", "response.failed", "response.incomplete", "error"})


async def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> None:
    """Run the seed flow end to end; raise DemoFailed (or BridgeError) if it does not finish."""
    show = Printer(out, raw=options.raw)
    async with contextlib.AsyncExitStack() as stack:
        host, port, where = await _pick_broker(options, stack)
        show.setup("broker", f"{host}:{port} ({where})")
        base_url, api_key = await _pick_upstream(options, stack, show)
        prefix = "ai"
        settings = _settings(host, port, prefix, base_url, api_key)
        service = Service(settings)
        stop = asyncio.Event()
        bridge = asyncio.create_task(service.run(stop), name="demo.bridge")
        try:
            await _wait(service.ready.wait(), "the bridge did not connect to the broker", bridge)
            show.setup(
                "bridge", f"topics {prefix}/{CONNECTION_ID}/cmd → {prefix}/{CONNECTION_ID}/events"
            )
            await _run_flow(host, port, prefix, options, show)
        finally:
            stop.set()
            with contextlib.suppress(BridgeError):
                await asyncio.wait_for(bridge, 30)
    show.line("")
    show.line(
        "The seed flow ran end to end over MQTT: connect, send, stream, close;"
        " then two asks, the second continuing the first."
    )


async def _pick_broker(
    options: DemoOptions, stack: contextlib.AsyncExitStack
) -> tuple[str, int, str]:
    host, port = options.broker_host, options.broker_port
    if await asyncio.to_thread(is_listening, host, port):
        if not await _bridge_online(host, port):
            return host, port, "the configured broker"
        reason = "another bridge is online on the configured broker"
    else:
        reason = f"nothing answers on {host}:{port}"
    broker = stack.enter_context(LocalMosquitto())
    return broker.host, broker.port, f"a private Mosquitto: {reason}"


Inbox = asyncio.Queue[tuple[str, bytes]]


@contextlib.asynccontextmanager
async def _mqtt_client(
    host: str, port: int, *topics: str
) -> AsyncIterator[tuple[Callable[[str, bytes], None], Inbox]]:
    """A small MQTT client on the bridge's own connection class: publish (QoS 1) and an inbox."""
    inbox: Inbox = asyncio.Queue()
    connection = BrokerConnection(
        MqttConfig(
            host=host, port=port, client_id=f"demo-{uuid.uuid4().hex[:8]}", connect_timeout=3
        ),
        clean_start=True,
        will=None,
        on_message=lambda topic, payload, *_: inbox.put_nowait((topic, payload)),
    )
    await connection.open()
    outbox = Outbox(max_messages=1000, max_bytes=1 << 24)
    sender = asyncio.create_task(connection.publish_outbox(outbox))
    try:
        for topic in topics:
            await connection.subscribe(topic)

        def send(topic: str, payload: bytes) -> None:
            outbox.put(Publish(topic, payload, 1))

        yield send, inbox
    finally:
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        await connection.close()


async def _bridge_online(host: str, port: int) -> bool:
    """Whether a bridge already announces itself on ai/bridge/state (it would answer too)."""
    try:
        async with _mqtt_client(host, port, "ai/bridge/state") as (_, inbox):
            async with asyncio.timeout(0.5):
                _, payload = await inbox.get()
                return payload == b"online"
    except (TimeoutError, BrokerError, OSError):
        pass
    return False


async def _pick_upstream(
    options: DemoOptions, stack: contextlib.AsyncExitStack, show: Printer
) -> tuple[str, str | None]:
    if options.upstream == "openai":
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            raise DemoFailed("--upstream openai needs OPENAI_API_KEY in the environment")
        show.setup("upstream", "OpenAI, wss://api.openai.com/v1/responses")
        return "https://api.openai.com/v1", key
    simulator = await stack.enter_async_context(
        Simulator(
            SimulatorOptions(
                tokens_per_second=options.tokens_per_second,
                first_token_delay=0.4,
            )
        )
    )
    show.setup("upstream", f"the simulator at {simulator.url} (offline, no key)")
    return simulator.base_url, None


def _settings(host: str, port: int, prefix: str, base_url: str, api_key: str | None) -> Settings:
    config = parse_config(
        {
            # The demo's token usage is its own: it never counts against real budgets.
            "state_dir": tempfile.mkdtemp(prefix="openai-mqtt-bridge-demo-"),
            "mqtt": {
                "host": host,
                "port": port,
                "topic_prefix": prefix,
                "client_id": f"openai-mqtt-bridge-demo-{uuid.uuid4().hex[:6]}",
            },
            "openai": {"base_url": base_url},
            "shutdown": {"grace_seconds": 5},
        }
    )
    return resolve(config, {"OPENAI_API_KEY": api_key} if api_key else {})


async def _run_flow(host: str, port: int, prefix: str, options: DemoOptions, show: Printer) -> None:
    commands = f"{prefix}/{CONNECTION_ID}/cmd"
    async with _mqtt_client(host, port, f"{prefix}/{CONNECTION_ID}/events") as (send, inbox):

        async def publish(command: dict[str, Any]) -> None:
            show.sent(command)
            send(commands, json.dumps(command).encode())

        async def receive() -> dict[str, Any]:
            _, payload = await _wait(inbox.get(), "no answer from the bridge")
            document: dict[str, Any] = json.loads(payload)
            show.received(document, payload)
            if document.get("object") == "response.websocket.error":
                raise DemoFailed(f"the bridge answered an error: {document['error']}")
            return document

        await publish({"action": "connect", "connection_id": CONNECTION_ID})
        while (await receive()).get("action") != "connect":
            pass
        event = {"type": "response.create", "model": options.model, "input": options.question}
        await publish({"action": "send", "connection_id": CONNECTION_ID, "event": event})
        while True:
            document = await receive()
            if document.get("type") in ENDINGS:
                break
            if document.get("action") == "disconnected":
                raise DemoFailed(f"the upstream went away: {document['reason']}")
        await publish(
            {"action": "close", "connection_id": CONNECTION_ID, "reason": "Example flow complete"}
        )
        while (await receive()).get("action") not in {"close", "disconnected"}:
            pass
        # The same with `ask`: one command per question; the bridge opens the connection
        # and keeps the conversation (the follow-up continues it), nothing to track.
        show.line("")
        show.line("The same with `ask`, one command per question:")
        for question in (options.question, FOLLOW_UP):
            await publish({"action": "ask", "connection_id": CONNECTION_ID, "input": question})
            while (await receive()).get("type") not in ENDINGS:
                pass
        await publish({"action": "close", "connection_id": CONNECTION_ID})
        while (await receive()).get("action") not in {"close", "disconnected"}:
            pass


async def _wait(awaitable: Awaitable[T], what: str, watch: asyncio.Task[Any] | None = None) -> T:
    """Await one step, at most STEP_TIMEOUT seconds; fail with ``what`` otherwise."""
    step = asyncio.ensure_future(awaitable)
    waiting = {step} if watch is None else {step, watch}
    done, _ = await asyncio.wait(waiting, timeout=STEP_TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if step in done:
        result: T = step.result()
        return result
    step.cancel()
    if watch is not None and watch in done:
        watch.result()  # raises the bridge's own error (a broker refusing us, ...)
        raise BrokerError("the bridge stopped")
    raise DemoFailed(f"{what} within {STEP_TIMEOUT:.0f}s")


class Printer:
    """Shows the flow as a person wants to watch it; ``--raw`` shows the JSON instead."""

    def __init__(self, out: TextIO, *, raw: bool) -> None:
        self.out = out
        self.raw = raw
        self.streaming = False
        self.started = time.monotonic()

    def line(self, text: str) -> None:
        if self.streaming:
            self.out.write("\n")
            self.streaming = False
        self.out.write(text + "\n")
        self.out.flush()

    def setup(self, what: str, detail: str) -> None:
        if not self.raw:
            self.line(f"  {what:<9} {detail}")

    def sent(self, command: dict[str, Any]) -> None:
        if self.raw:
            self.line(f"> {json.dumps(command)}")
            return
        if command["action"] == "connect":
            self.line("")
        detail = {
            "connect": "open a Responses WebSocket",
            "send": f"response.create: {command.get('event', {}).get('input', '')!r}",
            "ask": f"{command.get('input', '')!r}",
            "close": f"reason {command.get('reason', 'OK')!r}",
        }[command["action"]]
        self.line(f"→ {command['action']:<10} {detail}")
        self.started = time.monotonic()

    def received(self, document: dict[str, Any], raw: bytes) -> None:
        if self.raw:
            self.line(f"< {raw.decode()}")
            return
        kind = document.get("type")
        if kind == "response.output_text.delta":
            if not self.streaming:
                self.out.write("  ")
                self.streaming = True
            self.out.write(document.get("delta", ""))
            self.out.flush()
            return
        text = self._describe(document)
        if text:
            self.line(text)

    def _describe(self, document: dict[str, Any]) -> str | None:
        action, kind = document.get("action"), document.get("type")
        if document.get("object") == "response.websocket.error":
            error = document.get("error", {})
            return f"← error      {error.get('code')}: {error.get('message')}"
        if action == "connect":
            return f"← connected  {document.get('url')}"
        if action in {"send", "ask"}:
            return f"← accepted   {document.get('event_type')}"
        if action in {"close", "disconnected"}:
            return f"← {action:<10} {document.get('code')} {document.get('reason')}"
        if kind == "response.created":
            response = document.get("response", {})
            return f"← streaming  {response.get('id')} from {response.get('model')}"
        if kind in {"response.completed", "response.incomplete", "response.failed"}:
            usage = document.get("response", {}).get("usage") or {}
            seconds = time.monotonic() - self.started
            return (
                f"← {kind.removeprefix('response.'):<10} {usage.get('output_tokens', '?')} "
                f"tokens in {seconds:.1f}s"
            )
        if kind == "error":
            return f"← error      {document.get('error')}"
        return None
