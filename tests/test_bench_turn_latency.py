"""bench.turn_latency, run briefly: every case answers on both transports, and the report's sums."""

from __future__ import annotations

import pytest

from bench.turn_latency import Samples, Turn, main, report
from tests.conftest import ensure_mosquitto


def turn(first_delta: float, completed: float) -> Turn:
    return Turn(first_delta=first_delta, completed=completed)


def test_report_gives_p50_p95_and_http_over_websocket_ratios() -> None:
    samples = Samples()
    samples.add("ws", [turn(10, 12), turn(4, 6), turn(4, 6)])
    samples.add("http replay", [turn(20, 24), turn(6, 9), turn(6, 9)])
    samples.first["ws send"] = [turn(5, 7)]
    samples.first["ws warm-up"] = [turn(4, 6)]
    lines = report(samples)
    assert any(
        "first turn  ws " in line and "first delta  10.00 /  10.00" in line for line in lines
    )
    assert any(
        "follow-up  http replay" in line and "completed 1.50, first delta 1.50" in line
        for line in lines
    )
    assert any(
        "first turn  http replay" in line and "completed 2.00, first delta 2.00" in line
        for line in lines
    )
    assert lines[-1].endswith("without: 0.80 (p50)")


@pytest.mark.integration
def test_one_short_run_measures_every_case(capsys: pytest.CaptureFixture[str]) -> None:
    ensure_mosquitto()
    main(["--rounds", "1", "--turns", "2", "--words", "3", "--pause-ms", "0"])
    out = capsys.readouterr().out
    for kind, case in [
        ("first turn", "ws"),
        ("first turn", "http server"),
        ("first turn", "http replay"),
        ("first turn", "ws send"),
        ("first turn", "warm-up itself"),
        ("first turn", "ws warm-up"),
        ("follow-up", "ws"),
        ("follow-up", "http server"),
        ("follow-up", "http replay"),
    ]:
        assert f"{kind}  {case} " in out, out
    assert "follow-up  http replay     completed" in out
    assert "warm-up: first delta after a generate: false response / without:" in out
