"""Canary secrets where they are not named like secrets: every output is scrubbed by value.

The bridge knows its secrets (the API key, the broker password, the password
in ``openai.base_url``, credential headers and query values), so it looks for
them, and their encodings, in everything it prints, logs or publishes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from bridge.cli import main
from bridge.config.endpoint import build_endpoint
from bridge.config.settings import Settings, load_settings
from bridge.daemon import logs
from bridge.errors import ConfigError
from bridge.ops.info import Tally, info_document
from bridge.protocol.redaction import encodings
from bridge.protocol.shared_usage import SharedUsage
from bridge.upstream.connection import Upstream, upstream_error
from bridge_tools.simulator import Simulator, SimulatorOptions
from tests.conftest import KEY as BRIDGE_KEY
from tests.conftest import Broker, Client
from tests.helpers import SECOND

KEY = "sk-canary-key-0123456789abcdefXYZ"
USERINFO_PASSWORD = "userinfo-canary-Qm7Zx2"  # not key-shaped: only its value betrays it
PASSWORD = "broker-canary-Lp4Wn8"
BASE_URL = "https://gw.example/v1"


def basic(user: str, password: str) -> str:
    return base64.b64encode(f"{user}:{password}".encode()).decode()


# User info in base_url is sent as Authorization: Basic; the key then goes in a header of its own.
KEY_HEADER = {"OPENAI_MQTT_BRIDGE__OPENAI__AUTH_HEADER": "X-Upstream"}


def settings_for(base_url: str, **environ: str) -> Settings:
    return load_settings(
        None,
        {
            "OPENAI_API_KEY": KEY,
            "OPENAI_MQTT_BRIDGE__OPENAI__BASE_URL": base_url,
            **KEY_HEADER,
            **environ,
        },
    )


def check_config(capsys: Any, monkeypatch: pytest.MonkeyPatch, base_url: str) -> str:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("MQTT_PASSWORD", PASSWORD)
    monkeypatch.setenv("OPENAI_MQTT_BRIDGE__OPENAI__BASE_URL", base_url)
    for name, value in KEY_HEADER.items():
        monkeypatch.setenv(name, value)
    assert main(["check-config"]) == 0
    captured = capsys.readouterr()
    return str(captured.out + captured.err)


# check-config ---------------------------------------------------------------------------


def test_check_config_hides_the_password_of_base_url_user_info(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """base_url with user:password: the password is a secret, shown REDACTED everywhere."""
    out = check_config(capsys, monkeypatch, f"http://u:{USERINFO_PASSWORD}@gw.example/v1")
    assert USERINFO_PASSWORD not in out
    document = yaml.safe_load(out)
    assert document["openai"]["base_url"] == "http://REDACTED@gw.example/v1"
    assert document["openai"]["websocket_url"] == "ws://REDACTED@gw.example/v1/responses"


def test_check_config_hides_the_key_in_a_query_parameter_of_any_name(
    capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """?foo=<the API key>: `foo` does not look like a credential, its value is one."""
    out = check_config(capsys, monkeypatch, f"{BASE_URL}?foo={KEY}&bar={PASSWORD}&v=1")
    assert KEY not in out
    assert PASSWORD not in out
    document = yaml.safe_load(out)
    assert document["openai"]["base_url"] == f"{BASE_URL}?foo=REDACTED&bar=REDACTED&v=1"
    assert document["openai"]["websocket_url"] == (
        "wss://gw.example/v1/responses?foo=REDACTED&bar=REDACTED&v=1"
    )


def test_user_info_without_a_password_is_refused() -> None:
    """A key as the user name (https://KEY@host) would be sent as Basic auth: refused, unshown."""
    with pytest.raises(ConfigError) as info:
        settings_for(f"https://{USERINFO_PASSWORD}@gw.example/v1")
    assert info.value.path == "openai.base_url"
    assert "user name and a password" in info.value.message
    assert USERINFO_PASSWORD not in str(info.value)


@pytest.mark.parametrize(
    "environ",
    [{}, {"OPENAI_MQTT_BRIDGE__OPENAI__HEADERS": "{authorization: Token x}"}],
)
def test_user_info_and_a_second_authorization_header_are_refused(environ: dict[str, str]) -> None:
    """Basic auth from user info and the key (or a configured header) cannot share Authorization."""
    url = f"https://u:{USERINFO_PASSWORD}@gw.example/v1"
    variables = {"OPENAI_MQTT_BRIDGE__OPENAI__BASE_URL": url, **environ}
    if not environ:
        variables["OPENAI_API_KEY"] = KEY
    with pytest.raises(ConfigError) as info:
        load_settings(None, variables)
    assert info.value.path == "openai.base_url"
    assert "second Authorization header" in info.value.message
    assert USERINFO_PASSWORD not in str(info.value)
    assert KEY not in str(info.value)


# A YAML syntax error on the password line -----------------------------------------------

BAD_PASSWORD_LINES = [
    f'password: "{PASSWORD}: x',  # an unterminated quote
    f"password: {PASSWORD}: x",  # a mapping value where none is allowed
    f"password: !{PASSWORD}",  # a tag no constructor knows
    f"password: *{PASSWORD}",  # an undefined alias
    f'password: "{PASSWORD}\\q"',  # an unknown escape
]


@pytest.mark.parametrize("line", BAD_PASSWORD_LINES)
def test_a_yaml_error_on_the_password_line_names_the_line_not_the_text(
    tmp_path: Path, line: str
) -> None:
    """check-config with broken YAML: exit 78, file, line and problem; the password nowhere."""
    path = tmp_path / "config.yaml"
    path.write_text(f"mqtt:\n  host: broker.lan\n  {line}\n  port: 1883\n")
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "check-config", "--config", str(path)],
        capture_output=True,
        timeout=30 * SECOND,
        check=False,
        env={key: value for key, value in os.environ.items() if key != "OPENAI_API_KEY"},
    )
    output = (result.stdout + result.stderr).decode()
    assert result.returncode == 78, output
    assert PASSWORD not in output
    assert f"{path} is not valid YAML at line " in output
    assert "line 3" in output


@pytest.mark.parametrize("value", [f"!{PASSWORD}", f"*{PASSWORD}", f'"{PASSWORD}', f"[{PASSWORD}"])
def test_a_bad_yaml_override_never_echoes_the_value(value: str) -> None:
    """OPENAI_MQTT_BRIDGE__MQTT__PASSWORD with bad YAML: the error names the variable only."""
    name = "OPENAI_MQTT_BRIDGE__MQTT__PASSWORD"
    with pytest.raises(ConfigError) as info:
        load_settings(None, {name: value})
    assert PASSWORD not in str(info.value)
    assert info.value.path == "mqtt.password"
    assert name in info.value.message
    assert "not valid YAML at line 1" in info.value.message


# The display URL, the retained info, upstream errors ------------------------------------


def test_the_display_url_never_holds_a_secret_value() -> None:
    """The ack's url and the start line use display_url: ?foo=<key> reads ?foo=REDACTED."""
    settings = settings_for(f"{BASE_URL}?foo={KEY}")
    assert KEY not in settings.endpoint.display_url
    assert settings.endpoint.display_url == "wss://gw.example/v1/responses?foo=REDACTED"
    assert f"foo={KEY}" in settings.endpoint.url  # the upstream still gets it
    # Without the config's redactor the endpoint knows the key it was given.
    endpoint = build_endpoint(f"{BASE_URL}?foo={quote(KEY)}", api_key=KEY)
    assert endpoint.display_url == "wss://gw.example/v1/responses?foo=REDACTED"


def info_of(settings: Settings, tally: Tally, **more: Any) -> dict[str, Any]:
    """The P/bridge/info document of a bridge that just started."""
    return info_document(
        settings,
        tally,
        SharedUsage(),
        started_at=0.0,
        uptime=1.0,
        connections=0,
        broker_connects=1,
        buffer_waits=0,
        **more,
    )


def test_the_retained_info_never_holds_a_secret_value() -> None:
    """P/bridge/info: the URL with ?foo=<key> and user info, scrubbed by value."""
    settings = settings_for(
        f"http://u:{USERINFO_PASSWORD}@gw.example/v1?foo={KEY}&bar={PASSWORD}",
        MQTT_PASSWORD=PASSWORD,
    )
    tally = Tally()
    tally.note_error("upstream_connect_failed", f"echoed {PASSWORD}", "c1", "2026-01-01T00:00:00Z")
    document = info_of(settings, tally)
    payload = json.dumps(document, separators=(",", ":"))
    for secret in (KEY, USERINFO_PASSWORD, PASSWORD):
        assert secret not in payload
    assert document["config"]["openai"]["websocket_url"] == (
        "ws://REDACTED@gw.example/v1/responses?foo=REDACTED&bar=REDACTED"
    )
    assert document["last_error"]["message"] == "echoed REDACTED"


def test_an_upstream_error_never_holds_a_secret_value() -> None:
    """upstream_error scrubs an exception's text with the endpoint's redactor (and what it adds)."""
    settings = settings_for(f"http://u:{USERINFO_PASSWORD}@gw.example/v1")
    upstream = Upstream(settings.endpoint, settings.config.openai, (PASSWORD,))
    failure = OSError(f"cannot reach u:{USERINFO_PASSWORD}@gw.example with {PASSWORD}")
    error = upstream_error(failure, settings.endpoint, upstream.redactor)
    for secret in (USERINFO_PASSWORD, PASSWORD):
        assert secret not in str(error)
    assert str(error).startswith("ws://REDACTED@gw.example/v1/responses: OSError: ")


async def test_the_connect_ack_never_holds_a_secret_value(
    broker: Broker, start_bridge: Any
) -> None:
    """End to end: ?foo=<key> and user info reach the upstream; MQTT sees REDACTED only."""
    async with Simulator() as keyless, Client(broker) as spy:  # keyless: any credentials pass
        await spy.subscribe("#")
        base_url = keyless.base_url.replace("http://", f"http://u:{USERINFO_PASSWORD}@")
        await start_bridge(
            broker,
            keyless,
            openai={"base_url": f"{base_url}?foo={BRIDGE_KEY}", "auth_header": "X-Upstream"},
        )
        await spy.command("c1", {"action": "connect"})
        traffic = [await spy.next()]
        while traffic[-1].topic.value != "ai/c1/events":
            traffic.append(await spy.next())
        traffic += await spy.quiet()
        (handshake,) = keyless.handshakes
    payloads = b"\n".join(m.payload for m in traffic if isinstance(m.payload, bytes))
    (ack,) = [json.loads(line) for line in payloads.splitlines() if line.startswith(b'{"object"')]
    netloc = keyless.url.removeprefix("ws://")
    assert ack["action"] == "connect"
    assert ack["url"] == f"ws://REDACTED@{netloc}?foo=REDACTED"
    assert handshake.query == {"foo": BRIDGE_KEY}
    assert handshake.header("Authorization") == f"Basic {basic('u', USERINFO_PASSWORD)}"
    for secret in (BRIDGE_KEY, USERINFO_PASSWORD, basic("u", USERINFO_PASSWORD)):
        assert secret.encode() not in payloads


# Logs -----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.setup replaces the root handler and sets levels: put them back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    names = ("bridge.paho", "bridge.websockets", "websockets", "asyncio")
    levels = {name: logging.getLogger(name).level for name in names}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("password", [USERINFO_PASSWORD, "pw"])
async def test_debug_handshake_log_hides_basic_auth_from_user_info(
    capsys: Any, fmt: str, password: str
) -> None:
    """At DEBUG websockets logs `Authorization: Basic base64(u:password)`: scrubbed by value,
    also for a password too short for the redactor to look for its encodings."""
    async with Simulator(SimulatorOptions()) as simulator:
        base_url = simulator.base_url.replace("http://", f"http://bridge-user:{password}@")
        settings = settings_for(base_url)
        logs.setup("DEBUG", fmt, redactor=settings.redactor)
        connection = await Upstream(settings.endpoint, settings.config.openai).open()
        connection.abort()
    err = capsys.readouterr().err
    assert "Authorization: Basic REDACTED" in err  # the handshake was logged, scrubbed
    assert f":{password}" not in err
    assert basic("bridge-user", password) not in err
    assert "X-Upstream: Bearer REDACTED" in err
    assert KEY not in err
    if fmt == "json":
        assert all(json.loads(line) for line in err.splitlines())


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("fmt", ["text", "json"])
def test_every_logger_and_traceback_is_scrubbed(capsys: Any, fmt: str) -> None:
    """Any logger, any level, exception text included; use_redactor swaps the redactor later."""
    logs.setup("DEBUG", fmt)
    settings = settings_for(f"{BASE_URL}?foo=x", MQTT_PASSWORD=PASSWORD)
    logs.use_redactor(settings.redactor)
    log = logging.getLogger("some.library")
    log.debug("connecting with %s", quote(PASSWORD, safe=""))
    try:
        raise RuntimeError(f"login {basic('admin', PASSWORD)} refused for {PASSWORD}")
    except RuntimeError:
        log.exception("failed")
    err = capsys.readouterr().err
    assert PASSWORD not in err
    assert basic("admin", PASSWORD) not in err
    assert "RuntimeError: login " in err
    assert err.count("REDACTED") >= 3


# Named endpoints' keys ------------------------------------------------------------------

ENDPOINT_KEY = "sk-endpoint-canary-0123456789abcdefQRS"  # a named endpoint's key


def assert_nowhere(secret: str, text: str) -> None:
    for form in encodings(secret):
        assert form not in text, f"a form of the canary ({form!r}) leaked"


def endpoints_config(tmp_path: Path, source: dict[str, str]) -> Path:
    path = tmp_path / "config.yaml"
    document = {
        "endpoints": {
            "local": {"base_url": "http://127.0.0.1:9/v1", "transport": "http", **source}
        },
        "profiles": {"default": {"endpoint": "local", "request": {"model": "m"}}},
    }
    path.write_text(json.dumps(document))
    return path


def key_sources(tmp_path: Path) -> list[dict[str, str]]:
    key_file = tmp_path / "endpoint-key"
    key_file.write_text(ENDPOINT_KEY + "\n")
    return [{"api_key_env": "LOCAL_ENDPOINT_KEY"}, {"api_key_file": str(key_file)}]


@pytest.mark.parametrize("source", ["env", "file"])
def test_check_config_never_shows_a_named_endpoints_key(
    capsys: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, source: str
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("LOCAL_ENDPOINT_KEY", ENDPOINT_KEY)
    chosen = key_sources(tmp_path)[0 if source == "env" else 1]
    assert main(["check-config", "--config", str(endpoints_config(tmp_path, chosen))]) == 0
    captured = capsys.readouterr()
    out = str(captured.out + captured.err)
    assert "local" in out
    assert_nowhere(ENDPOINT_KEY, out)


@pytest.mark.parametrize("source", ["env", "file"])
def test_a_named_endpoints_key_is_redacted_in_every_encoding(tmp_path: Path, source: str) -> None:
    """Whatever text the bridge writes (an upstream's error echoing the key, a log line)
    passes its redactor: the named endpoint's key is one of its secrets, by value."""
    chosen = key_sources(tmp_path)[0 if source == "env" else 1]
    settings = load_settings(
        endpoints_config(tmp_path, chosen),
        {"OPENAI_API_KEY": KEY, "LOCAL_ENDPOINT_KEY": ENDPOINT_KEY},
    )
    for form in encodings(ENDPOINT_KEY):
        scrubbed = settings.redactor.redact(f"Incorrect API key provided: {form}.")
        assert form not in scrubbed
        assert "REDACTED" in scrubbed
    try:
        raise ConfigError("endpoints.local", f"refused {ENDPOINT_KEY}")
    except ConfigError as error:
        assert_nowhere(ENDPOINT_KEY, settings.redactor.redact(str(error)))


@pytest.mark.usefixtures("restore_logging")
async def test_a_named_endpoints_key_never_reaches_mqtt_or_the_logs(
    broker: Broker, start_bridge: Any, tmp_path: Path, capsys: Any
) -> None:
    """End to end over HTTP: the key reaches the server; MQTT and the logs never see it,
    not when the server takes it, nor when another endpoint's server refuses it."""
    key_file = tmp_path / "endpoint-key"
    key_file.write_text(ENDPOINT_KEY + "\n")
    options = SimulatorOptions(api_key=ENDPOINT_KEY)
    async with (
        Simulator(options) as local,
        Simulator(SimulatorOptions(api_key=BRIDGE_KEY)) as other,
    ):
        async with Client(broker) as spy:
            await spy.subscribe("#")
            endpoint = {"transport": "http", "api_key_file": str(key_file)}
            bridge = await start_bridge(
                broker,
                other,
                endpoints={
                    "local": {**endpoint, "base_url": local.http_base_url},
                    "wrong": {**endpoint, "base_url": other.http_base_url},
                },
                profiles={
                    "default": {"endpoint": "local", "request": {"model": "m", "store": False}},
                    "wrong": {"endpoint": "wrong", "request": {"model": "m"}},
                },
            )
            logs.setup("DEBUG", "json", redactor=bridge.service.settings.redactor)
            await spy.command("k1", {"action": "ask", "input": "Hello"})
            traffic = [await spy.next()]
            while b'"response.completed"' not in bytes(traffic[-1].payload):
                traffic.append(await spy.next())
            await spy.command("k2", {"action": "connect", "profile": "wrong"})
            traffic.append(await spy.next())
            while b"upstream_connect_failed" not in bytes(traffic[-1].payload):
                traffic.append(await spy.next())
            traffic += await spy.quiet()
            await bridge.stop()  # its last lines logged before the capture ends
        assert any(h.header("Authorization") == f"Bearer {ENDPOINT_KEY}" for h in local.handshakes)
    payloads = b"\n".join(bytes(m.payload) for m in traffic).decode()  # every topic
    assert "upstream_connect_failed" in payloads
    assert_nowhere(ENDPOINT_KEY, payloads)
    err = capsys.readouterr().err
    assert "upstream connect failed" in err  # the refusal was logged, its text scrubbed
    assert "send_request_headers" in err  # and the HTTP client's DEBUG lines
    assert_nowhere(ENDPOINT_KEY, err)


# MCP servers (issue 28) ------------------------------------------------------------------

MCP_TOKEN = "mcp-canary-Hv5Rt9Yq"  # not key-shaped: only its value betrays it


def test_an_mcp_servers_token_never_shows(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """check-config, P/bridge/info and a log line that echoes the token: never its value,
    nor the value of a credential header or env entry of a server."""
    config = tmp_path / "config.yaml"
    servers = {
        "home": {"url": f"http://ha.example/api/mcp?k={MCP_TOKEN}x", "token_env": "HA_MCP"},
        "gw": {"url": "http://gw.example/mcp", "headers": {"X-Api-Key": MCP_TOKEN + "h"}},
        "local": {"command": "/bin/true", "env": {"LOCAL_TOKEN": MCP_TOKEN + "e"}},
    }
    config.write_text(yaml.safe_dump({"mcp_servers": servers}))
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("HA_MCP", MCP_TOKEN)
    assert main(["check-config", "--config", str(config)]) == 0
    printed = capsys.readouterr()
    assert MCP_TOKEN not in printed.out + printed.err
    settings = load_settings(config, {"OPENAI_API_KEY": KEY, "HA_MCP": MCP_TOKEN})
    report = {"home": {"state": "down", "transport": "http", "tools": 0}}
    document = info_of(settings, Tally(), mcp_servers=report)
    assert MCP_TOKEN not in json.dumps(document)
    assert document["mcp_servers"] == report
    for leaked in (MCP_TOKEN, MCP_TOKEN + "h", MCP_TOKEN + "e"):
        assert leaked not in settings.redactor.redact(f"401 for Bearer {leaked}")
