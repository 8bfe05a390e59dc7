"""Builders for the JSON the simulated server sends (no I/O, no clock).

Shapes follow the protocol reference §6: the same payloads as HTTP streaming, plus
``stream_id`` on named lanes and the nested WebSocket ``error`` envelope.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import re
from collections.abc import Iterable
from typing import Any

from bridge_tools.simulator.rejections import Rejection

JSON = dict[str, Any]

ID_HEX_CHARS = 48  # real ids are "resp_" / "msg_" + 48 hex digits
DEFAULT_SNAPSHOT_DATE = "2026-07-01"
# Aliases the simulator resolves to dated snapshots, as the real API reports them.
SNAPSHOTS = {
    "gpt-4o": "gpt-4o-2024-08-06",
    "gpt-4o-mini": "gpt-4o-mini-2024-07-18",
    "gpt-4.1": "gpt-4.1-2025-04-14",
    "gpt-4.1-mini": "gpt-4.1-mini-2025-04-14",
    "gpt-4.1-nano": "gpt-4.1-nano-2025-04-14",
    "o3": "o3-2025-04-16",
    "o4-mini": "o4-mini-2025-04-16",
    "gpt-5": "gpt-5-2025-08-07",
    "gpt-5-mini": "gpt-5-mini-2025-08-07",
    "gpt-5-nano": "gpt-5-nano-2025-08-07",
}
_DATED_RE = re.compile(r"-\d{4}-\d{2}-\d{2}$")
_OBFUSCATION_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
# Byte -> the alphabet's character at byte % len(alphabet), for bytes.translate.
_OBFUSCATION_TABLE = bytes(
    ord(_OBFUSCATION_ALPHABET[byte % len(_OBFUSCATION_ALPHABET)]) for byte in range(256)
)
# json.dumps builds an encoder per call unless every option is the default.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

# Request fields echoed on the response object, with the value used when omitted.
_ECHOED: tuple[tuple[str, Any], ...] = (
    ("instructions", None),
    ("max_output_tokens", None),
    ("max_tool_calls", None),
    ("parallel_tool_calls", True),
    ("previous_response_id", None),
    ("prompt_cache_key", None),
    ("prompt_cache_retention", None),
    ("safety_identifier", None),
    ("store", True),
    ("temperature", 1.0),
    ("tool_choice", "auto"),
    ("tools", []),
    ("top_logprobs", 0),
    ("top_p", 1.0),
    ("truncation", "disabled"),
    ("user", None),
)


class IdFactory:
    """Deterministic, unique ids: ``<prefix>_`` plus 48 hex digits from seed and a counter."""

    def __init__(self, seed: int) -> None:
        self._seed = seed
        self._counter = itertools.count()

    def new(self, prefix: str) -> str:
        """The next id with this prefix ("resp", "msg", "rs", ...)."""
        number = next(self._counter)
        hex_digits = hashlib.sha256(f"{self._seed}:{prefix}:{number}".encode()).hexdigest()
        return f"{prefix}_{hex_digits[:ID_HEX_CHARS]}"


def resolve_model(model: str) -> str:
    """The snapshot name the server reports for a model alias."""
    if model in SNAPSHOTS:
        return SNAPSHOTS[model]
    if not model or _DATED_RE.search(model):
        return model
    return f"{model}-{DEFAULT_SNAPSHOT_DATE}"


def response_object(
    body: JSON,
    *,
    response_id: str,
    created_at: int,
    status: str,
    output: Iterable[JSON] = (),
    usage: JSON | None = None,
    error: JSON | None = None,
    incomplete_details: JSON | None = None,
    completed_at: int | None = None,
) -> JSON:
    """A ``response`` object that echoes the request's parameters.

    Args:
        body: The ``response.create`` frame.
        status: ``in_progress``, ``completed``, ``incomplete`` or ``failed``.
        completed_at: Set only when status is ``completed``.
    """
    final = status != "in_progress"
    obj: JSON = {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": completed_at,
        "conversation": body.get("conversation"),
        "error": error,
        "incomplete_details": incomplete_details,
    }
    obj.update((name, body.get(name, default)) for name, default in _ECHOED)
    metadata = body.get("metadata")
    obj["metadata"] = metadata if isinstance(metadata, dict) else {}
    obj["model"] = resolve_model(str(body.get("model", "")))
    obj["output"] = list(output)
    obj["reasoning"] = _reasoning(body.get("reasoning"))
    tier = body.get("service_tier") or "auto"
    obj["service_tier"] = "default" if final and tier == "auto" else tier
    obj["text"] = _text_config(body.get("text"))
    obj["usage"] = usage
    return obj


def _reasoning(value: object) -> JSON:
    if not isinstance(value, dict):
        return {"effort": None, "summary": None}
    return {"effort": value.get("effort"), "summary": value.get("summary")}


def _text_config(value: object) -> JSON:
    config: JSON = {"format": {"type": "text"}, "verbosity": "medium"}
    if isinstance(value, dict):
        config.update(value)
    return config


def usage(
    input_tokens: int, output_tokens: int, *, cached_tokens: int = 0, reasoning_tokens: int = 0
) -> JSON:
    """A full ``usage`` object."""
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": cached_tokens, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": reasoning_tokens},
        "total_tokens": input_tokens + output_tokens,
    }


def output_text_part(text: str) -> JSON:
    """An ``output_text`` content part."""
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, status: str, text: str | None = None) -> JSON:
    """An assistant ``message`` output item; no content while it is being added."""
    content = [] if text is None else [output_text_part(text)]
    return {
        "id": item_id,
        "type": "message",
        "status": status,
        "content": content,
        "role": "assistant",
    }


def function_call_item(item_id: str, call_id: str, name: str, arguments: str, status: str) -> JSON:
    """A ``function_call`` output item (``arguments`` is empty while it is being added)."""
    return {
        "id": item_id,
        "type": "function_call",
        "status": status,
        "arguments": arguments,
        "call_id": call_id,
        "name": name,
    }


def reasoning_item(item_id: str, encrypted_content: str | None = None) -> JSON:
    """A ``reasoning`` output item (``encrypted_content`` once it is done)."""
    item: JSON = {"id": item_id, "type": "reasoning", "summary": []}
    if encrypted_content is not None:
        item["encrypted_content"] = encrypted_content
    return item


def encrypted_blob(key: str, size: int) -> str:
    """A deterministic base64 string of about size characters, like encrypted reasoning."""
    block = base64.b64encode(hashlib.sha512(key.encode()).digest() * 48).decode()
    repeats = size // len(block) + 1
    return (block * repeats)[:size]


def obfuscation(key: str) -> str:
    """Random-looking padding for a delta (4-15 characters), deterministic for key."""
    data = hashlib.sha256(f"obfuscation:{key}".encode()).digest()
    length = 4 + data[0] % 12
    return data[1 : 1 + length].translate(_OBFUSCATION_TABLE).decode("ascii")


def error_event(
    rejection: Rejection,
    *,
    stream_id: str | None = None,
    sequence_number: int | None = None,
    flat: bool = False,
) -> JSON:
    """A WebSocket ``error`` event.

    Args:
        flat: Emit the legacy SSE shape (``code``/``message``/``param`` at top level)
            instead of the nested envelope, for robustness tests of relays.
    """
    event: JSON = {"type": "error"}
    if flat:
        event.update(code=rejection.code, message=rejection.message, param=rejection.param)
    else:
        event["status"] = rejection.status
        error: JSON = {
            "type": rejection.type,
            "code": rejection.code,
            "message": rejection.message,
            "param": rejection.param,
        }
        if rejection.headers:
            error["headers"] = dict(rejection.headers)
        event["error"] = error
    if sequence_number is not None:
        event["sequence_number"] = sequence_number
    if stream_id is not None:
        event["stream_id"] = stream_id
    return event


def encode(event: JSON) -> str:
    """An event as the server puts it on the wire: compact UTF-8 JSON, like OpenAI's."""
    return _ENCODER.encode(event)


def encode_string(text: str) -> str:
    """A string as :func:`encode` writes it inside an event (quoted, escaped)."""
    return _ENCODER.encode(text)


def http_error_body(rejection: Rejection) -> JSON:
    """The JSON body of an HTTP error response (the handshake is plain HTTP)."""
    return {
        "error": {
            "message": rejection.message,
            "type": rejection.type,
            "param": rejection.param,
            "code": rejection.code,
        }
    }
