"""What ``check-config`` prints: the effective configuration, every secret replaced,
every value's source noted."""

from __future__ import annotations

from typing import Any

from bridge.config.endpoint import is_secret_name, redact_url
from bridge.config.secrets import Secret
from bridge.config.settings import Settings
from bridge.config.sources import Sources, annotated_yaml
from bridge.protocol.redaction import REDACTED


def redacted_document(settings: Settings) -> dict[str, Any]:
    """The effective configuration as plain data, with every secret replaced.

    Secrets are replaced by name (``mqtt.password``, credential headers) and
    then by value, wherever they are.
    """
    document = settings.config.model_dump(mode="json")
    mqtt, openai = document["mqtt"], document["openai"]
    openai["base_url"] = redact_url(openai["base_url"])
    mqtt["password"] = _shown(settings.mqtt_password)
    if settings.mqtt_tls_key is not None:
        mqtt["tls"]["key_file"] = settings.mqtt_tls_key.value
    openai["api_key"] = _shown(settings.api_key)
    for section in ("headers", "query"):
        openai[section] = {
            name: REDACTED if is_secret_name(name) else value
            for name, value in openai[section].items()
        }
    openai["websocket_url"] = settings.endpoint.display_url
    for name, server in document.get("mcp_servers", {}).items():
        if server["url"] is not None:
            server["url"] = redact_url(server["url"])
        for section in ("headers", "env"):
            server[section] = {
                key: REDACTED if is_secret_name(key) else value
                for key, value in server[section].items()
            }
        server["token"] = _shown(settings.mcp_tokens.get(name))
    redacted: dict[str, Any] = settings.redactor.redact_json(document)
    return redacted


def redacted_dump(settings: Settings) -> str:
    """The effective configuration as YAML, every secret replaced, every value's source noted.

    Each line ends in ``# (from file)``, ``# (from env NAME)`` or ``# (default)``.
    """
    notes: Sources = dict(settings.sources)
    for key, secret in (
        ("mqtt.password", settings.mqtt_password),
        ("openai.api_key", settings.api_key),
    ):
        if secret is not None:
            notes[key] = "secret"  # the value says where it came from
    tls_key = settings.mqtt_tls_key
    if tls_key is not None and tls_key.source.startswith("systemd credential"):
        notes["mqtt.tls.key_file"] = f"from {tls_key.source}"
    notes["openai.websocket_url"] = "derived from openai.base_url"
    for name, token in settings.mcp_tokens.items():
        if token is not None:
            notes[f"mcp_servers.{name}.token"] = "secret"
    return settings.redactor.redact(annotated_yaml(redacted_document(settings), notes))


def _shown(secret: Secret | None) -> str | None:
    return f"{REDACTED} (from {secret.source})" if secret else None
