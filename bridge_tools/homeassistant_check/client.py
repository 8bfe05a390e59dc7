"""Home Assistant's REST and WebSocket APIs, as far as the check uses them.

REST for what a script or a person does (onboarding, the MQTT config flow,
states, service calls); the WebSocket API for what REST does not show in
2024.3: the entity and device registries (unique ids, devices) and the
persistent notifications.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Final

from websockets.sync.client import connect

from bridge_tools.homeassistant_check import CheckFailed

USER: Final = {
    "name": "Check",
    "username": "check",
    "password": "check-password-1",
    "language": "en",
}
REQUEST_TIMEOUT: Final = 30.0


class ApiError(CheckFailed):
    """Home Assistant answered a request with an HTTP error."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status} {body[:500]}")
        self.status = status


class NoAnswer(CheckFailed):
    """Home Assistant did not answer a request in time, or not at all."""


class HomeAssistant:
    """One Home Assistant on ``127.0.0.1:port``, and the token of the check's user."""

    def __init__(self, port: int) -> None:
        self.base_url = f"http://127.0.0.1:{port}"
        self.client_id = self.base_url + "/"  # an IndieAuth client id: a URL of the instance
        self.token: str | None = None

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        form: bool = False,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Any:
        """The decoded JSON answer (None if empty).

        :class:`ApiError` for an HTTP error, :class:`NoAnswer` when there was none
        within ``timeout`` seconds (or no connection).
        """
        headers = {}
        data = None
        if body is not None:
            if form:
                data = urllib.parse.urlencode(body).encode()  # type: ignore[arg-type]
                headers["Content-Type"] = "application/x-www-form-urlencoded"
            else:
                data = json.dumps(body).encode()
                headers["Content-Type"] = "application/json"
        if self.token is not None:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310 - http to 127.0.0.1 only
            self.base_url + path, data=data, headers=headers, method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ApiError(method, path, exc.code, exc.read().decode(errors="replace")) from None
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
            raise NoAnswer(f"{method} {path}: no answer within {timeout:.0f} s ({exc})") from None
        return json.loads(raw) if raw else None

    def onboard(self) -> None:
        """Create the owner as the onboarding's first step does, and log in as them."""
        created = self.request(
            "POST", "/api/onboarding/users", {**USER, "client_id": self.client_id}
        )
        tokens = self.request(
            "POST",
            "/auth/token",
            {
                "grant_type": "authorization_code",
                "code": created["auth_code"],
                "client_id": self.client_id,
            },
            form=True,
        )
        self.token = str(tokens["access_token"])

    def set_up_mqtt(self, host: str, port: int) -> dict[str, Any]:
        """The MQTT integration on ``host:port``, through the config flow the UI runs."""
        flow = self.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
        if flow.get("step_id") != "broker":
            raise CheckFailed(f"the MQTT config flow did not ask for the broker: {flow}")
        done: dict[str, Any] = self.request(
            "POST",
            f"/api/config/config_entries/flow/{flow['flow_id']}",
            {"broker": host, "port": port},
        )
        if done.get("type") != "create_entry" or done["result"].get("state") != "loaded":
            raise CheckFailed(f"the MQTT config flow did not set MQTT up: {done}")
        return done

    def states(self) -> dict[str, dict[str, Any]]:
        """Every entity's state object, by entity id."""
        return {state["entity_id"]: state for state in self.request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", f"/api/states/{entity_id}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return found

    def call_service(
        self, domain: str, service: str, data: dict[str, Any], timeout: float = REQUEST_TIMEOUT
    ) -> Any:
        """A service call; Home Assistant 2024.3 answers when it is done (a script: finished)."""
        return self.request("POST", f"/api/services/{domain}/{service}", data, timeout=timeout)

    def websocket(self, *commands: str) -> list[Any]:
        """The results of WebSocket commands without arguments, in order."""
        url = self.base_url.replace("http://", "ws://") + "/api/websocket"
        results = []
        with connect(url, open_timeout=REQUEST_TIMEOUT, max_size=None) as socket:
            socket.recv(timeout=REQUEST_TIMEOUT)  # auth_required
            socket.send(json.dumps({"type": "auth", "access_token": self.token}))
            answer = json.loads(socket.recv(timeout=REQUEST_TIMEOUT))
            if answer.get("type") != "auth_ok":
                raise CheckFailed(f"the WebSocket API refused the token: {answer}")
            for number, command in enumerate(commands, 1):
                socket.send(json.dumps({"id": number, "type": command}))
                answer = json.loads(socket.recv(timeout=REQUEST_TIMEOUT))
                if not answer.get("success"):
                    raise CheckFailed(f"WebSocket command {command} failed: {answer}")
                results.append(answer["result"])
        return results

    def notifications(self) -> dict[str, dict[str, Any]]:
        """The persistent notifications, by notification id."""
        (found,) = self.websocket("persistent_notification/get")
        return {notification["notification_id"]: notification for notification in found}
