"""The simulator's faster frames: the same text as encoding each event (issue 29).

Delta events are encoded from parts made once per response
(``bridge_tools.simulator.steps``), and a run of frames leaves in one write
(``bridge_tools.simulator.connection``); neither may change a byte.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.asyncio.client import connect

from bridge_tools.simulator import Simulator, SimulatorOptions
from bridge_tools.simulator.events import IdFactory, encode
from bridge_tools.simulator.inbound import CreateRequest, parse_message
from bridge_tools.simulator.plan import plan_request
from bridge_tools.simulator.steps import Plan, Send, Settings

TOOLS = [{"type": "function", "name": "set_light", "parameters": {}}]


def plan(text: str, settings: Settings = Settings(), **fields: Any) -> Plan:  # noqa: B008
    frame = {"type": "response.create", "model": "m", "input": text, **fields}
    parsed = parse_message(json.dumps(frame))
    assert isinstance(parsed, CreateRequest)
    return plan_request(parsed, None, ids=IdFactory(0), now=1_700_000_000, settings=settings)


def sends(p: Plan) -> list[Send]:
    return [step for step in p.steps if isinstance(step, Send)]


@pytest.mark.parametrize(
    ("text", "fields"),
    [
        ("What is MQTT?", {}),
        ("What is MQTT?", {"stream_id": "lane-1"}),
        ("What is MQTT?", {"stream_options": {"include_obfuscation": False}}),
        ('Please call set_light with {"state":"off","note":"é \\" \\n"}', {"tools": TOOLS}),
        ('call set_light with {"a":1}', {"tools": TOOLS, "stream_id": "b"}),
    ],
)
def test_every_frame_is_the_encoded_event(text: str, fields: dict[str, Any]) -> None:
    steps = sends(plan(text, **fields))
    assert any(step.text is not None for step in steps)
    assert [step.encoded() for step in steps] == [encode(step.event) for step in steps]


@given(st.text(min_size=1, max_size=80))
def test_any_reply_text_encodes_the_same(reply: str) -> None:
    steps = sends(plan("x", Settings(fixed_reply=reply)))
    assert [step.encoded() for step in steps] == [encode(step.event) for step in steps]


async def test_a_long_reply_arrives_frame_by_frame_in_order() -> None:
    """Over a socket: one message per event, every one as encoded, in order."""
    settings = Settings(fixed_reply=" ".join(["word"] * 300))
    expected = [encode(step.event) for step in sends(plan("bench", settings))]
    options = SimulatorOptions(fixed_reply=settings.fixed_reply)
    async with Simulator(options) as simulator, connect(simulator.url) as ws:
        await ws.send(json.dumps({"type": "response.create", "model": "m", "input": "bench"}))
        got = [await ws.recv() for _ in expected]
    assert len(got) == len(expected) > 300
    # Ids and times come from the server's own counter and clock: compare the rest.
    for frame, want in zip(got, expected, strict=True):
        a, b = json.loads(frame), json.loads(want)
        assert (a["type"], a["sequence_number"]) == (b["type"], b["sequence_number"])
        if a["type"] == "response.output_text.delta":
            assert (a["delta"], list(a)) == (b["delta"], list(b))
