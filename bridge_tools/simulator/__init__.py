"""A local simulator of OpenAI's Responses API in WebSocket mode.

It speaks the real protocol (``wss://api.openai.com/v1/responses``): the canonical
event sequence, ``stream_id`` lanes, the connection-local continuation cache, the
60-minute connection limit, and scripted faults for testing clients. Use it for
offline demos (``openai-mqtt-bridge simulate``) and as the upstream in tests::

    async with Simulator(SimulatorOptions(api_key="sk-test")) as sim:
        client = AsyncOpenAI(base_url=sim.base_url, api_key="sk-test")
        ...

It also calls tools deterministically, so a client's tool loop runs offline: offer
function tools and write ``call <name> with <json>`` in the user message (add
``repeatedly`` to call again every round); send the outputs back and the answer quotes
them. See :mod:`~bridge_tools.simulator.tool_calls`.

Modules: ``options`` (options and records), ``text`` (deterministic answers),
``faults`` (fault vocabulary), ``inbound`` (client frames), ``state`` (lanes and
cache), ``events``, ``steps`` and ``plan`` (what to send), ``tool_calls`` (function
calls and their outputs), ``handshake`` (upgrade answers) are free of I/O;
``connection`` and ``server`` do the networking.
"""

from bridge_tools.simulator.faults import FAULT_HELP, Fault, FaultKind, parse_fault
from bridge_tools.simulator.options import Closed, Handshake, Received, SimulatorOptions
from bridge_tools.simulator.server import Simulator, serve

__all__ = [
    "FAULT_HELP",
    "Closed",
    "Fault",
    "FaultKind",
    "Handshake",
    "Received",
    "Simulator",
    "SimulatorOptions",
    "parse_fault",
    "serve",
]
