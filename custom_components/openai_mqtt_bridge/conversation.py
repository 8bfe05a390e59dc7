"""The bridge as a conversation agent that an Assist pipeline can use.

Memory is the bridge's: every Home Assistant conversation of one speaker (a voice
satellite, a device, else a user) is an ``ask`` on one bridge connection id derived
from that speaker, so a follow-up after Home Assistant's own 5-minute conversation
expiry (which starts a new conversation id) continues the bridge's conversation,
within the profile's ``sessions.conversation_ttl``.

Tools: with the Assist API allowed, its tools go with each ``ask`` as the client's
own function tools; the bridge relays their calls, Home Assistant runs them (under
its exposure rules) through the chat log, and the next ``ask`` carries their
``function_call_output`` items. The bridge's own MQTT tools run in the bridge.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from typing import Any, Literal

from homeassistant.components import conversation
from homeassistant.const import MATCH_ALL
from homeassistant.core import HomeAssistant
from homeassistant.helpers import intent, llm
from homeassistant.helpers.device_registry import DeviceInfo
from homeassistant.helpers.entity_platform import AddConfigEntryEntitiesCallback
from voluptuous_openapi import convert

from . import BridgeConfigEntry
from .bridge import TurnFailed
from .const import (
    CONF_LLM_HASS_API,
    CONF_PREFIX,
    CONF_PROFILE,
    CONF_PROMPT,
    DOMAIN,
    MAX_TOOL_ROUNDS,
)


async def async_setup_entry(
    hass: HomeAssistant,
    entry: BridgeConfigEntry,
    async_add_entities: AddConfigEntryEntitiesCallback,
) -> None:
    async_add_entities([BridgeConversationEntity(entry)])


def connection_id_for(entry_id: str, speaker: str) -> str:
    """The bridge connection id of a speaker: stable, and no topic wildcard in it."""
    digest = hashlib.sha256(f"{entry_id}:{speaker}".encode()).hexdigest()[:16]
    return f"ha-{digest}"


def speaker_of(user_input: conversation.ConversationInput) -> str:
    """Who speaks: the satellite, else the device, else the user, else the conversation."""
    if user_input.satellite_id:
        return f"satellite:{user_input.satellite_id}"
    if user_input.device_id:
        return f"device:{user_input.device_id}"
    if user_input.context.user_id:
        return f"user:{user_input.context.user_id}"
    return f"conversation:{user_input.conversation_id}"


def spoken_error(failed: TurnFailed) -> str:
    """What the voice says when the bridge refuses a turn or it fails."""
    code = failed.code
    if code == "budget_exceeded":
        resets = failed.details.get("resets_at")
        when = f" It resets at {resets}." if resets else ""
        return f"Sorry, today's token budget for this assistant is used up.{when}"
    if code == "model_not_allowed":
        return "Sorry, the bridge does not allow the model this assistant's profile asks for."
    if code == "unknown_profile":
        return "Sorry, the bridge does not know this assistant's profile any more."
    if code in ("bridge_offline", "shutting_down"):
        return "Sorry, the OpenAI MQTT bridge is offline."
    if code == "timeout":
        return "Sorry, the OpenAI MQTT bridge did not answer in time."
    if code == "rate_limited":
        return "Sorry, too many questions at once. Try again in a moment."
    return f"Sorry, the AI service could not answer ({code})."


class BridgeConversationEntity(
    conversation.ConversationEntity, conversation.AbstractConversationAgent
):
    """Answers through the bridge's ``ask``, streaming its text deltas into the chat log."""

    _attr_has_entity_name = True
    _attr_name = None
    _attr_supports_streaming = True

    def __init__(self, entry: BridgeConfigEntry) -> None:
        self.entry = entry
        self._attr_unique_id = entry.entry_id
        self._attr_device_info = DeviceInfo(
            identifiers={(DOMAIN, entry.entry_id)},
            name=entry.title,
            manufacturer="openai-mqtt-bridge",
            model=f"profile {entry.data[CONF_PROFILE]} on {entry.data[CONF_PREFIX]}",
        )
        if entry.options.get(CONF_LLM_HASS_API):
            self._attr_supported_features = conversation.ConversationEntityFeature.CONTROL

    @property
    def supported_languages(self) -> list[str] | Literal["*"]:
        return MATCH_ALL

    async def async_added_to_hass(self) -> None:
        await super().async_added_to_hass()
        conversation.async_set_agent(self.hass, self.entry, self)

    async def async_will_remove_from_hass(self) -> None:
        conversation.async_unset_agent(self.hass, self.entry)
        await super().async_will_remove_from_hass()

    async def _async_handle_message(
        self, user_input: conversation.ConversationInput, chat_log: conversation.ChatLog
    ) -> conversation.ConversationResult:
        options = self.entry.options
        try:
            await chat_log.async_provide_llm_data(
                user_input.as_llm_context(DOMAIN),
                options.get(CONF_LLM_HASS_API),
                options.get(CONF_PROMPT),
                user_input.extra_system_prompt,
            )
        except conversation.ConverseError as err:
            return err.as_conversation_result()
        connection_id = connection_id_for(self.entry.entry_id, speaker_of(user_input))
        tools = _tools(chat_log.llm_api)
        turn_input: str | list[dict[str, Any]] = user_input.text
        system = chat_log.content[0]
        first = sum(isinstance(c, conversation.UserContent) for c in chat_log.content) == 1
        if first and isinstance(system, conversation.SystemContent) and system.content:
            # Home Assistant's prompt (the user's, what is exposed, the time) opens each of
            # its conversations; the profile's instructions stay the bridge owner's.
            turn_input = [
                {"role": "developer", "content": system.content},
                {"role": "user", "content": user_input.text},
            ]
        try:
            for _round in range(MAX_TOOL_ROUNDS):
                stream = self._deltas(connection_id, turn_input, tools)
                async for _content in chat_log.async_add_delta_content_stream(
                    self.entity_id, stream
                ):
                    pass
                if not chat_log.unresponded_tool_results:
                    break
                turn_input = _tool_outputs(chat_log)
        except TurnFailed as failed:
            response = intent.IntentResponse(language=user_input.language)
            response.async_set_error(intent.IntentResponseErrorCode.UNKNOWN, spoken_error(failed))
            return conversation.ConversationResult(
                response=response, conversation_id=chat_log.conversation_id
            )
        return conversation.async_get_result_from_chat_log(user_input, chat_log)

    async def _deltas(
        self,
        connection_id: str,
        turn_input: str | list[dict[str, Any]],
        tools: list[dict[str, Any]],
    ) -> AsyncIterator[conversation.AssistantContentDeltaDict]:
        """The bridge's events of one ``ask`` as the chat log's deltas."""
        link = self.entry.runtime_data
        ours = {tool["name"] for tool in tools}
        yield {"role": "assistant"}
        async for event in link.turn(
            connection_id, turn_input, profile=self.entry.data[CONF_PROFILE], tools=tools
        ):
            kind = event.get("type")
            if kind == "response.output_text.delta":
                yield {"content": str(event.get("delta", ""))}
            elif kind == "response.output_item.done":
                item = event.get("item") or {}
                if item.get("type") == "function_call" and item.get("name") in ours:
                    yield {"tool_calls": [_tool_input(item)]}


def _tools(api: llm.APIInstance | None) -> list[dict[str, Any]]:
    """The Assist API's tools as Responses function tools."""
    if api is None:
        return []
    return [
        {
            "type": "function",
            "name": tool.name,
            "description": tool.description or "",
            "parameters": convert(tool.parameters, custom_serializer=api.custom_serializer),
            "strict": False,
        }
        for tool in api.tools
    ]


def _tool_input(item: dict[str, Any]) -> llm.ToolInput:
    try:
        arguments = json.loads(item.get("arguments") or "{}")
    except ValueError:
        arguments = {}
    return llm.ToolInput(
        id=str(item.get("call_id")),
        tool_name=str(item.get("name")),
        tool_args=arguments if isinstance(arguments, dict) else {},
    )


def _tool_outputs(chat_log: conversation.ChatLog) -> list[dict[str, Any]]:
    """The last round's tool results as ``function_call_output`` items for the next ask."""
    outputs: list[dict[str, Any]] = []
    for content in reversed(chat_log.content):
        if not isinstance(content, conversation.ToolResultContent):
            break
        outputs.append(
            {
                "type": "function_call_output",
                "call_id": content.tool_call_id,
                "output": json.dumps(content.tool_result),
            }
        )
    return list(reversed(outputs))
