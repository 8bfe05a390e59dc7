"""The services of the check: their configuration files, and starting them.

Mosquitto (:class:`LocalMosquitto`), the simulator and the bridge (each
``python -m bridge ...`` as a user would run them) and Home Assistant
(``hass --skip-pip``), all on free ports of 127.0.0.1.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import threading
import uuid
from pathlib import Path
from typing import Any, Final

import paho.mqtt.client as mqtt
import yaml
from paho.mqtt.enums import CallbackAPIVersion

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.client import ApiError, HomeAssistant, NoAnswer
from bridge_tools.homeassistant_check.install import CONFIGURED, Installed
from bridge_tools.homeassistant_check.processes import Child, Children, NotYet, wait_until
from bridge_tools.local_broker import LocalMosquitto, free_port, is_listening

ASSISTANT_ID: Final = "home-assistant"  # the id the examples ask on (ai/home-assistant/cmd)
TOPIC_PREFIX: Final = "ai"
START_TIMEOUT: Final = 60.0
TOOLS_EXAMPLE: Final = Path(__file__).parents[2] / "examples" / "tools" / "bridge-config.yaml"


# The `homeassistant:` section both modes write: a place, a zone, no network lookups.
CORE: Final = """\
homeassistant:
  name: openai-mqtt-bridge check
  latitude: 52.37
  longitude: 4.89
  elevation: 0
  unit_system: metric
  time_zone: UTC
  currency: EUR
  country: NL
"""


def start_broker_and_simulator(
    run_dir: Path, children: Children, brokers: list[LocalMosquitto]
) -> tuple[LocalMosquitto, Child, int]:
    """A private Mosquitto (stopped by whoever holds ``brokers``) and the simulator: the
    broker, the simulator's process and its port."""
    broker_dir = run_dir / "mosquitto"
    broker_dir.mkdir()
    broker = LocalMosquitto(broker_dir)
    brokers.append(broker)
    broker.start()
    simulator, simulator_port = start_simulator(children)
    return broker, simulator, simulator_port


def bridge_config(broker_host: str, broker_port: int, simulator_port: int) -> dict[str, Any]:
    """The bridge's config: the private broker, the simulator, discovery and one assistant,
    with the tools, profiles and sessions of examples/tools/bridge-config.yaml."""
    tools_example = yaml.safe_load(TOOLS_EXAMPLE.read_text())
    return {
        "mqtt": {"host": broker_host, "port": broker_port, "topic_prefix": TOPIC_PREFIX},
        "openai": {"base_url": f"http://127.0.0.1:{simulator_port}/v1"},
        "homeassistant": {"discovery": True, "assistants": [ASSISTANT_ID]},
        "shutdown": {"grace_seconds": 3},
        **{key: tools_example[key] for key in ("tools", "profiles", "sessions")},
    }


def homeassistant_configuration(http_port: int) -> str:
    """configuration.yaml: the least Home Assistant needs, with the examples.

    The examples in scripts.yaml form are included as scripts, the others (with
    top-level keys such as ``automation:``) as packages.
    No ``default_config:`` (it would pull in integrations that want the network
    or more packages); ``mqtt:`` is set up through the UI's config flow, as
    Home Assistant 2024.3 wants it.
    """
    text = f"""\
# Written by scripts/check-homeassistant.
{CORE}  packages: !include_dir_named packages
http:
  server_host: 127.0.0.1
  server_port: {http_port}
logger:
  default: info
script: !include_dir_merge_named scripts
# What examples/home-assistant/tools.yaml's automation reads for read_temperature.
template:
  - sensor:
      - name: Hall temperature
        unique_id: check_hall_temperature
        unit_of_measurement: "°C"
        state: "21.5"
"""
    keys = set(re.findall(r"^(\w+):", text, re.MULTILINE)) - {"homeassistant"}
    assert keys <= set(CONFIGURED), "install.CONFIGURED lists what is installed for"
    return text


def write_homeassistant_config(config_dir: Path, http_port: int) -> None:
    """The configuration directory, with empty scripts/ and packages/."""
    for folder in ("scripts", "packages"):
        (config_dir / folder).mkdir(parents=True)
    (config_dir / "configuration.yaml").write_text(homeassistant_configuration(http_port))


def add_examples(config_dir: Path, scripts: list[Path], packages: list[Path]) -> None:
    """The examples copied into the configuration's scripts/ and packages/."""
    for folder, examples in (("scripts", scripts), ("packages", packages)):
        for example in examples:
            shutil.copy(example, config_dir / folder / example.name)


def start_simulator(children: Children) -> tuple[Child, int]:
    port = free_port()
    child = children.start(
        "simulator",
        [sys.executable, "-m", "bridge", "simulate", "--host", "127.0.0.1", "--port", str(port)],
    )

    def listening() -> None:
        if not is_listening("127.0.0.1", port, timeout=0.2):
            raise NotYet(f"nothing listens on port {port}")

    wait_until("the simulator listens", listening, START_TIMEOUT, watch=[child])
    return child, port


def start_bridge(
    children: Children, run_dir: Path, config: dict[str, Any], name: str = "bridge"
) -> Child:
    path = run_dir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    # The simulator takes any key; with one the bridge has nothing to warn about.
    env = {**os.environ, "OPENAI_API_KEY": "sk-simulator"}
    child = children.start(
        name, [sys.executable, "-m", "bridge", "run", "--config", str(path)], env=env
    )
    mqtt_config = config["mqtt"]
    state_topic = f"{mqtt_config.get('topic_prefix', TOPIC_PREFIX)}/bridge/state"
    wait_until(
        f"the bridge says online on {state_topic}",
        lambda: _retained_online(mqtt_config["host"], mqtt_config["port"], state_topic),
        START_TIMEOUT,
        watch=[child],
    )
    return child


def _retained_online(host: str, port: int, topic: str) -> None:
    """Whether the retained message on ``topic`` is ``online`` (else :class:`NotYet`)."""
    received: list[bytes] = []
    got = threading.Event()

    def on_message(_client: mqtt.Client, _userdata: object, message: mqtt.MQTTMessage) -> None:
        received.append(bytes(message.payload))
        got.set()

    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=f"homeassistant-check-{uuid.uuid4().hex[:8]}"
    )
    client.on_message = on_message
    try:
        client.connect(host, port)
        client.subscribe(topic, qos=1)
        client.loop_start()
        got.wait(1.0)
    except OSError as exc:
        raise NotYet(f"broker: {exc}") from None
    finally:
        client.loop_stop()
        client.disconnect()
    if received != [b"online"]:
        raise NotYet(f"{topic} holds {received[-1] if received else 'nothing'!r}")


def start_homeassistant(
    children: Children,
    installed: Installed,
    config_dir: Path,
    ha: HomeAssistant,
    name: str = "homeassistant",
) -> Child:
    """``hass`` on ``config_dir``, once it answers: onboarding open, or (with a token) the API."""
    child = children.start(name, [str(installed.hass), "-c", str(config_dir), "--skip-pip"])

    def answers() -> None:
        try:
            if ha.token is not None:
                ha.request("GET", "/api/")
                return
            steps = ha.request("GET", "/api/onboarding")
        except (ApiError, NoAnswer) as exc:
            raise NotYet(str(exc)) from None
        if not any(step["step"] == "user" and not step["done"] for step in steps):
            raise CheckFailed(f"Home Assistant is onboarded already: {steps}")

    wait_until("Home Assistant answers on HTTP", answers, START_TIMEOUT * 2, watch=[child])
    return child
