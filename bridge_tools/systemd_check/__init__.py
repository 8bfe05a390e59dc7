"""``scripts/check-systemd``: the bridge under a real systemd, as a user would install it.

One command builds (once, then cached) a minimal Debian bookworm root file
system with systemd and Mosquitto from Debian's packages (``debootstrap``),
builds a wheelhouse of the project and its dependencies on the host, boots the
root file system with ``systemd-nspawn -b --private-network`` (systemd 252 as
PID 1, an overlay over the cached tree, so every run starts clean), installs
the bridge the way the README's Operations section says, offline from that
wheelhouse, starts the simulator inside too (from the same wheel), and checks
the unit with systemd's own tools (``systemctl``, ``journalctl``,
``systemd-analyze``): readiness, a round trip, reload, the watchdog, a crash
and restart with the will, stop, failures at priority err, credential
secrecy, the state directory, the security score and the ``--workers``
drop-in. Each check prints one line; any failure makes the exit code 1.

The guest is driven with ``nsenter`` into the namespaces of its PID 1 (no
``machinectl``: the container is not registered, and the host may have no
systemd of its own). Needs root, ``debootstrap`` and ``systemd-nspawn``
(installed with apt-get when missing).

Modules: ``rootfs`` (the cached tree and the wheelhouse), ``guest`` (booting
and driving it), ``probe`` (an MQTT client run inside the guest), ``checks``
(what is checked), ``runner`` (order, lines, timings).
"""

from typing import Final

SUITE: Final = "bookworm"  # Debian 12: systemd 252, Python 3.11, Mosquitto 2.0.11
PACKAGES: Final = ("systemd", "dbus", "mosquitto", "python3", "python3-venv")
UNIT: Final = "openai-mqtt-bridge"
# systemd-analyze security's "Overall exposure level" must not be above this (1.3 on 252).
SECURITY_MAX: Final = 1.5
