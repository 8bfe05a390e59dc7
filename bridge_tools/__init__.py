"""Developer tools that ship with openai-mqtt-bridge: the Responses simulator, the demo,
and a private Mosquitto launcher. The daemon never imports them; only their commands
(``simulate``, ``demo``) and the tests do."""
