"""scripts/check-systemd's pure parts: the README's install steps as the check runs them, and
the host's Debian mirror. (The check itself needs root and boots a guest: `.ci/run` runs it.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge_tools.homeassistant_check import CheckFailed
from bridge_tools.systemd_check.checks import KEY, readme_steps
from bridge_tools.systemd_check.rootfs import DEFAULT_MIRROR, host_mirror

README = Path(__file__).parents[2] / "docs/operations/systemd.md"  # the install steps


def test_the_check_runs_the_readmes_install_steps_offline() -> None:
    script = readme_steps(README.read_text())
    assert "--no-index --find-links ./wheelhouse 'openai-mqtt-bridge[metrics]'" in script
    assert f"printf '%s\\n' '{KEY}' | install -m 0600 /dev/stdin" in script
    assert "check-config --config /etc/openai-mqtt-bridge/config.yaml" in script
    assert "if [ -f /etc/openai-mqtt-bridge/$credential ]; then" in script
    assert "editor" not in script
    assert "broker password" not in script  # so the drop-in loop must write nothing
    assert "enable --now" not in script  # the ready check's
    assert "<<<" not in script  # plain sh: no bash here-strings


def test_a_readme_whose_steps_changed_shape_fails_the_check() -> None:
    readme = README.read_text().replace("editor /etc/openai-mqtt-bridge/config.yaml", "vi x")
    with pytest.raises(CheckFailed, match="changed shape"):
        readme_steps(readme)


def test_the_mirror_is_the_one_apt_uses_here(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    assert host_mirror(tmp_path) == DEFAULT_MIRROR
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n"
        "Components: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\n"
        "Components: main\n"
    )
    assert host_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "# a comment\ndeb [arch=amd64] http://old.example/debian bookworm main\n"
    )
    assert host_mirror(tmp_path) == "http://old.example/debian"
