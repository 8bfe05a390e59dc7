"""The check's steps, in order, each timed; and stopping everything at the end.

The first step that fails ends the check with its message. Whatever happens,
failure, Ctrl-C or SIGTERM included, every process the check started is
stopped before it returns (Home Assistant first, the broker last), and the
timings are printed. The run directory (configs and logs) is removed after a
success and kept, with its path printed, after a failure or with ``--keep``.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Final, TextIO

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.client import HomeAssistant
from bridge_tools.homeassistant_check.entities import (
    check_ask_entity,
    check_discovery,
    expected_entities,
)
from bridge_tools.homeassistant_check.examples import (
    MISSING_ASSISTANT,
    bridge_heard_of,
    bridge_log_problems,
    check_example,
    check_example_entities,
    check_missing_assistant,
    check_packages,
    check_tool_loop,
    homeassistant_log_problems,
    load_examples,
    sort_examples,
)
from bridge_tools.homeassistant_check.install import ensure_homeassistant, python_problem
from bridge_tools.homeassistant_check.processes import Child, Children
from bridge_tools.homeassistant_check.stack import (
    ASSISTANT_ID,
    add_examples,
    bridge_config,
    start_bridge,
    start_broker_and_simulator,
    start_homeassistant,
    write_homeassistant_config,
)
from bridge_tools.local_broker import LocalMosquitto, free_port

ASK_QUESTION: Final = "How do I keep basil alive on a windowsill?"
SCRIPT_QUESTIONS: Final = (
    "How do I water tomatoes in a heat wave?",
    "And how often should I do that?",
)


@dataclass(frozen=True)
class Options:
    version: str
    cache_root: Path
    python: str
    examples: Path
    keep: bool = False
    current: bool = False  # the integration as Assist's agent in a current HA (trixie root)


@dataclass
class Report:
    """Prints each step as it ends, and the timings and a count of the steps at the end."""

    out: TextIO = sys.stdout
    timings: list[tuple[str, float]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    failed: str | None = None  # the step that failed (or was interrupted)

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[Callable[[str], None]]:
        print(f"-- {title}", file=self.out, flush=True)
        start = time.monotonic()

        def note(text: str) -> None:
            print(f"   {text}", file=self.out, flush=True)

        try:
            yield note
        except BaseException:
            self.failed = title
            raise
        elapsed = time.monotonic() - start
        self.timings.append((title, elapsed))
        print(f"   ok ({elapsed:.1f} s)", file=self.out, flush=True)

    def print_summary(self) -> None:
        """The timings, then a plain closing line that CI logs can be read by."""
        print("\ntimings:", file=self.out)
        for title, elapsed in self.timings:
            print(f"  {elapsed:7.1f} s  {title}", file=self.out)
        print(f"  {time.monotonic() - self.started:7.1f} s  in all", file=self.out)
        if self.failed is not None:
            print(f"failed: {self.failed}", file=self.out)
        failed = int(self.failed is not None)
        print(
            f"homeassistant: {len(self.timings)} passed, {failed} failed", file=self.out, flush=True
        )


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run(options: Options, out: TextIO = sys.stdout) -> int:
    """The whole check; 0 if every step passed, 1 on a failure, 130 if interrupted."""
    report = Report(out)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    run_dir = Path(tempfile.mkdtemp(prefix="homeassistant-check-"))
    children = Children(run_dir)
    brokers: list[LocalMosquitto] = []
    code = 1
    try:
        if options.current:
            # Imported here: agent reuses this module's Report.
            from bridge_tools.homeassistant_check.agent import check_current

            check_current(options.version, options.cache_root, report, run_dir, children, brokers)
        else:
            _check(options, report, run_dir, children, brokers)
        code = 0
    except CheckFailed as exc:
        print(f"\nFAILED: {exc}", file=out, flush=True)
    except KeyboardInterrupt:
        print("\ninterrupted", file=out, flush=True)
        code = 130
    finally:
        if code != 0 and report.failed is None:
            report.failed = "(between steps)"
        # A second Ctrl-C must not leave processes behind: ignore it while stopping.
        interrupt = signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            children.stop_all()
            for broker in brokers:
                broker.stop()
        finally:
            signal.signal(signal.SIGINT, interrupt)
            signal.signal(signal.SIGTERM, previous)
        if code == 0 and not options.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            print(f"\nconfigs and logs: {run_dir}", file=out, flush=True)
        report.print_summary()
    return code


def _check(
    options: Options,
    report: Report,
    run_dir: Path,
    children: Children,
    brokers: list[LocalMosquitto],
) -> None:
    with report.step(f"Home Assistant {options.version}") as note:
        problem = python_problem(options.python, options.version)
        if problem:
            raise CheckFailed(problem)
        installed = ensure_homeassistant(options.version, options.cache_root, options.python, note)
        note(f"{'installed' if installed.fresh else 'cached'} in {installed.directory}")

    with report.step("Mosquitto, the simulator and the bridge") as note:
        broker, simulator, simulator_port = start_broker_and_simulator(run_dir, children, brokers)
        config = bridge_config(broker.host, broker.port, simulator_port)
        expected = expected_entities(config)
        bridge = start_bridge(children, run_dir, config)
        note(f"broker 127.0.0.1:{broker.port}, simulator :{simulator_port}, bridge online")

    with report.step("Home Assistant starts (a minimal config)") as note:
        config_dir = run_dir / "homeassistant"
        ha_log = config_dir / "home-assistant.log"
        http_port = free_port()
        write_homeassistant_config(config_dir, http_port)
        ha = HomeAssistant(http_port)
        homeassistant = start_homeassistant(children, installed, config_dir, ha)
        note(f"{ha.base_url}, config {config_dir}")

    with report.step("onboarding: the owner and a token, through the REST API"):
        ha.onboard()

    with report.step("MQTT set up through the config flow"):
        ha.set_up_mqtt(broker.host, broker.port)

    # The examples' automations subscribe when they load: as in a real installation,
    # they load in a Home Assistant that starts with MQTT set up.
    with report.step("Home Assistant restarts with MQTT set up and the examples") as note:
        _stop_homeassistant(children, homeassistant, ha_log, run_dir / "first-start.log")
        scripts, packages = sort_examples(options.examples)
        add_examples(config_dir, scripts, packages)
        homeassistant = start_homeassistant(
            children, installed, config_dir, ha, name="homeassistant-restarted"
        )
        note(", ".join(path.name for path in [*scripts, *packages]))
    watch = [homeassistant, bridge, simulator]

    with report.step(f"discovery: {len(expected)} entities, each with a sensible state") as note:
        discovered = check_discovery(ha, expected, watch)
        note("bridge: " + ", ".join(sorted(discovered.bridge.values())))
        for connection_id, entities in discovered.assistants.items():
            note(f"assistant {connection_id}: " + ", ".join(sorted(entities.values())))
    assistant = discovered.assistants[ASSISTANT_ID]

    with report.step("the Ask entity answers end to end (text.set_value)") as note:
        answer = check_ask_entity(ha, discovered, ASSISTANT_ID, ASK_QUESTION, watch)
        text = str(answer["text"])
        cut = "cut to 255 in the state" if len(text) > 255 else "not cut"
        note(f"{len(text)} characters ({cut}): {_short(text)}")

    with report.step("the examples use the entity ids discovery created"):
        examples = load_examples(scripts)
        check_example_entities(examples, assistant)

    if packages:
        with report.step(
            f"the example packages load: {', '.join(p.name for p in packages)}"
        ) as note:
            note(", ".join(check_packages(ha, packages)))
        with report.step("a tool call answered by Home Assistant's automation") as note:
            note(_short(check_tool_loop(ha, assistant, watch)))

    for example in examples:
        with report.step(f"script.{example.script_id} answers twice in a row") as note:
            for question in SCRIPT_QUESTIONS:
                text = check_example(ha, example, assistant, question, watch, ha_log)
                note(f"{question!r} -> {_short(text)}")

    for example in examples:
        with report.step(
            f"script.{example.script_id} for an assistant that is not configured says so"
        ) as note:
            note(_short(check_missing_assistant(ha, example, assistant, watch), 110))

    with report.step("Home Assistant stops; its log has no problem") as note:
        others = _stop_homeassistant(children, homeassistant, ha_log, ha_log)
        note(f"{len(others)} unrelated warnings" + "".join(f"\n     {line}" for line in others))

    with report.step("the bridge stops; its log has no problem"):
        code = children.stop(bridge)
        problems = bridge_log_problems(bridge.log)
        if code != 0:
            problems.append(f"the bridge exited with code {code}")
        # The scripts run for a missing assistant stopped before asking: the bridge logs
        # each upstream it opens, as it did for the assistant the examples use.
        problems += bridge_heard_of(bridge.log, MISSING_ASSISTANT)
        if not bridge_heard_of(bridge.log, ASSISTANT_ID):
            problems.append(f"no log line of [{ASSISTANT_ID}]: the log shows no upstream")
        if problems:
            raise CheckFailed("the bridge's log:\n  " + "\n  ".join(problems))


def _stop_homeassistant(children: Children, child: Child, log: Path, keep_as: Path) -> list[str]:
    """Stop Home Assistant; fail on a problem in its log (kept as ``keep_as``); other warnings."""
    code = children.stop(child, timeout=60)
    if keep_as != log:
        shutil.copy(log, keep_as)
    problems, others = homeassistant_log_problems(keep_as)
    if code != 0:
        problems.append(f"Home Assistant exited with code {code}")
    if problems:
        raise CheckFailed(f"{keep_as}:\n  " + "\n  ".join(problems))
    return others


def _short(text: str, width: int = 70) -> str:
    return repr(text if len(text) <= width else text[: width - 1] + "…")
