"""The bridge as an AI Task entity: ``ai_task.generate_data``, with or without a structure.

Each task is one ``ask`` that starts a new bridge conversation (``new_conversation``)
on the entity's own connection id, so tasks never see each other or the agent's
conversations. The bridge's ``ask`` takes no ``text.format`` from its client (only
the profile's ``request`` sets request fields), so a structure goes to the model as
instructions: a developer message with the structure's JSON schema, asking for one
JSON object and nothing else. The answer is parsed and validated against the
structure; an answer that is not JSON or does not match it raises a
:class:`HomeAssistantError` that says which.
"""

from __future__ import annotations

import json
from typing import Any

import voluptuous as vol
from homeassistant.components import ai_task, conversation
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import llm
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from voluptuous_openapi import convert

from . import BridgeConfigEntry
from .bridge import TurnFailed
from .const import CONF_PREFIX, CONF_PROFILE, DOMAIN
from .conversation import connection_id_for, spoken_error

STRUCTURED = (
    "Answer with one JSON object and nothing else (no prose, no code fence). "
    "It must match this JSON schema:\n"
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: BridgeConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    async_add_entities([BridgeTaskEntity(entry)])


def parse_structured(text: str, structure: vol.Schema) -> Any:
    """The model's answer as data matching the structure; HomeAssistantError if not."""
    try:
        data = json.loads(text)
    except ValueError as err:
        raise _refused("answer_not_json", "is not JSON", err, text) from err
    try:
        structure(data)  # validated; returned as the model wrote it, as HA's OpenAI does
    except vol.Invalid as err:
        raise _refused("answer_not_structure", "does not match the structure", err, text) from err
    return data


def _refused(key: str, what: str, err: Exception, text: str) -> HomeAssistantError:
    subject = "answer" if key == "answer_not_json" else "JSON"
    return HomeAssistantError(
        f"The model's {subject} {what} ({err}): {text[:200]!r}",
        translation_domain=DOMAIN,
        translation_key=key,
        translation_placeholders={"error": str(err), "answer": text[:200]},
    )


class BridgeTaskEntity(ai_task.AITaskEntity):
    """Generates data (text, or JSON of a structure) through the bridge's ``ask``."""

    _attr_has_entity_name = True
    _attr_name = None
    _attr_supported_features = ai_task.AITaskEntityFeature.GENERATE_DATA

    def __init__(self, entry: BridgeConfigEntry) -> None:
        self.entry = entry
        self._attr_unique_id = f"{entry.entry_id}-ai_task"
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, entry.entry_id)},
            name=entry.title,
            manufacturer="openai-mqtt-bridge",
            model=f"profile {entry.data[CONF_PROFILE]} on {entry.data[CONF_PREFIX]}",
        )

    async def _async_generate_data(
        self, task: ai_task.GenDataTask, chat_log: conversation.ChatLog
    ) -> ai_task.GenDataTaskResult:
        system = chat_log.content[0]
        developer = system.content if isinstance(system, conversation.SystemContent) else ""
        if task.structure is not None:
            schema = convert(task.structure, custom_serializer=llm.selector_serializer)
            developer = f"{developer}\n\n{STRUCTURED}{json.dumps(schema)}".strip()
        turn_input = [
            {"role": "developer", "content": developer},
            {"role": "user", "content": task.instructions},
        ]
        text = ""
        try:
            async for event in self.entry.runtime_data.turn(
                connection_id_for(self.entry.entry_id, "ai_task"),
                turn_input,
                profile=self.entry.data[CONF_PROFILE],
                new_conversation=True,
            ):
                if event.get("type") == "response.output_text.delta":
                    text += str(event.get("delta", ""))
        except TurnFailed as failed:
            raise HomeAssistantError(spoken_error(failed)) from failed
        chat_log.async_add_assistant_content_without_tools(
            conversation.AssistantContent(agent_id=self.entity_id, content=text)
        )
        if task.structure is None:
            return ai_task.GenDataTaskResult(conversation_id=chat_log.conversation_id, data=text)
        return ai_task.GenDataTaskResult(
            conversation_id=chat_log.conversation_id,
            data=parse_structured(text, task.structure),
        )
