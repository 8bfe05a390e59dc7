"""Set up from the UI: pick a bridge found on the broker, then one of its profiles."""

from __future__ import annotations

from typing import Any

import voluptuous as vol
from homeassistant.components import mqtt
from homeassistant.config_entries import (
    ConfigEntry,
    ConfigFlow,
    ConfigFlowResult,
    OptionsFlow,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import llm
from homeassistant.helpers.selector import (
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    TemplateSelector,
)

from .bridge import async_discover
from .const import (
    CONF_LLM_HASS_API,
    CONF_PREFIX,
    CONF_PROFILE,
    CONF_PROMPT,
    DISCOVERY_SECONDS,
    DOMAIN,
)


class BridgeConfigFlow(ConfigFlow, domain=DOMAIN):
    """Bridges are found from their retained ``<prefix>/bridge/info``."""

    VERSION = 1

    def __init__(self) -> None:
        self._bridges: dict[str, dict[str, Any]] = {}
        self._prefix = ""

    async def async_step_user(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if not await mqtt.async_wait_for_mqtt_client(self.hass):
            return self.async_abort(reason="mqtt_not_ready")
        if user_input is not None:
            self._prefix = user_input[CONF_PREFIX]
            return await self.async_step_profile()
        self._bridges = await async_discover(self.hass, DISCOVERY_SECONDS)
        if not self._bridges:
            return self.async_abort(reason="no_bridges")
        choices = [
            SelectOptionDict(value=prefix, label=f"{prefix} (version {info.get('version', '?')})")
            for prefix, info in sorted(self._bridges.items())
        ]
        return self.async_show_form(
            step_id="user",
            data_schema=vol.Schema(
                {vol.Required(CONF_PREFIX): SelectSelector(SelectSelectorConfig(options=choices))}
            ),
        )

    async def async_step_profile(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        if user_input is not None:
            profile = user_input[CONF_PROFILE]
            await self.async_set_unique_id(f"{self._prefix}:{profile}")
            self._abort_if_unique_id_configured()
            options = {
                key: user_input[key]
                for key in (CONF_LLM_HASS_API, CONF_PROMPT)
                if user_input.get(key)
            }
            return self.async_create_entry(
                title=f"Bridge {self._prefix} ({profile})",
                data={CONF_PREFIX: self._prefix, CONF_PROFILE: profile},
                options=options,
            )
        profiles = self._bridges.get(self._prefix, {}).get("profiles") or ["default"]
        schema = {
            vol.Required(CONF_PROFILE, default=profiles[0]): SelectSelector(
                SelectSelectorConfig(options=[str(name) for name in profiles])
            ),
            **_option_fields(self.hass, {}),
        }
        return self.async_show_form(step_id="profile", data_schema=vol.Schema(schema))

    @staticmethod
    @callback
    def async_get_options_flow(config_entry: ConfigEntry) -> OptionsFlow:
        return BridgeOptionsFlow()


class BridgeOptionsFlow(OptionsFlow):
    """Which of Home Assistant's tools the model gets, and a prompt of the user's."""

    async def async_step_init(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        if user_input is not None:
            return self.async_create_entry(data={k: v for k, v in user_input.items() if v})
        return self.async_show_form(
            step_id="init",
            data_schema=vol.Schema(_option_fields(self.hass, dict(self.config_entry.options))),
        )


def _option_fields(hass: HomeAssistant, current: dict[str, Any]) -> dict[Any, Any]:
    apis = [SelectOptionDict(value=api.id, label=api.name) for api in llm.async_get_apis(hass)]
    return {
        vol.Optional(
            CONF_LLM_HASS_API, description={"suggested_value": current.get(CONF_LLM_HASS_API)}
        ): SelectSelector(SelectSelectorConfig(options=apis, multiple=True)),
        vol.Optional(
            CONF_PROMPT, description={"suggested_value": current.get(CONF_PROMPT)}
        ): TemplateSelector(),
    }
