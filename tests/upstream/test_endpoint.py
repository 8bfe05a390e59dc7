"""Unit tests of the upstream URL derivation, headers and redaction."""

from __future__ import annotations

import base64

import pytest

from bridge.config.endpoint import (
    build_endpoint,
    endpoint_secrets,
    redact_url,
    scrub,
    websocket_url,
)

KEY = "sk-test-0123456789abcdef"


@pytest.mark.parametrize(
    ("base", "expected"),
    [
        ("https://api.openai.com/v1", "wss://api.openai.com/v1/responses"),
        ("https://api.openai.com/v1/", "wss://api.openai.com/v1/responses"),
        ("http://127.0.0.1:8765/v1", "ws://127.0.0.1:8765/v1/responses"),
        (
            "https://res.openai.azure.com/openai/v1/",
            "wss://res.openai.azure.com/openai/v1/responses",
        ),
        (
            "https://gw.example/v1?api-version=preview",
            "wss://gw.example/v1/responses?api-version=preview",
        ),
        ("wss://direct.example/v1", "wss://direct.example/v1/responses"),
    ],
)
def test_websocket_url(base: str, expected: str) -> None:
    """https→wss, http→ws, base path + /responses, query kept."""
    assert websocket_url(base) == expected


def test_extra_query_is_merged() -> None:
    """Configured query parameters join the base URL's, replacing equal names."""
    url = websocket_url("https://gw.example/v1?a=1&b=2", {"b": "3", "c": "4"})
    assert url == "wss://gw.example/v1/responses?a=1&b=3&c=4"


@pytest.mark.parametrize("base", ["ftp://x/v1", "api.openai.com/v1", "https:///v1"])
def test_bad_base_urls(base: str) -> None:
    """Unsupported schemes and host-less URLs are refused."""
    with pytest.raises(ValueError, match=r"scheme|host"):
        websocket_url(base)


def test_default_headers_carry_bearer_key() -> None:
    """By default the key goes in Authorization: Bearer; org and project as headers."""
    endpoint = build_endpoint(
        "https://api.openai.com/v1", api_key=KEY, organization="org-1", project="proj-1"
    )
    assert dict(endpoint.headers) == {
        "Authorization": f"Bearer {KEY}",
        "OpenAI-Organization": "org-1",
        "OpenAI-Project": "proj-1",
    }
    assert endpoint.display_url == "wss://api.openai.com/v1/responses"
    assert KEY not in repr(endpoint)


def test_custom_headers_replace_authorization() -> None:
    """A configured Authorization header (any case) replaces the default one."""
    endpoint = build_endpoint(
        "https://gw.example/v1",
        api_key=KEY,
        headers={"authorization": "Token abc", "OpenAI-Beta": "x=1"},
    )
    assert dict(endpoint.headers) == {"authorization": "Token abc", "OpenAI-Beta": "x=1"}


def test_azure_style_api_key_header() -> None:
    """auth_header api-key with no scheme sends the raw key."""
    endpoint = build_endpoint(
        "https://r.openai.azure.com/openai/v1", api_key=KEY, auth_header="api-key", auth_scheme=""
    )
    assert dict(endpoint.headers) == {"api-key": KEY}


def test_query_string_auth_is_redacted_for_display() -> None:
    """A key sent as a query parameter is in the URL but never in the display URL."""
    endpoint = build_endpoint(
        "https://gw.example/v1?api-version=2026-01", api_key=KEY, api_key_query_param="code"
    )
    assert f"code={KEY}" in endpoint.url
    assert KEY not in endpoint.display_url
    assert "code=REDACTED" in endpoint.display_url
    assert "api-version=2026-01" in endpoint.display_url
    assert dict(endpoint.headers) == {}


def test_redact_url() -> None:
    """Credential-like parameters and user info are replaced; others stay."""
    url = "wss://user:pw@gw.example/v1/responses?api-key=s3cret&sig=abc&api-version=1"
    assert redact_url(url) == (
        "wss://REDACTED@gw.example/v1/responses?api-key=REDACTED&sig=REDACTED&api-version=1"
    )


def test_scrub_removes_secrets_and_key_shapes() -> None:
    """scrub() removes known secrets and anything shaped like an OpenAI key."""
    text = f"bad key {KEY}; server says: Incorrect API key provided: sk-abc***wxyz."
    cleaned = scrub(text, (KEY,))
    assert KEY not in cleaned
    assert "sk-abc" not in cleaned


def test_endpoint_secrets_are_the_credential_values_of_the_config() -> None:
    """User info password (as written, decoded, with the user), credential query values and
    headers (with and without their scheme); nothing else."""
    found = set(
        endpoint_secrets(
            "https://bob:p%40ss-word@gw.example/v1?sig=abc&api-version=1",
            headers={"X-Auth": "Basic dXNlcjpwdw==", "OpenAI-Beta": "x=1"},
            query={"access_token": "tok-1", "region": "eu"},
        )
    )
    assert found == {
        "p%40ss-word",
        "p@ss-word",
        "bob:p%40ss-word",
        "bob:p@ss-word",
        base64.b64encode(b"bob:p%40ss-word").decode(),
        base64.b64encode(b"bob:p@ss-word").decode(),
        "abc",
        "tok-1",
        "Basic dXNlcjpwdw==",
        "dXNlcjpwdw==",
    }


def test_display_url_is_scrubbed_by_value() -> None:
    """A credential under a harmless name is still a credential: the display URL hides it."""
    endpoint = build_endpoint("https://gw.example/v1?foo=" + KEY, api_key=KEY)
    assert endpoint.display_url == "wss://gw.example/v1/responses?foo=REDACTED"
    assert KEY in endpoint.url
