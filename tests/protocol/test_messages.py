"""The relayed event's fast constructor builds exactly what Publish's own does."""

from __future__ import annotations

import dataclasses

import pytest

from bridge.protocol.messages import RELAYED_FIELDS, Publish, relayed_event


def test_the_fields_it_sets_are_publishs_fields_in_order() -> None:
    assert tuple(field.name for field in dataclasses.fields(Publish)) == RELAYED_FIELDS


@pytest.mark.parametrize("properties", [(), (("direction", "server"), ("event", "x"))])
def test_it_equals_the_dataclass_built_publish(properties: tuple[tuple[str, str], ...]) -> None:
    built = relayed_event("ai/c1/events", b'{"type":"x"}', 1, properties)
    expected = Publish("ai/c1/events", b'{"type":"x"}', 1, properties, relayed=True)
    assert built == expected
    assert hash(built) == hash(expected)
    assert dataclasses.asdict(built) == dataclasses.asdict(expected)
    assert type(built) is Publish


def test_defaults_it_sets_are_the_dataclass_defaults() -> None:
    built = relayed_event("t", b"", 0, ())
    for field in dataclasses.fields(Publish)[4:]:
        if field.name != "relayed":
            assert getattr(built, field.name) == field.default, field.name


def test_it_stays_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        relayed_event("t", b"", 0, ()).qos = 1  # type: ignore[misc]
