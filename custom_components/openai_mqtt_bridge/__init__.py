"""OpenAI MQTT Bridge: the bridge as Home Assistant's conversation agent, over HA's MQTT.

The integration opens no broker connection of its own: it publishes the bridge's
``ask`` commands and reads its events through Home Assistant's MQTT integration.
"""

from __future__ import annotations

from homeassistant.components import mqtt
from homeassistant.config_entries import ConfigEntry
from homeassistant.const import Platform
from homeassistant.core import HomeAssistant
from homeassistant.exceptions import ConfigEntryNotReady

from .bridge import BridgeLink
from .const import CONF_PREFIX

PLATFORMS = [Platform.AI_TASK, Platform.CONVERSATION]

BridgeConfigEntry = ConfigEntry[BridgeLink]


async def async_setup_entry(hass: HomeAssistant, entry: BridgeConfigEntry) -> bool:
    """Set up the link to one bridge (its topic prefix), its agent and its AI Task entity."""
    if not await mqtt.async_wait_for_mqtt_client(hass):
        raise ConfigEntryNotReady("MQTT is not available")
    link = BridgeLink(hass, entry.data[CONF_PREFIX])
    await link.async_start()
    entry.runtime_data = link
    entry.async_on_unload(link.async_stop)
    entry.async_on_unload(entry.add_update_listener(_async_reload))
    await hass.config_entries.async_forward_entry_setups(entry, PLATFORMS)
    return True


async def async_unload_entry(hass: HomeAssistant, entry: BridgeConfigEntry) -> bool:
    return await hass.config_entries.async_unload_platforms(entry, PLATFORMS)


async def _async_reload(hass: HomeAssistant, entry: BridgeConfigEntry) -> None:
    """The options changed (tools, prompt): set the agent up again with them."""
    await hass.config_entries.async_reload(entry.entry_id)
