"""Every timer the daemon arms has one owner, which cancels them all when the service stops."""

from __future__ import annotations

import asyncio
from typing import Any

from bridge.daemon.timers import Timers
from bridge.protocol.actions import ArmTimer, ToolDeadline
from bridge_tools.simulator import Simulator
from tests.conftest import Broker
from tests.helpers import SECOND


async def test_a_timer_fires_once_and_is_forgotten() -> None:
    timers = Timers()
    fired = asyncio.Event()
    timers.later(0.01 * SECOND, fired.set)
    assert len(timers) == 1
    await asyncio.wait_for(fired.wait(), 5 * SECOND)
    assert len(timers) == 0


async def test_a_keyed_timer_armed_again_replaces_the_pending_one() -> None:
    timers = Timers()
    calls: list[str] = []
    done = asyncio.Event()
    timers.later(3600 * SECOND, calls.append, "first", key="k")

    def second() -> None:
        calls.append("second")
        done.set()

    timers.later(0.01 * SECOND, second, key="k")
    assert len(timers) == 1
    await asyncio.wait_for(done.wait(), 5 * SECOND)
    assert calls == ["second"]
    assert len(timers) == 0


async def test_close_cancels_every_timer_and_arms_none_after() -> None:
    timers = Timers()
    calls: list[str] = []
    timers.later(0, calls.append, "one-shot")
    timers.later(0, calls.append, "keyed", key="k")
    timers.close()
    timers.later(0, calls.append, "after the stop")
    assert len(timers) == 0
    await asyncio.sleep(0)  # a cancelled call_later(0, ...) would have run by now
    await asyncio.sleep(0)
    assert calls == []


async def test_no_timer_survives_the_stop_of_the_service(
    broker: Broker, simulator: Simulator, start_bridge: Any
) -> None:
    """A tool deadline and a device output timer still pending, and the membership's
    heartbeat: the service's stop cancels them all."""
    bridge = await start_bridge(broker, simulator)
    service = bridge.service
    service.relay.perform(
        [ToolDeadline("c1", "call_1", 3600 * SECOND, 1), ArmTimer("c1", 3600 * SECOND)]
    )
    assert len(service.timers) == 3  # the two, and the heartbeat
    await bridge.stop()
    assert len(service.timers) == 0
    assert service.timers.closed
