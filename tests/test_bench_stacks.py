"""The py-spy summary the README's profile comes from: owners, self time, inclusive time."""

from __future__ import annotations

from bench.stacks import owner, parse, summarize

STACKS = [
    "main (bridge/cli.py:51);run (asyncio/runners.py:190);"
    "PublishPipeline._hand (bridge/mqtt_pipeline.py:160);Client.publish (paho/mqtt/client.py:1) 6",
    "main (bridge/cli.py:51);run (asyncio/runners.py:190);"
    "PublishPipeline._hand (bridge/mqtt_pipeline.py:160) 2",
    "main (bridge/cli.py:51);Frame.parse (websockets/frames.py:9) 2",
    "",
]


def test_owner_is_read_off_the_file() -> None:
    assert owner("Client.publish (paho/mqtt/client.py:1)") == "paho-mqtt"
    assert owner("select (selectors.py:469)") == "selectors"
    assert owner("f (somewhere/else.py:3)") == "other"


def test_summary_counts_self_time_by_library_and_inclusive_time_of_bridge_code() -> None:
    summary = summarize(parse(STACKS), top=5)
    assert summary.startswith("10 samples")
    by_library = summary.split("self time, top")[0]
    assert " 60.0%  paho-mqtt" in by_library
    assert " 20.0%  bridge" in by_library
    assert " 20.0%  websockets" in by_library
    inclusive = summary.split("inclusive time of the bridge's functions:")[1]
    assert " 80.0%  PublishPipeline._hand (bridge/mqtt_pipeline.py)" in inclusive
    assert "100.0%  main (bridge/cli.py)" in inclusive
