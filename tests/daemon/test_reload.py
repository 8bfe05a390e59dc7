"""``systemctl reload`` (SIGHUP) on a real Mosquitto: the config read again and applied live,
nothing open dropped; a bad file refused; what needs a restart named (bridge/daemon/reload.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bridge import cli
from bridge.config.settings import load_settings
from bridge.daemon.reload import Reloader
from bridge.daemon.service import Service
from bridge.protocol.usage_documents import MAX_DOCUMENT_BYTES
from bridge_tools.simulator import Simulator
from tests.conftest import KEY, Broker, Client, RunningBridge
from tests.helpers import SECOND
from tests.ops_helpers import NotifySocket, OpsBridge, finish, spawn_daemon

pytestmark = pytest.mark.integration

ENVIRON = {"OPENAI_API_KEY": KEY}


class ConfigFile:
    """The bridge's config file, which a test rewrites before it reloads."""

    def __init__(self, tmp_path: Path, broker: Broker, simulator: Simulator) -> None:
        self.path = tmp_path / "bridge.yaml"
        self.document: dict[str, Any] = {
            "state_dir": str(tmp_path / "state"),
            "mqtt": {
                "host": broker.host,
                "port": broker.port,
                "client_id": f"bridge-{uuid.uuid4().hex[:8]}",
                "keepalive": 5,
            },
            "openai": {"base_url": simulator.base_url, "close_timeout": 2 * SECOND},
            "shutdown": {"grace_seconds": 5 * SECOND},
            "profiles": {"default": {"request": {"model": "m-before"}}},
        }
        self.write()

    def write(self, **sections: Any) -> None:
        self.document.update(sections)
        self.path.write_text(json.dumps(self.document))


@pytest.fixture
def config_file(tmp_path: Path, broker: Broker, simulator: Simulator) -> ConfigFile:
    return ConfigFile(tmp_path, broker, simulator)


@asynccontextmanager
async def running(config: ConfigFile) -> AsyncIterator[tuple[Service, Reloader]]:
    service = Service(load_settings(config.path, ENVIRON))
    bridge = RunningBridge(service)
    try:
        await bridge.ready()
        yield service, Reloader(service, config.path, ENVIRON)
    finally:
        await bridge.stop()


async def ask(client: Client, connection_id: str, text: str, **fields: Any) -> list[dict[str, Any]]:
    await client.command(connection_id, {"action": "ask", "input": text, **fields})
    return await client.until(lambda m: m.get("type") == "response.completed")


def records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name == "bridge.daemon.reload" and record.levelno == level
    ]


async def test_profiles_and_limits_change_live_and_nothing_open_is_dropped(
    config_file: ConfigFile, broker: Broker, simulator: Simulator, client: Client
) -> None:
    """A new profile is usable at once; an open connection and its conversation go on."""
    async with running(config_file) as (service, reloader):
        first = await ask(client, "c1", "Describe tulips.")
        await client.command("c2", {"action": "ask", "input": "Ahoy?", "profile": "pirate"})
        refused = await client.next_json()
        assert refused["error"]["code"] == "unknown_profile"

        config_file.write(
            profiles={
                "default": {"request": {"model": "m-after"}},
                "pirate": {"request": {"model": "m-pirate", "instructions": "Talk like one."}},
            },
            limits={"max_connections": 2},
        )
        assert reloader.reload()

        pirate = await ask(client, "c2", "Ahoy?", profile="pirate")
        assert (pirate[0]["action"], pirate[0]["profile"]) == ("connect", "pirate")
        assert simulator.received[-1].json()["model"] == "m-pirate"
        # c1 was open all along: the next turn goes on the same socket, from the last answer.
        again = await ask(client, "c1", "And roses?")
        assert again[0]["action"] == "ask"  # no connect: the socket stayed open
        request = simulator.received[-1].json()
        assert request["previous_response_id"] == first[-1]["response"]["id"]
        assert request["model"] == "m-after"  # the profile as it is now
        assert simulator.closes == []
        assert not any(m.get("action") == "disconnected" for m in first + pirate + again)
        # limits.max_connections is 2 now: c1 and c2 are open, a third is refused.
        await client.command("c3", {"action": "connect"})
        refused = await client.next_json()
        assert refused["error"]["code"] == "limit_reached"
        assert service.connection_count == 2


async def test_a_bad_file_is_refused_with_one_error_and_the_running_config_kept(
    config_file: ConfigFile, broker: Broker, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with running(config_file) as (_, reloader):
        config_file.write(
            profiles={
                "default": {"request": {"model": "m-after"}},
                "pirate": {"request": {"model": "m-pirate"}, "colour": "red"},
            }
        )
        assert not reloader.reload()
        (error,) = records(caplog, logging.ERROR)
        assert "profiles.pirate.colour: unknown key" in error
        assert "running config is kept" in error
        assert records(caplog, logging.WARNING) == []

        config_file.path.write_text("profiles: [unclosed\n")
        assert not reloader.reload()
        assert len(records(caplog, logging.ERROR)) == 2
        assert f"{config_file.path} is not valid YAML" in records(caplog, logging.ERROR)[1]

        answer = await ask(client, "c1", "Describe tulips.")
        assert answer[0]["profile"] == "default"
        await client.command("c2", {"action": "ask", "input": "Ahoy?", "profile": "pirate"})
        assert (await client.next_json())["error"]["code"] == "unknown_profile"
        assert not any("config reloaded" in text for text in records(caplog, logging.INFO))


async def test_a_restart_only_change_is_named_in_one_warning_and_the_rest_applied(
    config_file: ConfigFile,
    broker: Broker,
    simulator: Simulator,
    client: Client,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    async with running(config_file) as (service, _):
        running_mqtt = service.settings.config.mqtt
        config_file.write(
            mqtt={**config_file.document["mqtt"], "keepalive": 30, "topic_prefix": "house"},
            openai={**config_file.document["openai"], "open_timeout": 3},
            profiles={
                "default": {"request": {"model": "m-before"}},
                "pirate": {"request": {"model": "m-pirate"}},
            },
            logging={"level": "DEBUG"},
        )
        # Another key in the environment too: where the key comes from is fixed at start.
        reloader = Reloader(service, config_file.path, {"OPENAI_API_KEY": "sk-another-key-0000"})
        assert reloader.reload()
        (warning,) = records(caplog, logging.WARNING)
        assert "a restart is needed to apply" in warning
        for name in ("mqtt.keepalive", "mqtt.topic_prefix", "openai.open_timeout", "the API key"):
            assert name in warning
        assert "sk-another" not in caplog.text
        assert records(caplog, logging.ERROR) == []
        assert service.settings.config.mqtt == running_mqtt
        assert logging.getLogger().level == logging.DEBUG

        # The rest applies, over the running broker link, prefix and key.
        pirate = await ask(client, "c1", "Ahoy?", profile="pirate")
        assert pirate[0]["profile"] == "pirate"
        assert simulator.handshakes[-1].header("Authorization") == f"Bearer {KEY}"


async def test_a_reload_keeps_room_for_other_instances_usage_documents(
    config_file: ConfigFile,
) -> None:
    """The broker's packet limit after a reload is the start's: a small max_command_bytes
    never shuts out the usage documents of other instances (up to MAX_DOCUMENT_BYTES)."""
    config_file.write(limits={"max_command_bytes": 1024})
    async with running(config_file) as (service, reloader):
        at_start = service.link.max_packet_bytes
        assert at_start is not None
        assert at_start > MAX_DOCUMENT_BYTES
        config_file.write(limits={"max_command_bytes": 2048})
        assert reloader.reload()
        assert service.link.max_packet_bytes == at_start  # 2 x 2 KiB is still below the document


async def test_discovery_is_published_again_and_what_it_no_longer_names_removed(
    config_file: ConfigFile, broker: Broker
) -> None:
    """homeassistant.discovery turned on live, an assistant added, then turned off again."""
    settings = load_settings(config_file.path, ENVIRON)
    async with OpsBridge(settings) as ops, Client(broker) as watcher:
        assert ops.bridge is not None
        reloader = Reloader(ops.service, config_file.path, ENVIRON, ops.ops)
        await watcher.subscribe("homeassistant/#")
        config_file.write(homeassistant={"discovery": True, "assistants": ["kitchen"]})
        assert reloader.reload()
        expected = {topic for topic, _ in ops.ops.discovery}
        assert any("kitchen" in topic for topic in expected)
        announced = await configs(watcher, lambda topics: expected <= topics)
        assert all(payload for payload in announced.values())
        info = json.loads(ops.ops.info_payload(ops.service))
        assert info["assistants"] == {"kitchen": {"tokens_today": 0}}  # the day's, from now
        config_file.write(homeassistant={"discovery": False})
        assert reloader.reload()
        retracted = await configs(watcher, lambda topics: set(announced) <= topics)
        assert set(retracted) == set(announced)
        assert not any(retracted.values())  # empty retained: Home Assistant drops the entities
        assert json.loads(ops.ops.info_payload(ops.service))["assistants"] == {}


async def configs(watcher: Client, enough: Any, wait: float = 10) -> dict[str, bytes]:
    """Discovery config messages (topic → payload) until ``enough(topics)``."""
    seen: dict[str, bytes] = {}
    deadline = asyncio.get_running_loop().time() + wait * SECOND
    while not enough(set(seen)):
        left = deadline - asyncio.get_running_loop().time()
        message = await watcher.next(max(left, 0) / SECOND)
        assert isinstance(message.payload, bytes)
        if message.topic.value.endswith("/config"):
            seen[message.topic.value] = message.payload
    return seen


async def test_sighup_reloads_the_daemon_and_systemd_hears_it(
    config_file: ConfigFile, broker: Broker, simulator: Simulator, client: Client
) -> None:
    """The signal `systemctl reload` sends (ExecReload=): RELOADING=1, then READY=1."""
    notify = NotifySocket()
    process = spawn_daemon(config_file.path, NOTIFY_SOCKET=notify.path)
    try:
        await notify.until(lambda m: m.startswith("READY=1"), 20)
        profile = {"request": {"model": "m-pirate"}}
        config_file.write(profiles={**config_file.document["profiles"], "pirate": profile})
        process.send_signal(signal.SIGHUP)
        said = await notify.until(lambda m: m == "READY=1")
        assert any(m.startswith("RELOADING=1\nMONOTONIC_USEC=") for m in said)
        pirate = await ask(client, "c1", "Ahoy?", profile="pirate")
        assert pirate[0]["profile"] == "pirate"
        process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(process.wait, 15 * SECOND)
    finally:
        notify.close()
        code, stderr = finish(process)
    assert code == cli.EXIT_OK, stderr
    assert "config reloaded from" in stderr
    assert "profiles changed" in stderr
