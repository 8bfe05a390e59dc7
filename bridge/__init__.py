"""openai-mqtt-bridge: OpenAI's Responses API (WebSocket mode) on an MQTT broker."""

__version__ = "0.1.0"
