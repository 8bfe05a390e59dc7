"""Constants of the OpenAI MQTT Bridge integration."""

from __future__ import annotations

from typing import Final

DOMAIN: Final = "openai_mqtt_bridge"
CONF_PREFIX: Final = "prefix"  # the bridge's mqtt.topic_prefix
CONF_PROFILE: Final = "profile"  # the bridge profile the agent's conversations use
CONF_LLM_HASS_API: Final = "llm_hass_api"  # Home Assistant's own constant has this value
CONF_PROMPT: Final = "prompt"
DISCOVERY_SECONDS: Final = 2.0  # how long the config flow listens for retained bridge/info
TURN_TIMEOUT: Final = 120.0  # seconds without a message from the bridge before giving up
MAX_TOOL_ROUNDS: Final = 10  # asks with Home Assistant's tool results, per user turn
SUBSCRIBE_TIMEOUT: Final = 10.0  # seconds for the broker to confirm a subscription
