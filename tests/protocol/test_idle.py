"""Idle close, without a clock: the core's sweep is handed the time."""

from __future__ import annotations

import json

from bridge.protocol.actions import Action, CloseUpstream, SendUpstream
from bridge.protocol.contract import Topics
from bridge.protocol.core import BridgeCore
from bridge.protocol.messages import Publish
from bridge.protocol.sessions import SessionsConfig

URL = "wss://api.example/v1/responses"
CREATE = {"type": "response.create", "model": "m", "input": "hi"}
COMPLETED = b'{"type":"response.completed","response":{"id":"resp_1"}}'
DELTA = b'{"type":"response.output_text.delta","delta":"x"}'


def command(action: str, **fields: object) -> bytes:
    return json.dumps({"action": action, **fields}).encode()


def opened(timeout: float = 10.0) -> BridgeCore:
    core = BridgeCore(Topics("ai"), url=URL, sessions=SessionsConfig(idle_timeout=timeout))
    core.receive_command("c1", command("connect"), now=0.0)
    core.upstream_opened("c1")
    return core


def closes(actions: list[Action]) -> list[CloseUpstream]:
    return [action for action in actions if isinstance(action, CloseUpstream)]


def test_an_idle_connection_is_closed_and_reported_disconnected() -> None:
    """No command and no request for the timeout: close 1000, then `disconnected` idle timeout."""
    core = opened()  # its connect came at 0
    assert core.sweep(1.0) == []
    assert core.sweep(9.9) == []
    assert closes(core.sweep(10.0)) == [CloseUpstream("c1", 1000, "idle timeout")]
    assert core.sweep(30.0) == []  # once
    (notice,) = [a for a in core.upstream_closed("c1", 1000, "") if isinstance(a, Publish)]
    assert json.loads(notice.payload) == {
        "object": "response.websocket.connection",
        "action": "disconnected",
        "connection_id": "c1",
        "code": 1000,
        "reason": "idle timeout",
    }
    assert core.phase("c1") is None  # the id can connect again


def test_a_command_resets_the_clock() -> None:
    core = opened()
    core.sweep(1.0)
    core.receive_command("c1", command("send", event={"type": "other"}), now=8.0)  # refused
    assert core.sweep(17.9) == []
    assert closes(core.sweep(18.0))


def test_a_request_in_flight_is_never_idle() -> None:
    """A long answer is not cut: the clock starts when its request ends."""
    core = opened()
    actions = core.receive_command("c1", command("send", event=CREATE), now=1.0)
    assert isinstance(actions[-1], SendUpstream)
    core.upstream_event("c1", DELTA)
    assert core.sweep(50.0) == []
    assert core.sweep(100.0) == []
    core.upstream_event("c1", COMPLETED)
    # The clock starts at the last sweep that saw the request in flight.
    assert core.sweep(105.0) == []
    assert core.sweep(109.9) == []
    assert closes(core.sweep(110.0))


def test_off_and_while_stopping_nothing_is_closed() -> None:
    core = opened(timeout=10.0)
    core.idle_timeout = None
    assert core.sweep(1_000.0) == []
    core = opened()
    core.begin_shutdown()
    assert core.sweep(1_000.0) == []


def test_ids_that_never_open_are_not_tracked() -> None:
    """Commands for random ids leave nothing behind (no memory a client could pin)."""
    core = BridgeCore(Topics("ai"), url=URL, sessions=SessionsConfig(idle_timeout=10.0))
    for number in range(1000):
        core.receive_command(f"x{number}", command("close"), now=float(number))
    assert core.sweep(2_000.0) == []
    assert len(core._idle._activity) == 0  # noqa: SLF001 (the bound is the point of the test)
