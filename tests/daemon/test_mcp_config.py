"""The `mcp_servers` section: its checks, its tokens' sources, and check-config's view."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config.dump import redacted_dump
from bridge.config.mcp_servers import auth_headers
from bridge.config.settings import load_settings, parse_config
from bridge.errors import ConfigError

TOKEN = "mcp-canary-token-7f3a9c1e5b"


def config(**servers: Any) -> dict[str, Any]:
    return {
        "mcp_servers": servers,
        "profiles": {"house": {"request": {"model": "m"}, "mcp_servers": list(servers)}},
    }


def test_a_server_is_http_or_stdio_and_offers_nothing_by_default() -> None:
    parsed = parse_config(config(home={"url": "http://ha:8123/api/mcp"}, local={"command": "x"}))
    home, local = parsed.mcp_servers["home"], parsed.mcp_servers["local"]
    assert (home.transport, local.transport) == ("http", "stdio")
    assert home.allow == ()
    assert home.call_timeout == 30.0
    assert parsed.profiles["house"].mcp_servers == ("home", "local")


@pytest.mark.parametrize(
    ("servers", "problem"),
    [
        ({"home": {}}, "set one of url"),
        ({"home": {"url": "http://a/mcp", "command": "x"}}, "set one of url"),
        ({"home": {"url": "ftp://a/mcp"}}, "http:// or https://"),
        ({"home": {"command": "x", "token_env": "T"}}, "for url servers"),
        ({"ho__me": {"url": "http://a/mcp"}}, "a server's name"),
        ({"home": {"url": "http://a/mcp", "call_timeout": 0}}, "greater than 0"),
    ],
)
def test_bad_servers_are_refused(servers: dict[str, Any], problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_config({"mcp_servers": servers})


def test_a_profile_names_only_configured_servers() -> None:
    document = {"profiles": {"p": {"mcp_servers": ["nowhere"]}}}
    with pytest.raises(ConfigError, match="nowhere not in mcp_servers"):
        parse_config(document)


def write(tmp_path: Path, document: dict[str, Any]) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.mark.parametrize("source", ["file", "credential", "env"])
def test_the_token_comes_from_a_secret_source_and_is_never_shown(
    tmp_path: Path, source: str
) -> None:
    secret = tmp_path / "token"
    secret.write_text(TOKEN + "\n")
    server: dict[str, Any] = {
        "url": "http://ha:8123/api/mcp",
        "headers": {"X-Api-Key": TOKEN + "-header", "X-Plain": "shown"},
    }
    environ = {"CREDENTIALS_DIRECTORY": str(tmp_path), "HA_TOKEN": TOKEN}
    server[{"file": "token_file", "credential": "token_credential", "env": "token_env"}[source]] = {
        "file": str(secret),
        "credential": "token",
        "env": "HA_TOKEN",
    }[source]
    settings = load_settings(write(tmp_path, config(home=server)), environ)
    token = settings.mcp_tokens["home"]
    assert token is not None
    assert token.value == TOKEN
    headers = auth_headers(settings.config.mcp_servers["home"], token)
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    dump = redacted_dump(settings)
    assert TOKEN not in dump
    assert "shown" in dump
    assert yaml.safe_load(dump)["mcp_servers"]["home"]["token"].startswith("REDACTED (from ")
    assert settings.redactor.redact(f"x {TOKEN} y") == "x REDACTED y"
