"""``scripts/check-homeassistant --current``: the integration as Assist's agent in HA 2026.2.3.

Steps, each timed (the runner's :class:`Report`): the cached trixie root with Home
Assistant (:mod:`current_root`); Mosquitto, the simulator and the bridge on the
host; Home Assistant in the root with ``custom_components/openai_mqtt_bridge``
copied into its configuration; onboarding and MQTT's config flow over REST; then,
as a user's client would, over REST and the WebSocket API:

- the integration's config flow finds the bridge from its retained info and sets up
  the profile ``house`` with the Assist API allowed, and ``tight`` (a budget of 0);
- ``conversation/process`` with the agent answers;
- a text run of an Assist pipeline whose agent is the bridge streams the answer
  (``intent-progress`` events with ``chat_log_delta``) and speaks it;
- a follow-up after Home Assistant's conversation expiry is remembered: a
  conversation id Home Assistant does not hold (what an expired one is: it starts a
  new conversation and answers with a new id, as after 5 minutes) gets an answer
  the simulator marks as a follow-up, from the bridge's memory;
- a tool call turns on an entity exposed to Assist (``HassTurnOn``), run by Home
  Assistant, and the answer quotes the tool's result;
- ``tight`` answers with the spoken budget error;
- Home Assistant's own MCP server (``mcp_server``, set up through its config flow)
  gives a second bridge its tools: an ``ask`` from a plain MQTT client turns on the
  exposed entity through ``home__HassTurnOn`` and cannot touch the hidden one
  (:mod:`mcp`);
- ``ai_task.generate_data`` on the AI Task entity, with a structure, returns the
  model's JSON as data (the simulator scripted to answer it), and answer JSON that
  does not match the structure is refused with the integration's error;
- the logs of Home Assistant and the bridge have no problem.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import uuid
from pathlib import Path
from typing import Any, Final

from websockets.sync.client import ClientConnection, connect

from bridge_tools.homeassistant_check import CURRENT_VERSION, CheckFailed
from bridge_tools.homeassistant_check.client import REQUEST_TIMEOUT, HomeAssistant
from bridge_tools.homeassistant_check.current_root import (
    CurrentHomeAssistant,
    ensure_current,
    mounted,
)
from bridge_tools.homeassistant_check.examples import (
    bridge_log_problems,
    homeassistant_log_problems,
)
from bridge_tools.homeassistant_check.mcp import (
    check_mcp,
    long_lived_token,
    mcp_bridge_config,
    set_up_mcp_server,
    start_mcp_bridge,
)
from bridge_tools.homeassistant_check.processes import Child, Children, NotYet, wait_until
from bridge_tools.homeassistant_check.runner import Report
from bridge_tools.homeassistant_check.stack import (
    CORE,
    START_TIMEOUT,
    bridge_config,
    start_bridge,
    start_broker_and_simulator,
)
from bridge_tools.local_broker import LocalMosquitto, free_port

PROJECT: Final = Path(__file__).resolve().parents[2]
INTEGRATION: Final = PROJECT / "custom_components" / "openai_mqtt_bridge"
DOMAIN: Final = "openai_mqtt_bridge"
LIGHT: Final = "input_boolean.kitchen_light"
HIDDEN: Final = "input_boolean.garage_door"  # not exposed to Assist: a call must not touch it
# The simulator's follow-up answers begin with one of these (bridge_tools.simulator.text).
FOLLOW_UPS: Final = ("Building on what we discussed", "Following up on that", "To continue from")


def configuration(http_port: int) -> str:
    return f"""\
# Written by scripts/check-homeassistant --current.
{CORE}http:
  server_host: 127.0.0.1
  server_port: {http_port}
api:
websocket_api:
onboarding:
conversation:
assist_pipeline:
logger:
  default: info
input_boolean:
  kitchen_light:
    name: Kitchen light
  garage_door:
    name: Garage door
"""


def check_config_files() -> list[str]:
    """What HA's loader and hassfest would refuse in the integration's JSON files."""
    problems = []
    manifest = json.loads((INTEGRATION / "manifest.json").read_text())
    for key in ("domain", "name", "version", "documentation", "codeowners", "iot_class"):
        if key not in manifest:
            problems.append(f"manifest.json has no {key!r}")
    if manifest.get("domain") != DOMAIN or manifest.get("config_flow") is not True:
        problems.append("manifest.json: domain must be the folder's name, config_flow true")
    if "mqtt" not in manifest.get("dependencies", []):
        problems.append("manifest.json must depend on mqtt")
    hacs = json.loads((PROJECT / "hacs.json").read_text())
    if hacs.get("homeassistant") != CURRENT_VERSION:
        problems.append(
            f"hacs.json declares Home Assistant {hacs.get('homeassistant')}, "
            f"the check runs {CURRENT_VERSION}: the minimum must be the version tested"
        )
    strings = json.loads((INTEGRATION / "strings.json").read_text())
    english = json.loads((INTEGRATION / "translations" / "en.json").read_text())
    if strings != english:
        problems.append("translations/en.json is not strings.json")
    allowed = {"config", "options", "entity", "exceptions", "issues", "services", "selector"}
    problems += [f"strings.json: unknown key {key!r}" for key in set(strings) - allowed]
    for section in ("config", "options"):
        for step, fields in strings.get(section, {}).get("step", {}).items():
            unknown = set(fields) - {
                "title",
                "description",
                "data",
                "data_description",
                "menu_options",
            }
            problems += [f"strings.json {section}.step.{step}: unknown {key!r}" for key in unknown]
    return problems


class Socket:
    """One authenticated WebSocket connection to Home Assistant."""

    def __init__(self, ha: HomeAssistant) -> None:
        url = ha.base_url.replace("http://", "ws://") + "/api/websocket"
        self.socket: ClientConnection = connect(url, open_timeout=REQUEST_TIMEOUT, max_size=None)
        self.socket.recv(timeout=REQUEST_TIMEOUT)
        self.socket.send(json.dumps({"type": "auth", "access_token": ha.token}))
        if json.loads(self.socket.recv(timeout=REQUEST_TIMEOUT)).get("type") != "auth_ok":
            raise CheckFailed("the WebSocket API refused the token")
        self.number = 0

    def send(self, message: dict[str, Any]) -> int:
        self.number += 1
        self.socket.send(json.dumps({"id": self.number, **message}))
        return self.number

    def receive(self, timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.socket.recv(timeout=timeout))
        return answer

    def result(self, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
        """The ``result`` message answering ``message``, successful or not."""
        number = self.send(message)
        while True:
            answer = self.receive(timeout)
            if answer.get("id") == number and answer.get("type") == "result":
                return answer

    def call(self, message: dict[str, Any]) -> Any:
        answer = self.result(message)
        if not answer.get("success"):
            raise CheckFailed(f"WebSocket {message['type']} failed: {answer}")
        return answer.get("result")

    def close(self) -> None:
        self.socket.close()


def set_up_integration(ha: HomeAssistant, profile: str, tools: bool) -> dict[str, Any]:
    """The integration's config flow, as the UI runs it: pick the bridge, then a profile."""
    flows = "/api/config/config_entries/flow"
    flow = ha.request("POST", flows, {"handler": DOMAIN})
    if flow.get("step_id") != "user":
        raise CheckFailed(f"the config flow did not offer the bridges it found: {flow}")
    choices = json.dumps(flow.get("data_schema"))
    if '"ai"' not in choices:
        raise CheckFailed(f"the config flow did not find the bridge on prefix ai: {choices}")
    flow = ha.request("POST", f"{flows}/{flow['flow_id']}", {"prefix": "ai"})
    if flow.get("step_id") != "profile" or profile not in json.dumps(flow.get("data_schema")):
        raise CheckFailed(f"the config flow did not offer the bridge's profile {profile}: {flow}")
    data: dict[str, Any] = {"profile": profile}
    if tools:
        data["llm_hass_api"] = ["assist"]
    done: dict[str, Any] = ha.request("POST", f"{flows}/{flow['flow_id']}", data)
    if done.get("type") != "create_entry" or done["result"].get("state") != "loaded":
        raise CheckFailed(f"the config flow did not set the integration up: {done}")
    return done


def agent_of(ha: HomeAssistant, entry_id: str, domain: str = "conversation") -> str:
    """The config entry's entity of ``domain`` (its conversation agent, its AI Task)."""
    socket = Socket(ha)
    try:
        entities = socket.call({"type": "config/entity_registry/list"})
    finally:
        socket.close()
    for entity in entities:
        if entity.get("config_entry_id") == entry_id and entity["entity_id"].startswith(
            f"{domain}."
        ):
            return str(entity["entity_id"])
    raise CheckFailed(f"no {domain} entity for the config entry {entry_id}")


def process(
    ha: HomeAssistant, agent: str, text: str, conversation_id: str | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"text": text, "agent_id": agent, "language": "en"}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    result: dict[str, Any] = ha.request("POST", "/api/conversation/process", body, timeout=60)
    return result


def speech(result: dict[str, Any]) -> str:
    return str(result["response"]["speech"]["plain"]["speech"])


def check_answers(ha: HomeAssistant, agent: str) -> dict[str, Any]:
    result = process(ha, agent, "How do I keep basil alive on a windowsill?")
    if result["response"]["response_type"] != "action_done" or not speech(result):
        raise CheckFailed(f"conversation/process did not answer: {result}")
    if speech(result).startswith(FOLLOW_UPS):
        raise CheckFailed(f"a first question was answered as a follow-up: {speech(result)!r}")
    return result


def check_follow_up(ha: HomeAssistant, agent: str, first: dict[str, Any]) -> str:
    """A conversation id HA does not hold (as after its 5-minute expiry) is remembered."""
    expired = "01JAAAAAAAAAAAAAAAAAAAAAAA"  # a ULID HA never issued: it holds no such conversation
    result = process(ha, agent, "And how often should I water it?", expired)
    if result.get("conversation_id") in (expired, first.get("conversation_id")):
        raise CheckFailed(f"Home Assistant did not start a new conversation: {result}")
    text = speech(result)
    if not text.startswith(FOLLOW_UPS):
        raise CheckFailed(f"the follow-up was not remembered (no follow-up answer): {text!r}")
    return text


def check_pipeline(ha: HomeAssistant, agent: str) -> tuple[int, str]:
    """A text run of a pipeline whose agent is the bridge: streamed deltas, then speech."""
    socket = Socket(ha)
    try:
        pipeline = socket.call(
            {
                "type": "assist_pipeline/pipeline/create",
                "name": "Bridge",
                "language": "en",
                "conversation_engine": agent,
                "conversation_language": "en",
                "stt_engine": None,
                "stt_language": None,
                "tts_engine": None,
                "tts_language": None,
                "tts_voice": None,
                "wake_word_entity": None,
                "wake_word_id": None,
            }
        )
        number = socket.send(
            {
                "type": "assist_pipeline/run",
                "start_stage": "intent",
                "end_stage": "intent",
                "input": {"text": "Why is the sky blue?"},
                "pipeline": pipeline["id"],
            }
        )
        deltas, spoken = 0, None
        while True:
            message = socket.receive(timeout=60)
            if message.get("id") != number:
                continue
            if message.get("type") == "result" and not message.get("success"):
                raise CheckFailed(f"assist_pipeline/run failed: {message}")
            event = message.get("event") or {}
            if event.get("type") == "intent-progress" and (
                (event.get("data") or {}).get("chat_log_delta") or {}
            ).get("content"):
                deltas += 1
            if event.get("type") == "intent-end":
                spoken = event["data"]["intent_output"]["response"]["speech"]["plain"]["speech"]
            if event.get("type") == "error":
                raise CheckFailed(f"the pipeline run ended in an error: {event}")
            if event.get("type") == "run-end":
                break
    finally:
        socket.close()
    if deltas < 2 or not spoken:
        raise CheckFailed(f"the run streamed {deltas} deltas and spoke {spoken!r}")
    return deltas, str(spoken)


def expose(ha: HomeAssistant) -> None:
    socket = Socket(ha)
    try:
        socket.call(
            {
                "type": "homeassistant/expose_entity",
                "assistants": ["conversation"],
                "entity_ids": [LIGHT],
                "should_expose": True,
            }
        )
        socket.call(
            {
                "type": "homeassistant/expose_entity",
                "assistants": ["conversation"],
                "entity_ids": [HIDDEN],
                "should_expose": False,
            }
        )
    finally:
        socket.close()


def check_tool_call(ha: HomeAssistant, agent: str) -> str:
    """HassTurnOn on the exposed light: Home Assistant runs it, the answer quotes it."""
    expose(ha)
    for entity in (LIGHT, HIDDEN):
        if (ha.state(entity) or {}).get("state") != "off":
            raise CheckFailed(f"{entity} is not off before the tool call")
    result = process(
        ha,
        agent,
        'Please call HassTurnOn with {"name":"Kitchen light"} and '
        'call HassTurnOn with {"name":"Garage door"}',
    )
    text = speech(result)
    if (ha.state(LIGHT) or {}).get("state") != "on":
        raise CheckFailed(f"the tool call did not turn {LIGHT} on: {text!r}")
    if (ha.state(HIDDEN) or {}).get("state") != "off":
        raise CheckFailed(f"{HIDDEN} is not exposed, yet the model switched it: {text!r}")
    if "HassTurnOn returned" not in text:
        raise CheckFailed(f"the answer does not quote the tool's result: {text!r}")
    return text


def check_budget(ha: HomeAssistant, agent: str) -> str:
    result = process(ha, agent, "What is the weather like on Mars?")
    text = speech(result)
    if result["response"]["response_type"] != "error" or "budget" not in text:
        raise CheckFailed(f"the budget refusal was not spoken as an error: {result}")
    return text


# What ai_task.generate_data is asked for: a structure as a user writes it in YAML.
STRUCTURE: Final = {
    "plant": {"description": "The plant's name", "required": True, "selector": {"text": {}}},
    "days": {"description": "Days between waterings", "required": True, "selector": {"number": {}}},
}
PLANT: Final = {"plant": "basil", "days": 2}


def generate_data(ha: HomeAssistant, entity: str, answer: str) -> dict[str, Any]:
    """ai_task.generate_data over the WebSocket API, the simulator scripted to ``answer``."""
    data = {
        "entity_id": entity,
        "task_name": "watering",
        "instructions": f"How often to water basil? Reply with exactly: {answer}",
        "structure": STRUCTURE,
    }
    socket = Socket(ha)
    try:
        return socket.result(
            {
                "type": "call_service",
                "domain": "ai_task",
                "service": "generate_data",
                "service_data": data,
                "return_response": True,
            },
            timeout=60,
        )
    finally:
        socket.close()


def check_ai_task(ha: HomeAssistant, entity: str) -> tuple[str, str]:
    """Structured data that matches is returned as data; JSON that does not is an error."""
    result = generate_data(ha, entity, json.dumps(PLANT))
    if not result.get("success"):
        raise CheckFailed(f"ai_task.generate_data failed: {result.get('error')}")
    data = (result.get("result") or {}).get("response", {}).get("data")
    if data != PLANT:
        raise CheckFailed(f"ai_task.generate_data returned {data!r}, not {PLANT!r}: {result}")
    wrong = generate_data(ha, entity, '{"plant": "basil", "days": "often"}')
    message = str((wrong.get("error") or {}).get("message", ""))
    if wrong.get("success") or "does not match the structure" not in message:
        raise CheckFailed(f"JSON that does not match the structure was not refused: {wrong}")
    return json.dumps(data), message


def start_homeassistant_in_root(
    children: Children, current: CurrentHomeAssistant, inside: str, ha: HomeAssistant, name: str
) -> Child:
    child = children.start(name, current.hass(inside))

    def answers() -> None:
        try:
            if ha.token is not None:
                ha.request("GET", "/api/")
            else:
                ha.request("GET", "/api/onboarding")
        except CheckFailed as exc:
            raise NotYet(str(exc)) from None

    wait_until("Home Assistant answers on HTTP", answers, START_TIMEOUT * 2, watch=[child])
    return child


def check_current(
    version: str,
    cache_root: Path,
    report: Report,
    run_dir: Path,
    children: Children,
    brokers: list[LocalMosquitto],
) -> None:
    with report.step("the integration's manifest, hacs.json and strings") as note:
        problems = check_config_files()
        if problems:
            raise CheckFailed("\n  ".join(problems))
        note("keys as Home Assistant's loader and hassfest want them")

    with report.step(f"Home Assistant {version} in a Debian trixie root") as note:
        current = ensure_current(version, cache_root, note, run_dir)
        note(f"{'installed now' if current.fresh_install else 'cached'} in {current.venv}")

    with report.step("Mosquitto, the simulator and the bridge") as note:
        broker, simulator, simulator_port = start_broker_and_simulator(run_dir, children, brokers)
        config = bridge_config(broker.host, broker.port, simulator_port)
        config["profiles"]["tight"] = {
            "request": {"model": "gpt-5.4-nano", "store": False},
            "limits": {"budgets": {"tokens_per_day": 0}},
        }
        bridge = start_bridge(children, run_dir, config)
        note(f"broker 127.0.0.1:{broker.port}, simulator :{simulator_port}, bridge online")

    config_name = f"ha-check-{uuid.uuid4().hex[:8]}"
    inside = f"/srv/{config_name}"
    config_dir = current.tree / inside.lstrip("/")
    http_port = free_port()
    ha = HomeAssistant(http_port)
    with mounted(current.tree):
        try:
            _with_homeassistant(
                report,
                children,
                current,
                inside,
                config_dir,
                ha,
                http_port,
                broker,
                simulator_port,
                run_dir,
                [bridge, simulator],
            )
        except BaseException:
            children.stop_all()  # Home Assistant must not write into what is removed below
            raise
        finally:
            # Its configuration and log go to the run directory; the cached root stays clean.
            with contextlib.suppress(OSError):
                shutil.copytree(config_dir, run_dir / "homeassistant", dirs_exist_ok=True)
            shutil.rmtree(config_dir, ignore_errors=True)

    with report.step("the bridge stops; its log has no problem"):
        code = children.stop(bridge)
        problems = [
            line for line in bridge_log_problems(bridge.log) if "budget_exceeded" not in line
        ]
        if code != 0:
            problems.append(f"the bridge exited with code {code}")
        if problems:
            raise CheckFailed("the bridge's log:\n  " + "\n  ".join(problems))


def _with_homeassistant(
    report: Report,
    children: Children,
    current: CurrentHomeAssistant,
    inside: str,
    config_dir: Path,
    ha: HomeAssistant,
    http_port: int,
    broker: LocalMosquitto,
    simulator_port: int,
    run_dir: Path,
    others: list[Child],
) -> None:
    with report.step("Home Assistant starts in the root (chroot), with the integration") as note:
        (config_dir / "custom_components").mkdir(parents=True)
        shutil.copytree(INTEGRATION, config_dir / "custom_components" / DOMAIN)
        (config_dir / "configuration.yaml").write_text(configuration(http_port))
        homeassistant = start_homeassistant_in_root(children, current, inside, ha, "homeassistant")
        note(f"{ha.base_url}, config {inside} in the root")
    watch = [homeassistant, *others]

    with report.step("onboarding and MQTT's config flow, through the REST API"):
        ha.onboard()
        ha.set_up_mqtt(broker.host, broker.port)

    with report.step("the integration's config flow: the bridge found, profiles picked") as note:
        house = set_up_integration(ha, "house", tools=True)
        tight = set_up_integration(ha, "tight", tools=False)
        agent = agent_of(ha, house["result"]["entry_id"])
        tight_agent = agent_of(ha, tight["result"]["entry_id"])
        note(f"{agent} (house, Assist API), {tight_agent} (tight)")
        for child in watch:
            child.check_alive()

    with report.step("conversation/process with the bridge's agent") as note:
        first = check_answers(ha, agent)
        note(repr(speech(first)[:70]))

    with report.step(
        "a follow-up after Home Assistant's conversation expiry is remembered"
    ) as note:
        note(repr(check_follow_up(ha, agent, first)[:70]))

    with report.step("a text run of an Assist pipeline whose agent is the bridge") as note:
        deltas, spoken = check_pipeline(ha, agent)
        note(f"{deltas} streamed deltas, then {spoken[:60]!r}")

    with report.step("a tool call switches the exposed entity, not the hidden one") as note:
        note(repr(check_tool_call(ha, agent)[:90]))

    with report.step("a budget refusal is spoken as an error") as note:
        note(repr(check_budget(ha, tight_agent)))

    with report.step(
        "an ask from a plain MQTT client switches the exposed entity through HA's MCP server"
    ) as note:
        ha.call_service("input_boolean", "turn_off", {"entity_id": LIGHT})
        set_up_mcp_server(ha)
        token = long_lived_token(ha)
        token_file = run_dir / "ha_token"
        token_file.touch(mode=0o600)
        token_file.write_text(token + "\n")
        config = mcp_bridge_config(
            broker.host, broker.port, simulator_port, f"{ha.base_url}/api/mcp", token_file
        )
        mcp_bridge, listed = start_mcp_bridge(children, run_dir, config)
        note(listed)
        note(
            check_mcp(
                ha,
                mcp_bridge,
                (broker.host, broker.port),
                token,
                ((LIGHT, "Kitchen light"), (HIDDEN, "Garage door")),
            )
        )
        code = children.stop(mcp_bridge)
        problems = bridge_log_problems(mcp_bridge.log)
        if code != 0:
            problems.append(f"the MCP bridge exited with code {code}")
        if problems:
            raise CheckFailed(f"{mcp_bridge.log}:\n  " + "\n  ".join(problems))

    with report.step("ai_task.generate_data with a structure: parsed, or refused") as note:
        task = agent_of(ha, house["result"]["entry_id"], "ai_task")
        data, refusal = check_ai_task(ha, task)
        note(f"{task}: {data}")
        note(f"a mismatch: {refusal[:110]!r}")

    with report.step("Home Assistant stops; its log has no problem") as note:
        code = children.stop(homeassistant, timeout=60)
        log = config_dir / "home-assistant.log"
        problems, unrelated = homeassistant_log_problems(log)
        problems = [line for line in problems if not _expected(line)]
        if code != 0:
            problems.append(f"Home Assistant exited with code {code}")
        if problems:
            raise CheckFailed(f"{log}:\n  " + "\n  ".join(problems))
        note(f"{len(unrelated)} unrelated warnings" + "".join(f"\n     {x}" for x in unrelated))
    del run_dir


def _expected(line: str) -> bool:
    """HA's warning about any custom integration (this one is); ffmpeg, which the root
    does not have (assist_pipeline sets it up for audio; the check's runs are text); and
    the error of the AI Task step's deliberate mismatch."""
    if "custom integration" in line and DOMAIN in line and "WARNING" in line:
        return True
    if (
        "Error during service call to ai_task.generate_data" in line
        and "does not match the structure" in line
        and '"days": "often"' in line
    ):
        return True
    return "[haffmpeg." in line
