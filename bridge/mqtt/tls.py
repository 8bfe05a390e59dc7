"""TLS to the broker: which handshake failures are final.

The context itself is built once from ``mqtt.tls`` with the settings
(:mod:`bridge.config.tls`).
"""

from __future__ import annotations

import ssl


def fatal_tls_problem(exc: BaseException) -> str | None:
    """Why a TLS handshake can never succeed with this configuration, or None.

    A certificate that fails verification and a port that does not speak TLS
    are configuration mistakes; a handshake cut short is not (the broker may
    be restarting).
    """
    text = ""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return f"the broker's TLS certificate failed verification: {seen.verify_message}"
        text += f" {seen}"
        seen = seen.__cause__ or seen.__context__
    # Some paths keep only the message of the SSL error: read the text too.
    if "CERTIFICATE_VERIFY_FAILED" in text:
        detail = text.split("certificate verify failed:", 1)[-1].split("(_ssl")[0].strip()
        return f"the broker's TLS certificate failed verification: {detail}"
    if "WRONG_VERSION_NUMBER" in text:
        return "the broker does not speak TLS on this port (WRONG_VERSION_NUMBER)"
    return None
