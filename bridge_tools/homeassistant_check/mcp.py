"""The current mode's MCP step: Home Assistant's own ``mcp_server`` as the bridge's tools.

Home Assistant's MCP server is set up through its config flow (REST) with the Assist
API; a long-lived token (WebSocket ``auth/long_lived_access_token``) goes into a file
only the bridge reads. A second bridge (prefix ``mcp``, no Home Assistant discovery:
no integration is involved) gets an ``mcp_servers:`` entry ``home`` for
``<HA>/api/mcp`` with that ``token_file`` and ``allow: [HassTurnOn]``, and a profile
for the id ``hall-button`` that uses it. A plain MQTT client publishes an ``ask`` on
``mcp/hall-button/cmd`` whose text makes the simulator call ``home__HassTurnOn`` for
the exposed light and for the entity not exposed to Assist; then Home Assistant's
REST API must show the light on and the other entity unchanged, the events must show
one call replied and one answered with Home Assistant's error, and the token must
appear in neither the bridge's log nor its MQTT messages.
"""

from __future__ import annotations

import json
import queue
import uuid
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.client import HomeAssistant
from bridge_tools.homeassistant_check.processes import Child, Children, NotYet, wait_until
from bridge_tools.homeassistant_check.stack import START_TIMEOUT, start_bridge

SERVER: Final = "home"  # the model sees home__HassTurnOn
ALLOW: Final = ("HassTurnOn",)
PREFIX: Final = "mcp"
BUTTON: Final = "hall-button"  # the plain MQTT client's connection id
ANSWER_TIMEOUT: Final = 60.0


def set_up_mcp_server(ha: HomeAssistant) -> dict[str, Any]:
    """Home Assistant's ``mcp_server`` with the Assist API, through the config flow."""
    flows = "/api/config/config_entries/flow"
    flow = ha.request("POST", flows, {"handler": "mcp_server"})
    if flow.get("step_id") != "user" or '"assist"' not in json.dumps(flow.get("data_schema")):
        raise CheckFailed(f"mcp_server's config flow did not offer the Assist API: {flow}")
    done: dict[str, Any] = ha.request(
        "POST", f"{flows}/{flow['flow_id']}", {"llm_hass_api": ["assist"]}
    )
    if done.get("type") != "create_entry" or done["result"].get("state") != "loaded":
        raise CheckFailed(f"mcp_server's config flow did not set it up: {done}")
    return done


def long_lived_token(ha: HomeAssistant) -> str:
    # Imported here: agent imports this module.
    from bridge_tools.homeassistant_check.agent import Socket

    socket = Socket(ha)
    try:
        token = socket.call(
            {
                "type": "auth/long_lived_access_token",
                "client_name": f"openai-mqtt-bridge check {uuid.uuid4().hex[:6]}",
                "lifespan": 1,
            }
        )
    finally:
        socket.close()
    return str(token)


def mcp_bridge_config(
    broker_host: str, broker_port: int, simulator_port: int, url: str, token_file: Path
) -> dict[str, Any]:
    return {
        "mqtt": {
            "host": broker_host,
            "port": broker_port,
            "topic_prefix": PREFIX,
            "client_id": "openai-mqtt-bridge-mcp",  # the other bridge has the default
        },
        "openai": {"base_url": f"http://127.0.0.1:{simulator_port}/v1"},
        "shutdown": {"grace_seconds": 3},
        "mcp_servers": {
            SERVER: {
                "url": url,
                "token_file": str(token_file),
                "allow": list(ALLOW),
                "call_timeout": 15,
            }
        },
        "profiles": {
            "house": {
                "request": {"model": "gpt-5.4-nano", "store": False},
                "mcp_servers": [SERVER],
            }
        },
        "sessions": {"profile_by_id": {BUTTON: "house"}, "max_tool_rounds": 3},
    }


def start_mcp_bridge(
    children: Children, run_dir: Path, config: dict[str, Any]
) -> tuple[Child, str]:
    """The bridge, once it has listed Home Assistant's tools; that log line."""
    bridge = start_bridge(children, run_dir, config, name="bridge-mcp")
    listed: list[str] = []

    def has_listed() -> None:
        lines = bridge.log.read_text(errors="replace").splitlines()
        listed[:] = [line for line in lines if f"MCP server {SERVER} lists" in line]
        if not listed:
            raise NotYet(f"no 'MCP server {SERVER} lists' in {bridge.log}")

    wait_until(
        "the bridge lists Home Assistant's MCP tools", has_listed, START_TIMEOUT, watch=[bridge]
    )
    return bridge, listed[-1].split(" - ")[-1]


def ask_over_mqtt(host: str, port: int, text: str) -> list[dict[str, Any]]:
    """An ``ask`` from a plain MQTT client; every event up to the answer (or an error)."""
    received: queue.Queue[bytes] = queue.Queue()
    subscribed: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"button-{uuid.uuid4().hex[:8]}")
    client.on_message = lambda _c, _u, message: received.put(bytes(message.payload))
    client.on_subscribe = lambda *_args: subscribed.put(True)
    client.connect(host, port)
    client.loop_start()
    seen: list[dict[str, Any]] = []
    try:
        client.subscribe(f"{PREFIX}/{BUTTON}/events", qos=1)
        subscribed.get(timeout=10)
        command = json.dumps({"action": "ask", "input": text})
        client.publish(f"{PREFIX}/{BUTTON}/cmd", command, qos=1).wait_for_publish(10)
        while True:
            try:
                event = json.loads(received.get(timeout=ANSWER_TIMEOUT))
            except queue.Empty:
                raise CheckFailed(f"no answer within {ANSWER_TIMEOUT:.0f} s: {seen[-3:]}") from None
            seen.append(event)
            if event.get("object") == "response.websocket.error" or (
                event.get("type") == "response.completed"
                and not any(
                    item.get("type") == "function_call" for item in event["response"]["output"]
                )
            ):
                return seen
    finally:
        client.loop_stop()
        client.disconnect()


def answer_text(seen: list[dict[str, Any]]) -> str:
    last = seen[-1]
    if last.get("type") != "response.completed":
        raise CheckFailed(f"the ask ended in an error: {last}")
    return "".join(
        part.get("text", "")
        for item in last["response"]["output"]
        if item.get("type") == "message"
        for part in item.get("content", [])
    )


def check_mcp(
    ha: HomeAssistant,
    bridge: Child,
    broker: tuple[str, int],
    token: str,
    entities: tuple[tuple[str, str], tuple[str, str]],
) -> str:
    """The ask switches the exposed entity through HA's tool, not the hidden one."""
    (light, light_name), (hidden, hidden_name) = entities
    for entity in (light, hidden):
        if (ha.state(entity) or {}).get("state") != "off":
            raise CheckFailed(f"{entity} is not off before the MCP ask")
    seen = ask_over_mqtt(
        *broker,
        f'Please call {SERVER}__HassTurnOn with {{"name":"{light_name}"}} and '
        f'call {SERVER}__HassTurnOn with {{"name":"{hidden_name}"}}',
    )
    text = answer_text(seen)
    calls = [event for event in seen if event.get("object") == "response.websocket.tool_call"]
    if (ha.state(light) or {}).get("state") != "on":
        raise CheckFailed(
            f"{light} is still off: the MCP call did not switch it; calls {calls}, answer {text!r}"
        )
    if (ha.state(hidden) or {}).get("state") != "off":
        raise CheckFailed(f"{hidden} is not exposed, yet the MCP call switched it: {calls}")
    # The two calls run at once: their events come in either order.
    statuses = sorted((call.get("server"), call.get("tool"), call.get("status")) for call in calls)
    wanted = [(SERVER, "HassTurnOn", "error"), (SERVER, "HassTurnOn", "replied")]
    if statuses != wanted:
        raise CheckFailed(f"the tool calls were {statuses}, not {wanted}: {calls}")
    (failed,) = [call for call in calls if call.get("status") == "error"]
    refusal = str(failed.get("error") or "")
    # MatchFailedReason.ASSISTANT: the entity is not exposed to Assist.
    if "ASSISTANT" not in refusal or "error" not in text:
        raise CheckFailed(f"Home Assistant's refusal did not reach the model: {failed}, {text!r}")
    if token in bridge.log.read_text(errors="replace") or token in json.dumps(seen):
        raise CheckFailed("the long-lived token appears in the bridge's log or its messages")
    return f"{light} on, {hidden} off; for {hidden_name!r} Home Assistant said {refusal[:60]!r}…"
