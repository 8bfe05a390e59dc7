"""The example scripts in Home Assistant, and the logs of Home Assistant and the bridge.

Each example (examples/home-assistant/*.yaml, in scripts.yaml form) names the
assistant's entities in its variables (``answer_sensor``, ``ask_entity``)
and ends with a persistent notification. The check makes sure those entity
ids are the ones discovery created, runs each script twice in a row through
the REST API, and reads the notification it leaves: the answer's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.client import HomeAssistant, NoAnswer
from bridge_tools.homeassistant_check.processes import Child, NotYet, timeout_factor, wait_until

SCRIPT_TIMEOUT: Final = 60.0
# Variables of the examples that name an entity of the assistant, by entity name.
ENTITY_VARIABLES: Final = {"answer_sensor": "Answer", "ask_entity": "Ask"}
_LOG_LINE = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) \(([^)]*)\) \[([^\]]+)\] (.*)$")
# What a line must mention for a warning to be the check's business (not "homeassistant").
RELEVANT: Final = re.compile(
    r"mqtt|openai|bridge|\bassistant|script|template|\btext\b|sensor|notification|\bai/",
    re.IGNORECASE,
)
# Warnings that say nothing about what the check checks.
HARMLESS: Final = (
    "Skipping pip installation of required modules",  # --skip-pip: it is all installed
    "Support for the running Python version",  # 3.11, deprecated by 2024.4
    "Waiting on integrations to complete setup",  # a slow machine
    "is taking over 10 seconds",  # a slow machine
    "Error loading libturbojpeg",  # later releases: a system library, for camera snapshots
)


@dataclass(frozen=True)
class Example:
    script_id: str
    path: Path
    config: dict[str, Any]

    @property
    def notification_id(self) -> str:
        """The one notification the script leaves (its answer, or that there was none)."""
        ids = {
            step["data"]["notification_id"]
            for step in _steps(self.config["sequence"])
            if step.get("service", step.get("action")) == "persistent_notification.create"
        }
        if len(ids) != 1:
            raise CheckFailed(f"{self.path.name}: the check needs one notification_id, not {ids}")
        return str(ids.pop())


def _steps(sequence: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for step in sequence:
        yield step
        for key in ("then", "else", "sequence"):
            if isinstance(step.get(key), list):
                yield from _steps(step[key])


def sort_examples(directory: Path) -> tuple[list[Path], list[Path]]:
    """The example files in scripts.yaml form (a script per key), and the packages."""
    scripts, packages = [], []
    for path in sorted(directory.glob("*.yaml")):
        document = yaml.safe_load(path.read_text())
        if not isinstance(document, dict) or not document:
            raise CheckFailed(f"{path} is neither a scripts.yaml nor a package")
        if all(isinstance(value, dict) and "sequence" in value for value in document.values()):
            scripts.append(path)
        else:
            packages.append(path)
    if not scripts:
        raise CheckFailed(f"no example scripts in {directory}")
    return scripts, packages


def check_packages(ha: HomeAssistant, packages: list[Path]) -> list[str]:
    """Each automation (with an id) and script of the packages is loaded; their entity ids."""
    wanted = []
    for path in packages:
        document = yaml.safe_load(path.read_text())
        automations = document.get("automation", [])
        for automation in automations if isinstance(automations, list) else [automations]:
            if "id" in automation:
                wanted.append(("automation", str(automation["id"]), "on"))
        wanted += [("script", script_id, "off") for script_id in document.get("script", {})]
    (registry,) = ha.websocket("config/entity_registry/list")
    by_unique_id = {
        (entry["platform"], entry["unique_id"]): entry["entity_id"] for entry in registry
    }
    states = ha.states()
    found = []
    for platform, unique_id, expected in wanted:
        entity_id = by_unique_id.get((platform, unique_id))
        state = states.get(entity_id or "", {}).get("state")
        if entity_id is None or state != expected:
            raise CheckFailed(f"{platform} {unique_id} of the packages: {entity_id} is {state!r}")
        found.append(entity_id)
    return found


def load_examples(paths: list[Path]) -> list[Example]:
    examples = []
    for path in paths:
        document = yaml.safe_load(path.read_text())
        if not isinstance(document, dict):
            raise CheckFailed(f"{path} is not a scripts.yaml mapping")
        examples += [Example(script_id, path, config) for script_id, config in document.items()]
    if len({example.script_id for example in examples}) != len(examples):
        raise CheckFailed("two example scripts have the same id")
    return examples


def check_example_entities(examples: list[Example], assistant: dict[str, str]) -> None:
    """The entity ids the examples use are those discovery created."""
    for example in examples:
        variables = example.config.get("variables", {})
        for variable, name in ENTITY_VARIABLES.items():
            if variable in variables and variables[variable] != assistant[name]:
                raise CheckFailed(
                    f"{example.path.name}: {variable} is {variables[variable]}, "
                    f"but discovery created {assistant[name]}"
                )
        if "answer_sensor" not in variables:
            raise CheckFailed(f"{example.path.name}: no answer_sensor variable")


def check_example(
    ha: HomeAssistant,
    example: Example,
    assistant: dict[str, str],
    question: str,
    watch: list[Child],
    log: Path,
) -> str:
    """Run the script once; the answer's text, as its notification shows it.

    The service call returns when the script has finished; ``log`` (Home
    Assistant's) tells where a script that does not finish is waiting.
    """
    answer_id = assistant["Answer"]
    script_entity = f"script.{example.script_id}"
    before = (ha.state(answer_id) or {"attributes": {}})["attributes"].get("response_id")
    noted = ha.notifications().get(example.notification_id, {}).get("created_at")
    timeout = SCRIPT_TIMEOUT * timeout_factor()
    try:
        ha.call_service("script", example.script_id, {"question": question}, timeout=timeout)
    except NoAnswer:
        raise CheckFailed(
            f"{script_entity} did not finish within {timeout:.0f} s; "
            f"{_last_step(log, example.script_id)}"
        ) from None

    def finished() -> tuple[dict[str, Any], dict[str, Any]]:
        running = (ha.state(script_entity) or {}).get("state")
        if running != "off":
            raise NotYet(f"{script_entity} is {running!r}")
        notification = ha.notifications().get(example.notification_id)
        if notification is None or notification["created_at"] == noted:
            raise NotYet(f"no new notification {example.notification_id!r}")
        answer = (ha.state(answer_id) or {"attributes": {}})["attributes"]
        return notification, answer

    notification, answer = wait_until(
        f"script.{example.script_id} notifies an answer", finished, SCRIPT_TIMEOUT, watch=watch
    )
    if notification["title"] != "OpenAI":
        raise CheckFailed(f"script.{example.script_id} notified {notification}")
    if answer.get("response_id") in {None, before} or answer.get("status") != "completed":
        raise CheckFailed(f"{answer_id} holds no new completed answer: {answer}")
    if notification["message"] != answer.get("text"):
        raise CheckFailed(
            f"script.{example.script_id} notified {notification['message']!r}, "
            f"the answer is {answer.get('text')!r}"
        )
    if "request_id" in example.config.get("variables", {}) and not answer.get("request_id"):
        raise CheckFailed(f"the answer carries no request_id: {answer}")
    return str(notification["message"])


# An id the bridge's homeassistant.assistants does not list: the README's example list.
MISSING_ASSISTANT: Final = "garage"
MISSING_TIMEOUT: Final = 10.0  # "promptly": not the 2 minutes of waiting for an answer


def assistant_entity_id(component: str, connection_id: str, name: str) -> str:
    """The entity id Home Assistant gives an assistant's entity (an ASCII id)."""
    slug = re.sub(r"[^a-z0-9]+", "_", f"assistant {connection_id} {name}".lower()).strip("_")
    return f"{component}.{slug}"


def check_missing_assistant(
    ha: HomeAssistant, example: Example, assistant: dict[str, str], watch: list[Child]
) -> str:
    """The script, run for an assistant the bridge does not announce, asks nothing and
    says promptly which ``homeassistant.assistants`` entry is missing; its notification.
    (That it asked nothing, the bridge's log tells at the end: :func:`bridge_heard_of`.)

    The run's data overrides the script's variables (the assistant's id, topic and
    entity ids), as a copy of the script made for another id would have them.
    """
    variables = example.config.get("variables", {})
    if "assistant" not in variables:
        raise CheckFailed(f"{example.path.name}: no assistant variable")
    overrides: dict[str, str] = {"assistant": MISSING_ASSISTANT}
    if "commands" in variables:
        overrides["commands"] = f"ai/{MISSING_ASSISTANT}/cmd"
    for variable, name in ENTITY_VARIABLES.items():
        if variable in variables:
            component = assistant[name].split(".", 1)[0]
            overrides[variable] = assistant_entity_id(component, MISSING_ASSISTANT, name)
            if ha.state(overrides[variable]) is not None:
                raise CheckFailed(f"{overrides[variable]} exists: pick another missing id")
    noted = ha.notifications().get(example.notification_id, {}).get("created_at")
    timeout = MISSING_TIMEOUT * timeout_factor()
    try:
        ha.call_service(
            "script", example.script_id, {"question": "Anyone there?", **overrides}, timeout=timeout
        )
    except NoAnswer:
        raise CheckFailed(
            f"script.{example.script_id} for the missing assistant {MISSING_ASSISTANT!r} "
            f"did not finish within {timeout:.0f} s: it waits instead of saying what is missing"
        ) from None

    def notified() -> dict[str, Any]:
        notification = ha.notifications().get(example.notification_id)
        if notification is None or notification["created_at"] == noted:
            raise NotYet(f"no new notification {example.notification_id!r}")
        return notification

    notification = wait_until(
        f"script.{example.script_id} says the assistant is missing",
        notified,
        MISSING_TIMEOUT,
        watch=watch,
    )
    message = " ".join(str(notification["message"]).split())
    wanted = [
        f"{MISSING_ASSISTANT} is not there",
        "homeassistant.assistants",
        f"assistants: [{MISSING_ASSISTANT}]",
    ]
    if notification["title"] != "OpenAI (not set up)" or not all(w in message for w in wanted):
        raise CheckFailed(f"script.{example.script_id} notified {notification}")
    return message


def bridge_heard_of(path: Path, connection_id: str) -> list[str]:
    """The bridge's log lines about ``connection_id`` (each upstream it opens is logged)."""
    return [
        line
        for line in path.read_text(errors="replace").splitlines()
        if f"[{connection_id}]" in line
    ]


TOOL_QUESTION: Final = 'call read_temperature with {"room":"hall"}'  # the simulator's phrase


def check_tool_loop(ha: HomeAssistant, assistant: dict[str, str], watch: list[Child]) -> str:
    """script.ask_house asks for a tool call; Home Assistant's own automation answers it
    (sensor.hall_temperature); the Answer sensor shows the model quoting the reply."""
    answer_id = assistant["Answer"]
    ha.call_service("script", "ask_house", {"question": TOOL_QUESTION})

    def answered() -> dict[str, Any]:
        answer: dict[str, Any] = (ha.state(answer_id) or {"attributes": {}})["attributes"]
        if not str(answer.get("request_id") or "").startswith("ha-house-"):
            raise NotYet(f"{answer_id} holds no answer to ask_house: {answer}")
        return answer

    answer = wait_until("the tool loop answers ask_house", answered, SCRIPT_TIMEOUT, watch=watch)
    text = str(answer.get("text"))
    if answer.get("status") != "completed" or "read_temperature returned" not in text:
        raise CheckFailed(f"{answer_id}: no answer quoting the tool's reply: {answer}")
    if '"celsius":21.5' not in text.replace(" ", ""):
        raise CheckFailed(f"the automation's reply is not the sensor's value: {text!r}")
    return text


def _last_step(log: Path, script_id: str) -> str:
    """The last step a script logged that it began, from Home Assistant's log."""
    marker = f"[homeassistant.components.script.{script_id}] {script_id}: Executing step "
    steps = [
        line.split(marker, 1)[1]
        for line in log.read_text(errors="replace").splitlines()
        if marker in line
    ]
    return f"the last step it began: {steps[-1]}" if steps else "it logged no step"


def homeassistant_log_problems(path: Path) -> tuple[list[str], list[str]]:
    """(problems, other warnings) in home-assistant.log.

    Every ERROR is a problem; a WARNING is one when it mentions MQTT, the
    bridge, a script, a template or an entity of the kinds the bridge makes.
    """
    problems, others = [], []
    for line in path.read_text(errors="replace").splitlines():
        match = _LOG_LINE.match(line)
        if match is None or any(harmless in line for harmless in HARMLESS):
            continue
        level, logger, message = match[1], match[3], match[4]
        if level != "WARNING" or RELEVANT.search(logger + " " + message):
            problems.append(line)
        else:
            others.append(line)
    return problems, others


def bridge_log_problems(path: Path) -> list[str]:
    """Every WARNING, ERROR or CRITICAL line of the bridge's log (text format)."""
    levels = re.compile(r"^\S+ \S+ (WARNING|ERROR|CRITICAL) ")
    return [line for line in path.read_text(errors="replace").splitlines() if levels.match(line)]
