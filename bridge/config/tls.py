"""TLS to the broker: one :class:`ssl.SSLContext` built from ``mqtt.tls``, at startup.

The context verifies the broker's certificate against ``ca_file`` (or the
system's trusted CAs) and checks its name against ``mqtt.host``. ``insecure``
drops only the name check, as paho's ``tls_insecure`` does: the certificate
must still chain to a trusted CA, so a self-signed broker certificate is
trusted by naming it as ``ca_file``, never by switching verification off.
Which TLS failures are final is :mod:`bridge.mqtt.tls`'s business.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from bridge.errors import ConfigError


def client_context(
    *,
    ca_file: Path | None,
    cert_file: Path | None,
    key_file: Path | None,
    insecure: bool,
) -> ssl.SSLContext:
    """A client context for the broker; raise ConfigError naming the ``mqtt.tls`` key at fault."""
    try:
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError("mqtt.tls.ca_file", f"cannot load {ca_file}: {_why(exc)}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file is not None:
        try:
            context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
        except (OSError, ssl.SSLError) as exc:
            where = (
                "mqtt.tls.key_file" if key_file and _unreadable(key_file) else "mqtt.tls.cert_file"
            )
            raise ConfigError(
                where, f"cannot load the client certificate {cert_file}: {_why(exc)}"
            ) from None
    if insecure:
        context.check_hostname = False
    return context


def _unreadable(path: Path) -> bool:
    try:
        path.read_bytes()
    except OSError:
        return True
    return False


def _why(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
