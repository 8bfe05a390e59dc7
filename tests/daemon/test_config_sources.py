"""Secrets and config: environment overrides for any key, every secret from a file, the
environment or a systemd credential, and check-config saying where each value came from."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import trustme
import yaml

from bridge.cli import EXIT_CONFIG, main
from bridge.config.dump import redacted_dump
from bridge.config.settings import load_settings
from bridge.errors import ConfigError

KEY = "sk-ops-config-canary-0123456789"
PASSWORD = "broker-password-canary-42"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_environment_overrides_any_key_and_wins_over_the_file(tmp_path: Path) -> None:
    """OPENAI_MQTT_BRIDGE__<SECTION>__<KEY> sets a key of any depth, as a YAML value."""
    config = write(tmp_path, "mqtt:\n  port: 1884\n  qos: 2\n")
    environ = {
        "OPENAI_MQTT_BRIDGE__MQTT__PORT": "8883",
        "openai_mqtt_bridge__mqtt__tls__insecure": "true",  # any case
        "OPENAI_MQTT_BRIDGE__LIMITS__ALLOWED_EVENT_TYPES": "[response.create, response.cancel]",
        "OPENAI_MQTT_BRIDGE__OPENAI__HEADERS": "{OpenAI-Beta: responses_websockets=2026-02-06}",
        "OPENAI_MQTT_BRIDGE__MQTT__USERNAME": "",  # empty: null
        "OPENAI_MQTT_BRIDGE__LOGGING__FORMAT": "json",
    }
    settings = load_settings(config, environ)
    mqtt = settings.config.mqtt
    assert (mqtt.port, mqtt.qos, mqtt.tls.insecure, mqtt.username) == (8883, 2, True, None)
    assert settings.config.limits.allowed_event_types == ("response.create", "response.cancel")
    assert settings.config.openai.headers == {"OpenAI-Beta": "responses_websockets=2026-02-06"}
    assert settings.config.logging.format == "json"


@pytest.mark.parametrize(
    ("name", "value", "where", "what"),
    [
        ("OPENAI_MQTT_BRIDGE__MQTT__PROT", "1", "mqtt.prot", "unknown key"),
        ("OPENAI_MQTT_BRIDGE__MQTT__PORT", "many", "mqtt.port", "valid integer"),
        ("OPENAI_MQTT_BRIDGE__MQTT__PORT", "[1", "mqtt.port", "expected"),
        ("OPENAI_MQTT_BRIDGE__MQTT__PORT__X", "1", "mqtt.port", "valid integer"),
        ("OPENAI_MQTT_BRIDGE__MQTT__QOS__X", "1", "mqtt.qos", "Input should be 0, 1 or 2"),
        ("OPENAI_MQTT_BRIDGE__MQTT____PORT", "1", "", "name the key"),
        ("OPENAI_MQTT_BRIDGE__METRICS__PORT", "0", "metrics.port", "greater than"),
    ],
)
def test_a_bad_override_names_the_key_and_the_variable(
    name: str, value: str, where: str, what: str
) -> None:
    """An override obeys the same rules as the file; the error names the variable."""
    with pytest.raises(ConfigError) as info:
        load_settings(None, {name: value})
    assert info.value.path == where
    assert what in info.value.message
    assert name in str(info.value)


def test_an_override_below_a_value_from_the_file_is_refused(tmp_path: Path) -> None:
    """A key below one the file sets to a value is an error naming both."""
    with pytest.raises(ConfigError) as info:
        load_settings(
            write(tmp_path, "mqtt:\n  port: 1884\n"), {"OPENAI_MQTT_BRIDGE__MQTT__PORT__X": "1"}
        )
    assert info.value.path == "mqtt.port"
    assert "is not a section" in info.value.message
    assert "OPENAI_MQTT_BRIDGE__MQTT__PORT__X" in info.value.message


def test_check_config_says_where_each_value_came_from(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every value line ends in (from file), (from env NAME) or (default); secrets redacted."""
    config = write(tmp_path, "mqtt:\n  host: broker.lan\n  port: 1884\n")
    monkeypatch.setenv("OPENAI_MQTT_BRIDGE__MQTT__PORT", "8883")
    monkeypatch.setenv("OPENAI_MQTT_BRIDGE__MQTT__PASSWORD", PASSWORD)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    assert main(["check-config", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^  host: broker\.lan +# \(from file\)$", out, re.M)
    assert re.search(r"^  port: 8883 +# \(from env OPENAI_MQTT_BRIDGE__MQTT__PORT\)$", out, re.M)
    assert re.search(r"^  qos: 1 +# \(default\)$", out, re.M)
    assert re.search(r"^  grace_seconds: 10\.0 +# \(default\)$", out, re.M)
    assert KEY not in out
    assert PASSWORD not in out
    document = yaml.safe_load(out)  # still YAML: the notes are comments
    assert document["mqtt"]["port"] == 8883
    assert document["mqtt"]["host"] == "broker.lan"
    assert document["mqtt"]["password"] == (
        "REDACTED (from environment OPENAI_MQTT_BRIDGE__MQTT__PASSWORD)"
    )
    assert document["openai"]["api_key"] == "REDACTED (from environment OPENAI_API_KEY)"
    for line in out.splitlines():
        if not line.rstrip().endswith(":"):  # every value, not the section headers
            assert re.search(r"  # \((from |default|secret|derived)", line), line


@pytest.mark.parametrize("source", ["file key", "environment", "credential", "override"])
def test_broker_password_from_each_source(tmp_path: Path, capsys: Any, source: str) -> None:
    """The broker password comes from a *_file key, the environment or a systemd credential."""
    environ: dict[str, str] = {}
    text = ""
    if source == "file key":
        (tmp_path / "pw").write_text(PASSWORD + "\n")
        text = f"mqtt:\n  password_file: {tmp_path / 'pw'}\n"
        expected = f"file {tmp_path / 'pw'}"
    elif source == "environment":
        environ["MQTT_PASSWORD"] = PASSWORD
        expected = "environment MQTT_PASSWORD"
    elif source == "credential":
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "mqtt_password").write_text(PASSWORD)
        environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
        expected = "systemd credential mqtt_password"
    else:
        environ["OPENAI_MQTT_BRIDGE__MQTT__PASSWORD"] = PASSWORD
        expected = "environment OPENAI_MQTT_BRIDGE__MQTT__PASSWORD"
    settings = load_settings(write(tmp_path, text), environ)
    assert settings.mqtt_password is not None
    assert (settings.mqtt_password.value, settings.mqtt_password.source) == (PASSWORD, expected)
    dump = redacted_dump(settings)
    assert PASSWORD not in dump
    assert f"password: REDACTED (from {expected})" in dump


@pytest.mark.parametrize("source", ["file key", "environment", "credential", "override"])
def test_api_key_from_each_source(tmp_path: Path, source: str) -> None:
    """The API key comes from a *_file key, the environment or a systemd credential."""
    environ: dict[str, str] = {}
    if source == "file key":
        (tmp_path / "key").write_text(KEY)
        environ["OPENAI_MQTT_BRIDGE__OPENAI__API_KEY_FILE"] = str(tmp_path / "key")
        expected = f"file {tmp_path / 'key'}"
    elif source == "environment":
        environ["OPENAI_API_KEY"] = KEY
        expected = "environment OPENAI_API_KEY"
    elif source == "credential":
        (tmp_path / "creds").mkdir()
        (tmp_path / "creds" / "openai_api_key").write_text(KEY + "\n")
        environ["CREDENTIALS_DIRECTORY"] = str(tmp_path / "creds")
        expected = "systemd credential openai_api_key"
    else:
        with pytest.raises(ConfigError, match="unknown key"):  # never a plain config value
            load_settings(None, {"OPENAI_MQTT_BRIDGE__OPENAI__API_KEY": KEY})
        return
    settings = load_settings(None, environ)
    assert settings.api_key is not None
    assert (settings.api_key.value, settings.api_key.source) == (KEY, expected)
    assert KEY not in redacted_dump(settings)


def test_tls_client_key_from_a_systemd_credential(tmp_path: Path) -> None:
    """With a client certificate and no key_file, the key is the credential mqtt_tls_key."""
    ca = trustme.CA()
    leaf = ca.issue_cert("bridge.client.test")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "client.pem"))
    credentials = tmp_path / "creds"
    credentials.mkdir()
    leaf.private_key_pem.write_to_path(str(credentials / "mqtt_tls_key"))
    text = (
        "mqtt:\n  tls:\n    enabled: true\n"
        f"    ca_file: {tmp_path / 'ca.pem'}\n    cert_file: {tmp_path / 'client.pem'}\n"
    )
    settings = load_settings(write(tmp_path, text), {"CREDENTIALS_DIRECTORY": str(credentials)})
    assert settings.mqtt_tls is not None
    assert settings.mqtt_tls_key is not None
    assert settings.mqtt_tls_key.source == "systemd credential mqtt_tls_key"
    dump = redacted_dump(settings)
    assert "# (from systemd credential mqtt_tls_key)" in dump
    assert "PRIVATE KEY" not in dump
    # Without the credential the certificate alone has no key: a config error naming it.
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text), {})
    assert info.value.path == "mqtt.tls.cert_file"


@pytest.mark.parametrize(
    ("tls", "where"),
    [
        ({"ca_file": "/nonexistent/ca.pem"}, "mqtt.tls.ca_file"),
        ({"key_file": "/nonexistent/key.pem"}, "mqtt.tls.key_file"),
    ],
)
def test_tls_file_problems_are_config_errors(
    tmp_path: Path, capsys: Any, tls: dict[str, str], where: str
) -> None:
    """A TLS file that cannot be used stops check-config and run with exit 78, naming the key."""
    lines = "".join(f"    {key}: {value}\n" for key, value in tls.items())
    config = write(tmp_path, f"mqtt:\n  tls:\n    enabled: true\n{lines}")
    assert main(["check-config", "--config", str(config)]) == EXIT_CONFIG
    assert capsys.readouterr().err.startswith(f"config error: {where}: ")


def test_tls_is_off_unless_enabled_and_verifies_by_default() -> None:
    """No TLS context by default; enabled, it checks the chain and the host name."""
    assert load_settings(None, {}).mqtt_tls is None
    settings = load_settings(None, {"OPENAI_MQTT_BRIDGE__MQTT__TLS__ENABLED": "true"})
    context = settings.mqtt_tls
    assert context is not None
    assert context.check_hostname is True
    assert context.verify_mode.name == "CERT_REQUIRED"
