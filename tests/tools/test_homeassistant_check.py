"""The pure parts of scripts/check-homeassistant (the check itself needs Home Assistant
installed and runs on its own: scripts/check-homeassistant)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.entities import expected_entities, state_problem
from bridge_tools.homeassistant_check.examples import (
    MISSING_ASSISTANT,
    assistant_entity_id,
    bridge_heard_of,
    homeassistant_log_problems,
    load_examples,
    sort_examples,
)
from bridge_tools.homeassistant_check.install import integration_closure
from bridge_tools.homeassistant_check.processes import NotYet, wait_until
from bridge_tools.homeassistant_check.stack import (
    ASSISTANT_ID,
    bridge_config,
    homeassistant_configuration,
)

EXAMPLES = Path(__file__).parents[2] / "examples" / "home-assistant"


def test_the_closure_follows_dependencies_and_collects_requirements(tmp_path: Path) -> None:
    manifests = {
        "mqtt": {"dependencies": ["http"], "requirements": ["paho-mqtt==1.6.1"]},
        "http": {"requirements": ["aiohttp_cors==0.7.0"]},
        "script": {"dependencies": ["trace"]},
        "trace": {},
        "unused": {"requirements": ["nope==1"]},
    }
    for domain, manifest in manifests.items():
        (tmp_path / domain).mkdir()
        (tmp_path / domain / "manifest.json").write_text(json.dumps(manifest))
    domains, requirements = integration_closure(tmp_path, {"mqtt", "script"})
    assert domains == ["http", "mqtt", "script", "trace"]
    assert requirements == ["aiohttp_cors==0.7.0", "paho-mqtt==1.6.1"]
    with pytest.raises(CheckFailed, match="missing"):
        integration_closure(tmp_path, {"missing"})


def test_the_bridge_config_announces_the_devices_the_check_expects() -> None:
    expected = expected_entities(bridge_config("127.0.0.1", 1883, 8000))
    devices = {entity.device for entity in expected}
    assert devices == {"openai-mqtt-bridge", f"Assistant {ASSISTANT_ID}"}
    assert len(expected) == 9


def test_a_sensible_state_is_told_from_a_wrong_one() -> None:
    entities = {
        (entity.device, entity.name): entity
        for entity in expected_entities(bridge_config("127.0.0.1", 1883, 8000))
    }
    status = entities[("openai-mqtt-bridge", "Status")]

    def state(value: str, name: str = "openai-mqtt-bridge Status") -> dict[str, object]:
        return {"state": value, "attributes": {"friendly_name": name}}

    assert state_problem(status, state("on")) is None
    assert state_problem(status, state("off")) == "state 'off'"
    assert state_problem(status, state("on", "Status")) is not None
    assert state_problem(status, None) == "no state"
    tokens = entities[("openai-mqtt-bridge", "Tokens today")]
    assert state_problem(tokens, state("12", "openai-mqtt-bridge Tokens today")) is None
    assert state_problem(tokens, state("unavailable", "openai-mqtt-bridge Tokens today"))
    started = entities[("openai-mqtt-bridge", "Started")]
    assert state_problem(started, state("2001-01-01T00:00:00+00:00", "openai-mqtt-bridge Started"))
    answer = entities[(f"Assistant {ASSISTANT_ID}", "Answer")]
    assert state_problem(answer, state("unknown", f"Assistant {ASSISTANT_ID} Answer")) is None


def test_the_log_check_flags_errors_and_relevant_warnings(tmp_path: Path) -> None:
    log = tmp_path / "home-assistant.log"
    lines = [
        "2024-03-20 10:00:00.000 WARNING (MainThread) [homeassistant.bootstrap] Skipping pip "
        "installation of required modules. This may cause issues",
        "2024-03-20 10:00:00.000 INFO (MainThread) [homeassistant.components.mqtt] fine",
        "2024-03-20 10:00:01.000 WARNING (MainThread) [homeassistant.components.mqtt.discovery] "
        "Invalid discovery payload",
        "2024-03-20 10:00:02.000 ERROR (MainThread) [homeassistant.setup] Setup failed: camera",
        "2024-03-20 10:00:03.000 WARNING (MainThread) [homeassistant.components.zone] far away",
        "Traceback (most recent call last):",
    ]
    log.write_text("\n".join(lines) + "\n")
    problems, others = homeassistant_log_problems(log)
    assert problems == [lines[2], lines[3]]
    assert others == [lines[4]]


def test_the_examples_load_as_scripts_with_one_notification_each() -> None:
    scripts, packages = sort_examples(EXAMPLES)
    assert {path.name for path in scripts} == {"ask_openai.yaml", "ask_openai_entity.yaml"}
    assert EXAMPLES / "ask_openai.yaml" not in packages
    examples = load_examples(scripts)
    assert {example.script_id: example.notification_id for example in examples} == {
        "ask_openai": "ask_openai",
        "ask_openai_entity": "ask_openai_entity",
    }


def test_the_missing_assistant_is_not_the_checks_and_its_entity_ids_are_derived() -> None:
    """The examples run for an id the check's bridge does not announce, with the entity
    ids Home Assistant would give it (as for the one it does announce)."""
    assert (
        MISSING_ASSISTANT
        not in bridge_config("127.0.0.1", 1883, 8000)["homeassistant"]["assistants"]
    )
    examples = load_examples(sort_examples(EXAMPLES)[0])
    answer_sensors = {example.config["variables"]["answer_sensor"] for example in examples}
    assert answer_sensors == {assistant_entity_id("sensor", ASSISTANT_ID, "Answer")}
    assert assistant_entity_id("text", MISSING_ASSISTANT, "Ask") == "text.assistant_garage_ask"


def test_the_bridge_log_tells_which_ids_it_heard_of(tmp_path: Path) -> None:
    log = tmp_path / "bridge.log"
    log.write_text(
        "2024-03-20 10:00:00 INFO [home-assistant] upstream open (12 ms)\n"
        "2024-03-20 10:00:01 INFO [garage-door] upstream open (9 ms)\n"
    )
    assert bridge_heard_of(log, "home-assistant") == [log.read_text().splitlines()[0]]
    assert bridge_heard_of(log, "garage") == []


def test_the_configuration_names_only_installed_integrations() -> None:
    text = homeassistant_configuration(8123)
    assert "server_port: 8123" in text
    assert "default_config" not in text


def test_wait_until_says_what_did_not_happen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TESTS_TIMEOUT_FACTOR", "1")

    def never() -> None:
        raise NotYet("still 'off'")

    with pytest.raises(CheckFailed, match=r"the thing happens: not so after 0 s \(still 'off'\)"):
        wait_until("the thing happens", never, 0.1)
    assert wait_until("at once", lambda: 42, 0.1) == 42
