"""Unit tests of config parsing, secrets resolution and the redacted dump."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

from bridge.config.dump import redacted_dump
from bridge.config.settings import load_settings, parse_config
from bridge.errors import ConfigError

KEY = "sk-test-config-0123456789"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_defaults() -> None:
    """An empty file gives the documented defaults."""
    config = parse_config(None)
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.topic_prefix) == (
        "127.0.0.1",
        1883,
        "ai",
    )
    assert (config.mqtt.qos, config.mqtt.protocol) == (1, "5")
    assert config.openai.base_url == "https://api.openai.com/v1"
    assert config.limits.max_command_bytes == 1024 * 1024
    assert config.limits.allowed_event_types == ("response.create",)


def test_example_config_is_valid() -> None:
    """config.example.yaml validates and shows every key of the model."""
    path = Path(__file__).parents[2] / "config.example.yaml"
    settings = load_settings(path, {})
    document = yaml.safe_load(path.read_text())
    for section, model in settings.config:
        if not isinstance(model, dict | BaseModel):  # a top-level value (state_dir)
            assert section in document, f"{section}: not shown in the example"
            continue
        shown = set(document[section])
        if isinstance(model, dict):  # profiles: a name for each
            assert set(model) <= shown
            continue
        fields = set(type(model).model_fields)
        assert fields <= shown, f"{section}: not shown in the example: {fields - shown}"


def test_a_profiles_section_keeps_the_built_in_default(tmp_path: Path) -> None:
    """`profiles:` with one profile adds it: `default` stays the built-in one,
    check-config shows it (from the defaults), and only naming it replaces it."""
    config = write(
        tmp_path,
        "profiles:\n  kitchen:\n    request: {model: gpt-5.4-mini}\n"
        "sessions:\n  profile_by_id: {kitchen-*: kitchen}\n",
    )
    settings = load_settings(config, {})
    built_in = parse_config(None).profiles["default"]
    assert built_in.request == {"model": "gpt-5.4-nano", "store": False}
    assert settings.config.profiles["default"] == built_in
    assert settings.config.profiles["kitchen"].request == {"model": "gpt-5.4-mini"}
    dump = redacted_dump(settings)
    assert yaml.safe_load(dump)["profiles"]["default"]["request"] == built_in.request
    model_lines = [line for line in dump.splitlines() if "model: gpt-5.4-nano" in line]
    assert len(model_lines) == 1
    assert model_lines[0].endswith("# (default)")
    replaced = parse_config({"profiles": {"default": {"request": {"model": "m"}}}})
    assert set(replaced.profiles) == {"default"}
    assert replaced.profiles["default"].request == {"model": "m"}


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        ("mqtt:\n  prot: 1883\n", "mqtt.prot", "unknown key"),
        ("mqtt:\n  port: 70000\n", "mqtt.port", "less than or equal"),
        ("mqtt:\n  topic_prefix: ai/#\n", "mqtt.topic_prefix", "wildcards"),
        ("mqtt:\n  qos: 3\n", "mqtt.qos", "Input should be"),
        ("openai:\n  base_url: ftp://x\n", "openai.base_url", "scheme"),
        ("openai:\n  api_key: sk-in-yaml\n", "openai.api_key", "unknown key"),
        ("limits:\n  max_connections: 0\n", "limits.max_connections", "greater than"),
        ("surprise: {}\n", "surprise", "unknown key"),
        ("- a list\n", "", "mapping"),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, where: str, what: str) -> None:
    """Each problem is one error naming the dotted key and what is wrong."""
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert info.value.path == where
    assert what in info.value.message


def test_unreadable_yaml(tmp_path: Path) -> None:
    """Broken YAML and a missing file are config errors, not tracebacks."""
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "mqtt: [\n"), {})
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml", {})


def test_api_key_sources_in_order(tmp_path: Path) -> None:
    """api_key_file beats the systemd credential, which beats OPENAI_API_KEY."""
    env_only = load_settings(None, {"OPENAI_API_KEY": KEY})
    assert env_only.api_key is not None
    assert (env_only.api_key.value, env_only.api_key.source) == (KEY, "environment OPENAI_API_KEY")

    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "openai_api_key").write_text("sk-from-credential\n")
    from_creds = load_settings(None, {"OPENAI_API_KEY": KEY, "CREDENTIALS_DIRECTORY": str(creds)})
    assert from_creds.api_key is not None
    assert from_creds.api_key.value == "sk-from-credential"

    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file\n")
    config = write(tmp_path, f"openai:\n  api_key_file: {key_file}\n")
    from_file = load_settings(config, {"CREDENTIALS_DIRECTORY": str(creds)})
    assert from_file.api_key is not None
    assert from_file.api_key.value == "sk-from-file"


def test_missing_key_file_is_a_config_error(tmp_path: Path) -> None:
    """A named key file that cannot be read stops startup with the key's name."""
    config = write(tmp_path, f"openai:\n  api_key_file: {tmp_path / 'nope'}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(config, {})
    assert info.value.path == "openai.api_key_file"


def test_redacted_dump_hides_secrets(tmp_path: Path) -> None:
    """check-config output shows where secrets come from, never their values."""
    config = write(
        tmp_path,
        "mqtt:\n  password: hunter2-pw\nopenai:\n  headers: {X-Api-Token: tok-123, X-Plain: ok}\n"
        "  api_key_query_param: code\n",
    )
    settings = load_settings(config, {"OPENAI_API_KEY": KEY})
    dump = redacted_dump(settings)
    for secret in (KEY, "hunter2-pw", "tok-123"):
        assert secret not in dump
    document = yaml.safe_load(dump)
    assert document["openai"]["api_key"] == "REDACTED (from environment OPENAI_API_KEY)"
    assert document["openai"]["headers"] == {"X-Api-Token": "REDACTED", "X-Plain": "ok"}
    assert document["openai"]["websocket_url"].endswith("code=REDACTED")
    assert document["mqtt"]["password"] == "REDACTED (from config file)"


@pytest.mark.parametrize(
    "cluster",
    [{"instance": "bridge-a"}, {"claim_window": 1.0}, {"enabled": False, "instance": "b"}],
)
def test_cluster_keys_without_cluster_enabled_are_an_error_that_says_what_to_add(
    tmp_path: Path, cluster: dict[str, object]
) -> None:
    """A bridge must not run standalone while its owner believes it is one of several."""
    path = tmp_path / "c.yaml"
    path.write_text(json.dumps({"cluster": cluster}))
    with pytest.raises(ConfigError, match=r"add `enabled: true`") as raised:
        load_settings(path, {})
    assert raised.value.path.startswith("cluster")
    # The roll call alone is every bridge's, and the defaults stated are no error.
    path.write_text(json.dumps({"cluster": {"roll_call": 2, "instance": None}}))
    assert load_settings(path, {}).config.cluster.roll_call == 2
    path.write_text(json.dumps({"cluster": {**cluster, "enabled": True}}))
    assert load_settings(path, {}).config.cluster.enabled
