"""The generated references and the JSON Schema agree with the code."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import yaml

from bridge.cli import main
from bridge.config.settings import config_schema, load_settings
from bridge.protocol.error_codes import ERROR_CODES
from bridge_tools.docs.reference import (
    REGENERATE,
    SCHEMA_FILE,
    config_keys,
    generated_files,
    stale_files,
)

ROOT = Path(__file__).parents[2]


def test_the_committed_references_are_what_the_code_generates() -> None:
    assert stale_files() == [], f"run {REGENERATE}"


def test_the_check_command_says_which_file_is_stale(tmp_path: Path) -> None:
    for path, text in generated_files().items():
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(text)
    assert stale_files(tmp_path) == []
    page = tmp_path / "docs/reference/configuration.md"
    page.write_text(page.read_text().replace("`mqtt.port`", "`mqtt.porte`"))
    assert stale_files(tmp_path) == [Path("docs/reference/configuration.md")]


def test_every_key_of_the_config_is_described() -> None:
    keys = list(config_keys())
    assert len(keys) > 90
    undescribed = [key.path for key in keys if len(key.description) < 10]
    assert undescribed == [], "describe them where they are declared (an attribute docstring)"


def test_schema_command_prints_the_published_schema(capsys) -> None:
    assert main(["schema"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == config_schema()
    assert printed == json.loads((ROOT / SCHEMA_FILE).read_text())
    assert printed["properties"]["mqtt"]
    assert printed["additionalProperties"] is False


def test_the_example_config_names_the_schema_and_passes_it() -> None:
    example = ROOT / "config.example.yaml"
    first = example.read_text().split("\n", 1)[0]
    assert first == "# yaml-language-server: $schema=docs/config.schema.json"
    assert (example.parent / "docs/config.schema.json").exists()
    document = yaml.safe_load(example.read_text())
    jsonschema.validate(document, config_schema())
    load_settings(example, {})


def test_the_schema_refuses_an_unknown_key() -> None:
    validator = jsonschema.Draft202012Validator(config_schema())
    errors = list(validator.iter_errors({"mqtt": {"hots": "broker"}}))
    assert errors
    assert "hots" in errors[0].message


def test_every_error_code_the_code_uses_is_in_the_registry() -> None:
    """No refusal spells its code as a string of its own: every code comes from the registry,
    and every registered code is used."""
    used = set()
    for path in (ROOT / "bridge").rglob("*.py"):
        if path.name == "error_codes.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name.upper() == name and name.lower() in ERROR_CODES:
                    used.add(name.lower())
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "Rejection",
                "CommandError",
                "Refusal",
            ):
                first = node.args[0] if node.args else None
                assert not isinstance(first, ast.Constant), f"{path}: a literal error code"
    assert used == set(ERROR_CODES)


def test_a_rejection_with_an_unregistered_code_is_a_bug() -> None:
    code = "import bridge.protocol.contract as c; c.Rejection('no_such_code', 'x')"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode != 0
    assert "error_codes.py" in result.stderr
