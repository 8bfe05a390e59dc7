"""Secrets: where each one comes from, read once at startup.

Secrets never live in the YAML file. The API key comes from
``openai.api_key_file``, a systemd credential (``$CREDENTIALS_DIRECTORY/openai_api_key``)
or ``OPENAI_API_KEY``; the broker password from ``mqtt.password_file``, the
credential ``mqtt_password``, ``MQTT_PASSWORD`` or (discouraged) ``mqtt.password``;
the broker TLS client key from ``mqtt.tls.key_file`` or the credential ``mqtt_tls_key``.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import SecretStr

from bridge.config import tls
from bridge.errors import ConfigError

if TYPE_CHECKING:
    from bridge.config.sections import MqttTlsConfig


@dataclass(frozen=True)
class Secret:
    """A secret value and where it came from; its repr never shows the value."""

    value: str = field(repr=False)
    source: str


def resolve_tls(
    section: MqttTlsConfig, environ: Mapping[str, str]
) -> tuple[Secret | None, ssl.SSLContext | None]:
    """The client key (file, else the credential ``mqtt_tls_key``) and the TLS context."""
    if not section.enabled:
        return None, None
    key: Secret | None = None
    if section.key_file is not None:
        key = Secret(str(section.key_file), f"file {section.key_file}")
    elif section.cert_file is not None:
        credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
        candidate = Path(credentials_dir) / "mqtt_tls_key" if credentials_dir else None
        if candidate is not None and candidate.is_file():
            key = Secret(str(candidate), "systemd credential mqtt_tls_key")
    if key is not None and section.cert_file is None:
        raise ConfigError("mqtt.tls.key_file", "needs mqtt.tls.cert_file (the client certificate)")
    context = tls.client_context(
        ca_file=section.ca_file,
        cert_file=section.cert_file,
        key_file=Path(key.value) if key else None,
        insecure=section.insecure,
    )
    return key, context


def resolve_secret(
    file: Path | None,
    file_key: str,
    credential: str,
    env_name: str,
    inline: SecretStr | None,
    environ: Mapping[str, str],
    *,
    inline_source: str = "config file",
) -> Secret | None:
    """First of: the configured file, the systemd credential, the environment, inline."""
    if file is not None:
        return Secret(read_secret_file(file, file_key), f"file {file}")
    credentials_dir = environ.get("CREDENTIALS_DIRECTORY")
    if credentials_dir:
        candidate = Path(credentials_dir) / credential
        if candidate.is_file():
            value = read_secret_file(candidate, file_key)
            return Secret(value, f"systemd credential {credential}")
    if environ.get(env_name):
        return Secret(environ[env_name].strip(), f"environment {env_name}")
    if inline is not None:
        return Secret(inline.get_secret_value(), inline_source)
    return None


def named_secret(
    file: Path | None,
    credential: str | None,
    env_name: str | None,
    environ: Mapping[str, str],
    where: str,
) -> Secret | None:
    """A secret named in the config: the first of its ``file``, the systemd ``credential``
    of that name, the environment variable ``env_name`` (None: none set)."""
    credentials = environ.get("CREDENTIALS_DIRECTORY")
    if file is not None:
        return Secret(read_secret_file(file, where), "file")
    if credential and credentials:
        path = Path(credentials) / credential
        if path.is_file():
            return Secret(read_secret_file(path, where), f"systemd credential {credential}")
    if env_name and environ.get(env_name):
        return Secret(environ[env_name].strip(), f"env {env_name}")
    return None


def read_secret_file(path: Path, key: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(key, f"cannot read {path}: {exc.strerror}") from None
    if not value:
        raise ConfigError(key, f"{path} is empty")
    return value
