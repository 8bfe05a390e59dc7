"""An MQTT client the check runs inside the guest, with the installed bridge's Python and paho.

``python -m bridge_tools.systemd_check.probe ask --id kitchen --input "Hi"``
publishes an ``ask`` on ``ai/<id>/cmd`` and prints every message on
``ai/<id>/events`` as a JSON line until the ``response.completed`` (exit 0),
an error (exit 1) or the timeout (exit 2).

``... watch --topic ai/bridge/state --expect offline --expect online`` prints
``subscribed`` once subscribed, then each message as ``<topic> <payload>``,
and exits 0 once payloads containing each ``--expect`` have come, in that
order (2 on the timeout).

Only the standard library and paho (the bridge's own dependency): this runs
in the guest's venv, from the wheel the check installed.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import time
from typing import Any

from paho.mqtt import client as paho
from paho.mqtt.enums import CallbackAPIVersion

PREFIX = "ai"


def _client(topics: list[str]) -> tuple[paho.Client, queue.Queue[tuple[str, bytes]]]:
    """Connected and subscribed to ``topics`` (QoS 1), messages arriving on the queue."""
    messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
    subscribed: queue.Queue[object] = queue.Queue()
    client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)

    def on_message(_client: paho.Client, _userdata: Any, message: Any) -> None:
        messages.put((message.topic, message.payload))

    def on_subscribe(*_args: Any) -> None:
        subscribed.put(True)

    client.on_message = on_message
    client.on_subscribe = on_subscribe
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    for topic in topics:
        client.subscribe(topic, qos=1)
        subscribed.get(timeout=10)
    return client, messages


def ask(connection_id: str, text: str, profile: str | None, timeout: float) -> int:
    client, messages = _client([f"{PREFIX}/{connection_id}/events"])
    command: dict[str, Any] = {"action": "ask", "input": text}
    if profile is not None:
        command["profile"] = profile
    client.publish(f"{PREFIX}/{connection_id}/cmd", json.dumps(command), qos=1).wait_for_publish()
    deadline = time.monotonic() + timeout
    try:
        while (left := deadline - time.monotonic()) > 0:
            try:
                _, payload = messages.get(timeout=left)
            except queue.Empty:
                break
            print(payload.decode(errors="replace"), flush=True)
            document = json.loads(payload)
            if document.get("type") == "response.completed":
                return 0
            if "error" in document or document.get("type") in ("error", "response.failed"):
                return 1
        return 2
    finally:
        client.disconnect()
        client.loop_stop()


def watch(topics: list[str], expect: list[str], timeout: float) -> int:
    client, messages = _client(topics)
    print("subscribed", flush=True)
    deadline = time.monotonic() + timeout
    try:
        while expect and (left := deadline - time.monotonic()) > 0:
            try:
                topic, payload = messages.get(timeout=left)
            except queue.Empty:
                break
            text = payload.decode(errors="replace")
            print(topic, text, flush=True)
            if expect[0] in text:
                expect.pop(0)
        return 0 if not expect else 2
    finally:
        client.disconnect()
        client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="probe")
    commands = parser.add_subparsers(dest="command", required=True)
    asking = commands.add_parser("ask")
    asking.add_argument("--id", required=True)
    asking.add_argument("--input", required=True)
    asking.add_argument("--profile")
    asking.add_argument("--timeout", type=float, default=30)
    watching = commands.add_parser("watch")
    watching.add_argument("--topic", action="append", required=True)
    watching.add_argument("--expect", action="append", default=[])
    watching.add_argument("--timeout", type=float, default=60)
    args = parser.parse_args(argv)
    if args.command == "ask":
        return ask(args.id, args.input, args.profile, args.timeout)
    return watch(args.topic, args.expect, args.timeout)


if __name__ == "__main__":
    sys.exit(main())
