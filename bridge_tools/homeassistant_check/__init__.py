"""``scripts/check-homeassistant``: the bridge and its examples in a real Home Assistant.

One command installs Home Assistant (a pinned release, in a venv of its own,
cached between runs), starts a private Mosquitto, the simulator, the bridge
with Home Assistant discovery and an assistant device, and Home Assistant
with a minimal configuration and the example scripts; onboards a user and
sets up MQTT through the REST API, as a person would in the UI; then checks
that every discovered entity is there with a sensible state, that the
assistant answers end to end through its Ask entity, that each example script
answers twice in a row, and that Home Assistant logged no problem with any of
it. Everything started is stopped again, also on failure or Ctrl-C.

Modules: ``install`` (the cached Home Assistant), ``processes`` (child
processes and waiting), ``stack`` (the configs and the services), ``client``
(Home Assistant's REST and WebSocket APIs), ``entities`` (discovery and the
Ask entity), ``examples`` (the example scripts and the logs), ``runner`` (the
steps and their timings).
"""

from typing import Final

HA_VERSION: Final = "2024.3.3"  # the newest release that installs on Python 3.11
# --current: the newest release that runs on Python 3.13 (Debian trixie's); 2026.3 needs 3.14.
CURRENT_VERSION: Final = "2026.2.3"


class CheckFailed(Exception):
    """A check did not pass; the message says which and why."""
