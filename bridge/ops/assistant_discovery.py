"""Home Assistant discovery of the assistants in ``homeassistant.assistants`` (pure).

Each assistant id gets a device of its own, "Assistant <id>", reached through
the bridge's device (``via_device``), with four entities:

- **Ask** (``text``): what is entered is published on ``P/<id>/cmd`` as an
  ``ask`` command, so the bridge opens the connection if needed and continues
  the conversation. The entity has no ``state_topic``: Home Assistant then
  runs it optimistically and shows the last question asked from it. The
  only topic that holds the questions is ``P/<id>/cmd``, and a Home
  Assistant that read it would mirror every other client's commands (and
  needs a read grant there that the README's ACL does not give).
- **Answer** (``sensor``): the text of the last answer on ``P/<id>/answer``,
  cut to the 255 characters a state may hold; the whole answer object (the
  full text, status, request and response ids, usage, error) as attributes.
- **Status** (``sensor``): ``ready``, ``thinking``, ``streaming`` or ``closed``
  from the retained ``P/<id>/status``. The empty payload that clears the
  status reads ``unknown``, the state Home Assistant shows for a topic that
  never had a value.
- **Tokens today** (``sensor``): the id's ``tokens_today`` in ``P/bridge/info``.

Every entity is unavailable while ``P/bridge/state`` says ``offline``. The
config topics are ``<prefix>/<component>/<node>_assistant_<key>/<object_id>/config``
(``key``: :func:`assistant_key`). An id taken out of ``homeassistant.assistants``
leaves its retained configs on the broker: nothing here clears them (publish
an empty retained message on each, or delete the device in Home Assistant).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any, Final

from bridge import __version__
from bridge.config.settings import Config
from bridge.protocol.contract import Topics
from bridge.protocol.encoding import encode

# Home Assistant's text entity holds at most 255 characters (MAX_LENGTH_STATE_STATE),
# and so does a sensor's state.
MAX_STATE: Final = 255
# The entered text as the `input` of an ask; HA's Jinja `tojson` escapes quotes,
# backslashes, control characters and non-ASCII, so any text makes valid JSON.
ASK_COMMAND_TEMPLATE: Final = '{"action":"ask","input": {{ value | tojson }} }'
ANSWER_VALUE_TEMPLATE: Final = f"{{{{ value_json.text[:{MAX_STATE}] }}}}"
ANSWER_ATTRIBUTES_TEMPLATE: Final = "{{ value_json | tojson }}"
STATUS_VALUE_TEMPLATE: Final = "{{ value if value else 'unknown' }}"


def assistant_key(connection_id: str) -> str:
    """The id as it may stand in a discovery topic and a unique id (``[a-zA-Z0-9_-]``).

    An id that had to be changed gets a short hash of itself appended, so two
    ids that differ only where they were changed (``küche``, ``k.che``) stay apart.
    """
    key = re.sub(r"[^a-zA-Z0-9_-]", "_", connection_id)
    if key != connection_id:
        key += "_" + hashlib.sha256(connection_id.encode()).hexdigest()[:8]
    return key


def jinja_string(text: str) -> str:
    """``text`` as a Jinja string literal that reads back exactly.

    Jinja decodes the body of a string literal with Python's ``unicode-escape``
    codec, so everything but ASCII letters, digits, ``_`` and ``-`` is written
    as a ``\\u``/``\\U`` escape: no quote, backslash or brace of an id can end
    the literal or the expression.
    """
    parts = []
    for char in text:
        if char.isascii() and (char.isalnum() or char in "_-"):
            parts.append(char)
        elif ord(char) <= 0xFFFF:
            parts.append(f"\\u{ord(char):04x}")
        else:
            parts.append(f"\\U{ord(char):08x}")
    return '"' + "".join(parts) + '"'


def tokens_today_template(connection_id: str) -> str:
    """The id's ``tokens_today`` in ``P/bridge/info``; ``None`` (HA: unknown) if it is not there."""
    name = jinja_string(connection_id)
    return (
        f"{{{{ value_json.assistants[{name}].tokens_today"
        f" if {name} in (value_json.assistants | default({{}})) else 'None' }}}}"
    )


def assistant_messages(
    config: Config,
    topics: Topics,
    *,
    node: str,
    info: str,
    common: Mapping[str, Any],
) -> list[tuple[str, bytes]]:
    """The (topic, retained payload) of every assistant entity.

    ``node`` is the bridge's discovery node id (its device's identifier),
    ``info`` the ``P/bridge/info`` topic, ``common`` what every entity of the
    bridge carries (availability, origin).
    """
    prefix = config.homeassistant.prefix
    messages = []
    for connection_id in config.homeassistant.assistants:
        device_node = f"{node}_assistant_{assistant_key(connection_id)}"
        device = {
            "identifiers": [device_node],
            "name": f"Assistant {connection_id}",
            "via_device": node,
            "manufacturer": "openai-mqtt-bridge",
            "model": "Assistant (ask)",
            "sw_version": __version__,
        }
        for component, object_id, entity in _entities(topics, connection_id, info, config.mqtt.qos):
            payload = {
                **entity,
                **common,
                "unique_id": f"{device_node}_{object_id}",
                "device": device,
            }
            topic = f"{prefix}/{component}/{device_node}/{object_id}/config"
            messages.append((topic, encode(payload)))
    return messages


def _entities(
    topics: Topics, connection_id: str, info: str, qos: int
) -> list[tuple[str, str, dict[str, Any]]]:
    """One assistant's entities: Ask, Answer, Status and Tokens today."""
    answer = f"{topics.prefix}/{connection_id}/answer"
    ask = {
        "name": "Ask",
        "command_topic": topics.command(connection_id),
        "command_template": ASK_COMMAND_TEMPLATE,
        "retain": False,  # the bridge never carries out a retained command
        "qos": qos,
        "min": 1,  # an empty ask is refused (invalid_command)
        "max": MAX_STATE,
        "mode": "text",
        "icon": "mdi:chat-question-outline",
    }
    answer_sensor = {
        "name": "Answer",
        "state_topic": answer,
        "value_template": ANSWER_VALUE_TEMPLATE,
        "json_attributes_topic": answer,
        "json_attributes_template": ANSWER_ATTRIBUTES_TEMPLATE,
        "force_update": True,  # every answer is news, the same text again too
        "qos": qos,
        "icon": "mdi:message-reply-text-outline",
    }
    status = {
        "name": "Status",
        "state_topic": f"{topics.prefix}/{connection_id}/status",
        "value_template": STATUS_VALUE_TEMPLATE,
        "qos": qos,
        "icon": "mdi:robot-outline",
    }
    tokens_today = {
        "name": "Tokens today",
        "state_topic": info,
        "value_template": tokens_today_template(connection_id),
        "state_class": "total_increasing",
        "unit_of_measurement": "tokens",
        "icon": "mdi:counter",
    }
    return [
        ("text", "ask", ask),
        ("sensor", "answer", answer_sensor),
        ("sensor", "status", status),
        ("sensor", "tokens_today", tokens_today),
    ]
