"""What is checked in the booted guest, with systemd's own tools. One function per check.

Each returns the line it prints after ``PASS``, or raises CheckFailed with the
line after ``FAIL``. Between checks :func:`baseline` puts the service back as
the install left it (the check's config, no extra drop-in, running), so a
failed check does not take the following ones with it.

The guest runs the unit as shipped, plus one drop-in, ``check-watchdog.conf``:
``WatchdogSec=10s`` instead of 60 s, so the watchdog check takes seconds, not
minutes.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.homeassistant_check.processes import NotYet, timeout_factor, wait_until
from bridge_tools.systemd_check import SECURITY_MAX, UNIT
from bridge_tools.systemd_check.guest import Guest
from bridge_tools.systemd_check.rootfs import PROJECT

KEY: Final = "sk-check-systemd-canary-0123456789abcdefXYZ"  # must never show up
SIM_PORT: Final = 8765
WATCHDOG_SEC: Final = 10
BIN: Final = "/opt/openai-mqtt-bridge/bin"
ETC: Final = "/etc/openai-mqtt-bridge"
CONFIG: Final = f"{ETC}/config.yaml"
DROPINS: Final = f"/etc/systemd/system/{UNIT}.service.d"
STATE: Final = "/var/lib/private/openai-mqtt-bridge"
SOURCE: Final = "/root/openai-mqtt-bridge"  # the checkout's files, copied in (the README's cwd)
WHEELHOUSE: Final = "/root/wheelhouse"
PROBE: Final = (f"{BIN}/python", "-m", "bridge_tools.systemd_check.probe")
CONNECTED: Final = "broker connected; 0 connections open"
BASE_CONFIG: Final = f"""\
# scripts/check-systemd: the simulator, in the guest too, stands in for OpenAI.
openai:
  base_url: http://127.0.0.1:{SIM_PORT}/v1
profiles:
  default:
    request: {{model: gpt-5.4-nano, store: false}}
"""
# The guest's Mosquitto: open on 1883 as Debian ships it; on 1884 it refuses everyone.
MOSQUITTO: Final = """\
per_listener_settings true
listener 1883 127.0.0.1
allow_anonymous true
listener 1884 127.0.0.1
allow_anonymous false
"""
WORKERS_DROPIN: Final = f"""\
[Service]
ExecStart=
ExecStart={BIN}/openai-mqtt-bridge run --config {CONFIG} --workers 2
"""


@dataclass
class Context:
    """The guest, and what the checks learn as they go."""

    guest: Guest
    wheels: list[str]
    notes: dict[str, Any] = field(default_factory=dict)


Check = Callable[[Context], str]


# Setup ---------------------------------------------------------------------------------------


def readme_steps(readme: str) -> str:
    """The README's install steps (Operations, steps 1 to 4) as the check runs them, in /root:
    offline (the README's wheelhouse line for step 1), the check's config for ``editor``, the
    canary for ``'sk-...'``, no broker password (so no drop-in either); ``enable --now`` is
    the ready check's. CheckFailed if the README's block no longer has that shape."""
    blocks = re.findall(r"^```sh\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    steps = [block for block in blocks if block.startswith("# 1. The program")]
    offline = re.findall(r"^/opt/openai-mqtt-bridge/bin/pip install --no-index .*$", readme, re.M)
    if len(steps) != 1 or len(offline) != 1:
        raise CheckFailed("the README has no (or more than one) install block / wheelhouse line")
    lines: list[str] = []
    done: set[str] = set()
    for line in steps[0].splitlines():
        if line.startswith("/opt/openai-mqtt-bridge/bin/pip install './"):
            line = offline[0]
            done.add("pip")
        elif line.startswith("editor "):
            line = f"cat {SOURCE}/check-config.yaml > {CONFIG}"
            done.add("editor")
        elif "'broker password'" in line:
            continue
        elif line.startswith("systemctl enable --now"):
            done.add("enable")
            break
        if "'sk-...'" in line:
            line = line.replace("'sk-...'", f"'{KEY}'")
            done.add("key")
        lines.append(line)
    if done != {"pip", "editor", "key", "enable"}:
        raise CheckFailed(f"the README's install block changed shape (found only {sorted(done)})")
    return "cd /root\n" + "\n".join(lines) + "\n"


def install(ctx: Context) -> str:
    """The README's steps, offline; the simulator started beside it; the watchdog drop-in."""
    g = ctx.guest
    output = g.sh(readme_steps((PROJECT / "docs/operations/systemd.md").read_text()), timeout=300)
    if "api_key: REDACTED (from systemd credential openai_api_key)" not in output:
        raise CheckFailed(
            f"check-config does not show the credential as the key's source:\n{output}"
        )
    if g.sh(f"ls {DROPINS} 2>/dev/null || true").strip():
        raise CheckFailed("a credential drop-in was written for a file that does not exist")
    g.write(f"{DROPINS}/check-watchdog.conf", f"[Service]\nWatchdogSec={WATCHDOG_SEC}s\n")
    g.run("systemctl", "daemon-reload")
    g.write("/etc/mosquitto/conf.d/check-systemd.conf", MOSQUITTO)
    g.run("systemctl", "restart", "mosquitto")
    argv = [f"{BIN}/openai-mqtt-bridge", "simulate", "--port", str(SIM_PORT), "--api-key", KEY]
    g.run(
        "systemd-run",
        "--unit=openai-simulator",
        "--description=the simulator, for check-systemd",
        "--property=Type=exec",
        *argv,
    )
    probe = f"import socket; socket.create_connection(('127.0.0.1', {SIM_PORT}), 1).close()"
    g.wait_for(
        "the simulator listens",
        lambda: "" if g.run(f"{BIN}/python", "-c", probe, check=False).returncode == 0 else None,
    )
    version = g.run(f"{BIN}/openai-mqtt-bridge", "--version").stdout.strip()
    return (
        f"{version} from a wheelhouse of {len(ctx.wheels)} wheels (no index); check-config "
        "shows the key REDACTED (from systemd credential openai_api_key); no drop-in for "
        "credential files that do not exist"
    )


# The service -----------------------------------------------------------------------------------


def ready(ctx: Context) -> str:
    g = ctx.guest
    ctx.notes["started"] = g.cursor()
    began = time.monotonic()
    g.run("systemctl", "enable", "--now", UNIT, timeout=120)
    took = time.monotonic() - began
    state = g.show(UNIT, "ActiveState", "SubState", "StatusText")
    if (state["ActiveState"], state["SubState"]) != ("active", "running"):
        raise CheckFailed(f"after enable --now: {state}")
    if state["StatusText"] != CONNECTED:
        raise CheckFailed(f"StatusText when enable --now returned: {state['StatusText']!r}")
    active = g.run("systemctl", "is-active", UNIT).stdout.strip()
    return f"enable --now returned in {took:.1f} s: is-active {active}, StatusText {CONNECTED!r}"


def broker_identity(ctx: Context) -> str:
    g = ctx.guest
    journal = g.wait_journal(UNIT, ctx.notes["started"], "broker 127.0.0.1:1883 is ")
    (line,) = [line for line in journal.splitlines() if "broker 127.0.0.1:1883 is " in line][:1]
    return f"at INFO on connect: {line.split(': ', 1)[-1]}"


def _ask(
    g: Guest, connection_id: str, text: str, profile: str | None = None
) -> list[dict[str, Any]]:
    argv = [*PROBE, "ask", "--id", connection_id, "--input", text, "--timeout", "30"]
    if profile is not None:
        argv += ["--profile", profile]
    result = g.run(*argv, check=False, timeout=60)
    messages = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0:
        raise CheckFailed(
            f"ask on {connection_id} got no answer ({result.returncode}): {messages[-3:]}"
        )
    return messages


def round_trip(ctx: Context) -> str:
    messages = _ask(ctx.guest, "kitchen", "Describe tulips.")
    actions = [m.get("action") for m in messages if "action" in m]
    if actions[:2] != ["connect", "ask"]:
        raise CheckFailed(f"expected connect and ask acks first, got {actions}")
    text = "".join(
        m.get("delta", "") for m in messages if m.get("type") == "response.output_text.delta"
    )
    return (
        f"ask on ai/kitchen/cmd: connect and ask acks, {len(messages)} messages, an answer of "
        f"{len(text)} characters; the simulator took the key from the credential"
    )


def secrecy(ctx: Context) -> str:
    g = ctx.guest
    pid = g.main_pid(UNIT)
    places = {
        "the unit's journal, every field (-o export)": g.run(
            "journalctl", f"--unit={UNIT}", "--output=export", "--no-pager"
        ).stdout,
        "systemctl show": g.run("systemctl", "show", UNIT).stdout,
        f"/proc/{pid}/environ": g.run("cat", f"/proc/{pid}/environ").stdout,
        f"/proc/{pid}/cmdline": g.run("cat", f"/proc/{pid}/cmdline").stdout,
    }
    leaked = [where for where, text in places.items() if KEY in text or KEY[3:] in text]
    if leaked:
        raise CheckFailed(f"the API key is in {', '.join(leaked)}")
    environ = places[f"/proc/{pid}/environ"].split("\0")
    if not any(v.startswith("CREDENTIALS_DIRECTORY=") for v in environ):
        raise CheckFailed("no CREDENTIALS_DIRECTORY in the daemon's environment")
    return "the key is in none of: " + ", ".join(places)


def _usage_total(g: Guest) -> int:
    text = g.run("cat", f"{STATE}/usage.json", check=False).stdout
    try:
        total = json.loads(text)["bridge"]["total"]
    except (ValueError, KeyError, TypeError):
        return 0
    return int(total)


def _tokens(messages: list[dict[str, Any]]) -> int:
    usage = messages[-1].get("response", {}).get("usage", {})
    return int(usage.get("total_tokens", 0))


def state_directory(ctx: Context) -> str:
    g = ctx.guest
    mode, owner = g.run("stat", "-c", "%a %u", STATE).stdout.split()
    link = g.run("readlink", "/var/lib/openai-mqtt-bridge").stdout.strip()
    if mode != "700" or owner == "0" or link != "private/openai-mqtt-bridge":
        raise CheckFailed(f"{STATE}: mode {mode}, owner {owner}; the link says {link!r}")
    before = g.wait_for(
        "usage.json counts the round trip", lambda: str(_usage_total(g) or "") or None
    )
    g.run("systemctl", "restart", UNIT, timeout=120)
    asked = _ask(g, "porch", "Describe tulips.")
    expected = int(before) + _tokens(asked)
    g.wait_for(
        f"usage.json says {expected} tokens (the earlier {before} kept across the restart)",
        lambda: "" if _usage_total(g) == expected else None,
    )
    return (
        f"{STATE} (mode 0700, owned by the dynamic uid {owner}): usage.json had {before} tokens, "
        f"{expected} after a restart and one more ask (none lost)"
    )


# Reload --------------------------------------------------------------------------------------


def reload(ctx: Context) -> str:
    g = ctx.guest
    _ask(g, "kitchen", "Describe tulips.")  # an open connection, with a conversation
    pid, cursor = g.main_pid(UNIT), g.cursor()
    pirate = "  pirate:\n    request: {model: gpt-5.4-nano, instructions: Talk like a pirate.}\n"
    g.write(CONFIG, BASE_CONFIG + pirate)
    g.run("systemctl", "reload", UNIT)
    g.wait_journal(UNIT, cursor, "config reloaded from /etc/openai-mqtt-bridge/config.yaml")
    g.wait_journal(UNIT, cursor, "Reloaded openai-mqtt-bridge.service")
    if g.main_pid(UNIT) != pid:
        raise CheckFailed("the main process changed: that was a restart, not a reload")
    asked = _ask(g, "hall", "Ahoy?", profile="pirate")
    if asked[0].get("profile") != "pirate":
        raise CheckFailed(f"the new profile was not used: {asked[0]}")
    again = _ask(g, "kitchen", "And roses?")
    if again[0].get("action") != "ask":
        raise CheckFailed(f"kitchen's connection did not survive the reload: {again[0]}")
    state = g.show(UNIT, "ActiveState", "StatusText")["ActiveState"]
    return (
        f"systemctl reload: same MainPID {pid}, {state}; a new profile answered at once; "
        "kitchen's open connection went on (its next ask needed no connect)"
    )


def reload_refused(ctx: Context) -> str:
    g = ctx.guest
    pid, cursor = g.main_pid(UNIT), g.cursor()
    g.write(CONFIG, BASE_CONFIG + "  pirate:\n    colour: red\n")
    g.run("systemctl", "reload", UNIT)
    errors = g.wait_journal(UNIT, cursor, "reload refused", priority="err")
    if len(errors.splitlines()) != 1:
        raise CheckFailed(f"expected one line at err, got:\n{errors}")
    g.wait_journal(UNIT, cursor, "Reloaded openai-mqtt-bridge.service")
    if g.main_pid(UNIT) != pid or g.show(UNIT, "ActiveState")["ActiveState"] != "active":
        raise CheckFailed("the service did not keep running as it was")
    _ask(g, "cellar", "Describe tulips.")
    return f"a bad file: one line at err ({errors.strip()[:90]}...), the running config kept"


def reload_restart_only(ctx: Context) -> str:
    g = ctx.guest
    cursor = g.cursor()
    g.write(CONFIG, BASE_CONFIG + "mqtt:\n  keepalive: 30\n")
    g.run("systemctl", "reload", UNIT)
    warning = g.wait_journal(
        UNIT, cursor, "a restart is needed to apply mqtt.keepalive", priority="warning"
    )
    return f"one line at warning: {warning.strip()[:110]}"


# Failures ---------------------------------------------------------------------------------------


def _watcher(g: Guest, topics: list[str], expect: list[str]) -> subprocess.Popen[str]:
    argv = [*PROBE, "watch", *(f"--topic={t}" for t in topics), *(f"--expect={e}" for e in expect)]
    watcher = g.start(*argv, "--timeout", str(60 * timeout_factor()))
    assert watcher.stdout is not None
    line = watcher.stdout.readline()
    if line.strip() != "subscribed":
        watcher.kill()
        raise CheckFailed(f"the MQTT watcher did not start: {line}{watcher.stdout.read()}")
    return watcher


def _watched(watcher: subprocess.Popen[str], what: str) -> str:
    try:
        output, _ = watcher.communicate(timeout=90 * timeout_factor())
    except subprocess.TimeoutExpired:
        watcher.kill()
        output, _ = watcher.communicate()
    if watcher.returncode != 0:
        raise CheckFailed(f"MQTT never showed {what}; it showed:\n{output}")
    return output


def _back(g: Guest, old_pid: int, status: str = CONNECTED) -> int:
    def probe() -> str | None:
        state = g.show(UNIT, "MainPID", "ActiveState", "StatusText")
        fresh = state["MainPID"] not in ("0", str(old_pid))
        up = state["ActiveState"] == "active" and state["StatusText"] == status
        return state["MainPID"] if fresh and up else None

    return int(g.wait_for(f"{UNIT} running again with {status!r}", probe, timeout=60))


def watchdog(ctx: Context) -> str:
    g = ctx.guest
    watcher = _watcher(g, ["ai/bridge/state"], ["offline", "online"])
    pid, cursor = g.main_pid(UNIT), g.cursor()
    began = time.monotonic()
    g.sh(f"kill -STOP {pid}")  # the shell's kill: no procps in a minimal Debian
    g.wait_journal(
        UNIT,
        cursor,
        f"Watchdog timeout (limit {WATCHDOG_SEC}s)",
        "code=killed, status=6/ABRT",
        "Failed with result 'watchdog'",
        timeout=3 * WATCHDOG_SEC,
    )
    _back(g, pid)
    took = time.monotonic() - began
    _watched(watcher, "offline (the will), then online")
    errors = g.journal(UNIT, cursor, priority="err")
    if "Fatal Python error: Aborted" not in errors or 'File "' not in errors:
        raise CheckFailed(f"no stacks at priority err; journalctl -p err shows:\n{errors}")
    stack_lines = sum('File "' in line for line in errors.splitlines())
    return (
        f"SIGSTOP: Watchdog timeout, code=killed status=6/ABRT, Result=watchdog; the stacks "
        f"at err ({stack_lines} frames); the will said offline; online again {took:.1f} s "
        "after the SIGSTOP"
    )


def crash(ctx: Context) -> str:
    g = ctx.guest
    watcher = _watcher(g, ["ai/bridge/state"], ["offline", "online"])
    before = g.show(UNIT, "MainPID", "NRestarts")
    cursor, began = g.cursor(), time.monotonic()
    g.sh(f"kill -KILL {before['MainPID']}")
    g.wait_journal(UNIT, cursor, "code=killed, status=9/KILL")
    _back(g, int(before["MainPID"]))
    took = time.monotonic() - began
    _watched(watcher, "offline (the will), then online")
    restarts = g.show(UNIT, "NRestarts")["NRestarts"]
    return (
        f"kill -9: the will said offline, systemd restarted it (NRestarts {before['NRestarts']} "
        f"-> {restarts}), online again in {took:.1f} s"
    )


def stop(ctx: Context) -> str:
    g = ctx.guest
    _ask(g, "kitchen", "Describe tulips.")
    watcher = _watcher(g, ["ai/kitchen/events", "ai/bridge/state"], ['"code":1001', "offline"])
    cursor, began = g.cursor(), time.monotonic()
    g.run("systemctl", "stop", UNIT, timeout=60)
    took = time.monotonic() - began
    _watched(watcher, "a close ack with code 1001, then offline")
    state = g.show(UNIT, "ActiveState", "Result", "ExecMainStatus")
    if (state["ActiveState"], state["Result"], state["ExecMainStatus"]) != (
        "inactive",
        "success",
        "0",
    ):
        raise CheckFailed(f"after stop: {state}")
    g.wait_journal(UNIT, cursor, "stopped")
    g.run("systemctl", "start", UNIT, timeout=120)
    return f"systemctl stop in {took:.2f} s: close ack 1001, offline, exit 0, Result=success"


def _fails_to_start(g: Guest, config: str, code: int, why: str) -> str:
    """Restart with ``config``: it must fail with exit ``code``, not be restarted, and
    ``journalctl -p err`` must say ``why``; the bridge's lines there."""
    cursor = g.cursor()
    g.write(CONFIG, config)
    result = g.run("systemctl", "restart", UNIT, check=False, timeout=120)
    if result.returncode == 0:
        raise CheckFailed("systemctl restart succeeded with a config that should fail")
    state = g.show(UNIT, "ActiveState", "SubState", "Result", "ExecMainStatus")
    if state["ExecMainStatus"] != str(code) or state["SubState"] != "failed":
        raise CheckFailed(f"expected exit {code} and no restart (failed), got {state}")
    return _bridge_lines(g.wait_journal(UNIT, cursor, why, priority="err", timeout=10))


def config_error(ctx: Context) -> str:
    bad = BASE_CONFIG + "mqtt:\n  colour: red\n"
    errors = _fails_to_start(ctx.guest, bad, 78, "config error: mqtt.colour: unknown key")
    return f"exit 78, no restart (SubState failed); journalctl -p err: {errors}"


def refused(ctx: Context) -> str:
    """The guest's Mosquitto refuses everyone on 1884 (install): a fatal error at start."""
    bad = BASE_CONFIG + "mqtt:\n  port: 1884\n"
    errors = _fails_to_start(ctx.guest, bad, 77, "not authorized; not retrying (exit 77)")
    return f"a broker that refuses us: exit 77, no restart; journalctl -p err: {errors}"


def _bridge_lines(errors: str) -> str:
    """The bridge's own lines among journalctl -p err's (systemd's are about the unit)."""
    own = [line for line in errors.splitlines() if not line.startswith(f"{UNIT}.service: ")]
    own = [line for line in own if not line.startswith("Failed to start")]
    return " | ".join(line.strip()[:100] for line in own) or "(none)"


# The unit itself ---------------------------------------------------------------------------------


def security(ctx: Context) -> str:
    g = ctx.guest
    output = g.run("systemd-analyze", "security", UNIT, "--no-pager").stdout
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\S+)", output)
    if found is None:
        raise CheckFailed(f"no overall exposure level in:\n{output[-500:]}")
    score = float(found.group(1))
    version = g.run("systemctl", "--version").stdout.split("\n", 1)[0]
    if score > SECURITY_MAX:
        raise CheckFailed(f"exposure {score} is above {SECURITY_MAX} ({version})")
    return f"exposure {score} {found.group(2)} (at most {SECURITY_MAX}) on {version}"


def workers(ctx: Context) -> str:
    g = ctx.guest
    g.write(f"{DROPINS}/workers.conf", WORKERS_DROPIN)
    g.run("systemctl", "daemon-reload")
    g.run("systemctl", "restart", UNIT, timeout=120)
    status = g.show(UNIT, "StatusText")["StatusText"]
    if status != "2 of 2 workers ready":
        raise CheckFailed(f"StatusText after restart: {status!r}")
    _ask(g, "garden", "Describe tulips.")
    cursor = g.cursor()
    g.run("systemctl", "reload", UNIT)

    def both_reloaded() -> str | None:
        journal = g.journal(UNIT, cursor)
        return journal if journal.count("config reloaded from") == 2 else None

    g.wait_for("both workers reloaded", both_reloaded)
    main = g.main_pid(UNIT)
    children = g.sh(f"cat /proc/{main}/task/*/children").split()
    if len(children) != 2:
        raise CheckFailed(f"the supervisor has {len(children)} children, not 2")
    cursor = g.cursor()
    g.sh(f"kill -STOP {children[0]}")
    g.wait_journal(
        UNIT, cursor, "no watchdog ping", "was killed by SIGABRT", timeout=4 * WATCHDOG_SEC
    )
    errors = g.journal(UNIT, cursor, priority="err")
    if "Fatal Python error: Aborted" not in errors:
        raise CheckFailed(f"the stopped worker's stacks are not at err:\n{errors}")
    g.wait_for(
        "2 of 2 workers ready again",
        lambda: "" if g.show(UNIT, "StatusText")["StatusText"] == "2 of 2 workers ready" else None,
        timeout=60,
    )
    if g.main_pid(UNIT) != main:
        raise CheckFailed("the supervisor was restarted, not just the worker")
    return (
        "ExecStart= drop-in with --workers 2: '2 of 2 workers ready', a round trip, reload "
        "reached both workers; a SIGSTOPped worker got SIGCONT and SIGABRT, its stacks at err, "
        "and was restarted alone"
    )


# Between checks ----------------------------------------------------------------------------------


def baseline(ctx: Context) -> None:
    """The service as the install left it: the check's config, no extra drop-in, running."""
    g = ctx.guest
    changed = False
    if g.run("cat", CONFIG, check=False).stdout != BASE_CONFIG:
        g.write(CONFIG, BASE_CONFIG)
        changed = True
    extra = [name for name in g.sh(f"ls {DROPINS}").split() if name != "check-watchdog.conf"]
    if extra:
        g.run("rm", *(f"{DROPINS}/{name}" for name in extra))
        g.run("systemctl", "daemon-reload")
        changed = True
    if changed or g.show(UNIT, "ActiveState")["ActiveState"] != "active":
        g.run("systemctl", "reset-failed", UNIT, check=False)
        g.run("systemctl", "restart", UNIT, timeout=120)

    def connected() -> str:
        status = g.show(UNIT, "StatusText")["StatusText"]
        if not status.startswith("broker connected"):
            raise NotYet(status)
        return status

    wait_until(f"{UNIT} is back to its baseline", connected, 60)


CHECKS: Final[tuple[tuple[str, Check], ...]] = (
    ("install", install),
    ("ready", ready),
    ("broker identity", broker_identity),
    ("round trip", round_trip),
    ("credential secrecy", secrecy),
    ("state directory", state_directory),
    ("reload", reload),
    ("reload: bad file", reload_refused),
    ("reload: restart-only key", reload_restart_only),
    ("watchdog", watchdog),
    ("crash and restart", crash),
    ("stop", stop),
    ("config error", config_error),
    ("broker refused", refused),
    ("security", security),
    ("--workers", workers),
)
SETUP: Final = ("install", "ready")  # if one of these fails, the rest cannot run
