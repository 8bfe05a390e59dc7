"""Where each configuration value comes from: the file, the environment, or the default.

Any key can be overridden by an environment variable named
``OPENAI_MQTT_BRIDGE__<SECTION>__<KEY>`` (double underscores between levels,
any case): ``OPENAI_MQTT_BRIDGE__MQTT__PORT=8883``,
``OPENAI_MQTT_BRIDGE__MQTT__TLS__ENABLED=true``. The value is read as one
YAML value, so ``8883`` is a number, ``true`` a boolean, ``null`` or an empty
value is null, and ``[response.create, response.cancel]`` a list.
Overrides are applied to the parsed file before validation, so they obey the
same rules and an error names the variable, never the value (it may be a
password): a YAML error says where and what, not the text it is about.

This module works on plain dicts (before validation) and renders the
annotated YAML that ``check-config`` prints; it knows nothing of the models.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any, Final

import yaml

from bridge.errors import ConfigError

ENV_PREFIX: Final = "OPENAI_MQTT_BRIDGE__"
FROM_FILE: Final = "file"
DEFAULT: Final = "default"

# dotted key ("mqtt.port") → where its value came from: FROM_FILE, or "env NAME"
Sources = dict[str, str]


def env_source(name: str) -> str:
    return f"env {name}"


def file_sources(document: object, prefix: str = "") -> Sources:
    """Every key the file sets, at every depth, marked as coming from the file."""
    sources: Sources = {}
    if isinstance(document, dict):
        for key, value in document.items():
            dotted = f"{prefix}{key}"
            sources[dotted] = FROM_FILE
            sources.update(file_sources(value, dotted + "."))
    return sources


def apply_environment(document: dict[str, Any], environ: Mapping[str, str]) -> Sources:
    """Apply every ``OPENAI_MQTT_BRIDGE__*`` variable to ``document`` in place.

    Returns the keys it set and the variable each came from. Raises ConfigError
    for a malformed name or value.
    """
    applied: Sources = {}
    names = sorted((name for name in environ if name.upper().startswith(ENV_PREFIX)), key=_depth)
    for name in names:
        parts = [part.lower() for part in name[len(ENV_PREFIX) :].split("__")]
        dotted = ".".join(parts)
        if not all(parts):
            raise ConfigError(
                "", f"environment {name}: name the key as {ENV_PREFIX}<SECTION>__<KEY>"
            )
        try:
            value = yaml.safe_load(environ[name]) if environ[name].strip() else None
        except (yaml.YAMLError, ValueError) as exc:
            raise ConfigError(dotted, f"{yaml_error_text(exc)} (from env {name})") from None
        target = document
        for depth, part in enumerate(parts[:-1]):
            child = target.setdefault(part, {})
            if not isinstance(child, dict):
                where = ".".join(parts[: depth + 1])
                raise ConfigError(where, f"is not a section, cannot set {dotted} (from {name})")
            target = child
        target[parts[-1]] = value
        applied[dotted] = env_source(name)
        applied.update({key: env_source(name) for key in file_sources(value, dotted + ".")})
    return applied


def _depth(name: str) -> tuple[int, str]:
    return (name.count("__"), name)


# PyYAML writes what it found in the document with repr(): a character, a tag,
# an alias. Its own words are the "expected ..." before ", but", token names
# such as '<stream end>', and a tab is worth naming (the usual mistake).
_QUOTED: Final = re.compile(r"'(?:[^'\\]|\\.)*'" r'|"(?:[^"\\]|\\.)*"')
_SHOWN: Final = re.compile(r"'<[a-z ]+>'|'\\t'")
HIDDEN: Final = "…"


def yaml_error_text(exc: Exception) -> str:
    """``not valid YAML at line L, column C: <problem> (<context> at line ...)``.

    Where and what, but none of the document's text: ``str()`` of a PyYAML
    error quotes the offending lines, and what it found there, which may be a
    password. ``exc`` is a ``yaml.YAMLError``, or the ValueError PyYAML lets
    through for an impossible date.
    """
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        text = f"not valid YAML{_at(mark)}"
        problem = _without_document_text(exc.problem or exc.context or "")
        if problem:
            text += f": {problem}"
        if exc.problem and exc.context:
            text += f" ({_without_document_text(exc.context)}{_at(exc.context_mark)})"
        return text
    if isinstance(exc, yaml.reader.ReaderError):
        return f"not valid YAML at character {exc.position + 1}: {exc.reason}"
    if isinstance(exc, ValueError):
        return "not valid YAML: a value cannot be read (such as a date out of range)"
    return "not valid YAML"


def _at(mark: yaml.Mark | None) -> str:
    return f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""


def _without_document_text(message: str) -> str:
    """A PyYAML problem or context with each quoted piece of the document hidden."""
    expected, but, found = message.partition(", but ")
    if not (but and expected.startswith("expected")):
        expected, found = "", message
    return expected + but + _QUOTED.sub(_hide, found)


def _hide(quoted: re.Match[str]) -> str:
    return quoted[0] if _SHOWN.fullmatch(quoted[0]) else HIDDEN


def source_of(sources: Mapping[str, str], dotted: str) -> str:
    """Where the value at ``dotted`` came from: FROM_FILE, ``env NAME``, or DEFAULT."""
    return sources.get(dotted, DEFAULT)


def annotate_error(error: ConfigError, sources: Mapping[str, str]) -> ConfigError:
    """The same error, naming the environment variable when the key came from one."""
    if not error.path:
        return error
    below = error.path + "."
    for key, source in sources.items():
        if (key == error.path or key.startswith(below)) and source.startswith("env "):
            return ConfigError(error.path, f"{error.message} (from {source})")
    return error


def annotated_yaml(document: Mapping[str, Any], sources: Mapping[str, str]) -> str:
    """``document`` as block YAML, each value followed by ``# (from file)``, ``# (default)``...

    ``sources`` may also hold a free text note for a derived key.
    """
    lines = list(_lines(document, sources, ""))
    column = min(COMMENT_COLUMN, max(len(text) for text, _ in lines))
    return "".join(
        f"{text.ljust(column)}  # ({note})\n" if note else f"{text}\n" for text, note in lines
    )


COMMENT_COLUMN: Final = 48  # where the source notes line up (longer values push theirs right)


def _lines(
    document: Mapping[str, Any], sources: Mapping[str, str], prefix: str
) -> Iterator[tuple[str, str | None]]:
    indent = "  " * prefix.count(".")
    for key, value in document.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            yield f"{indent}{_flow(key)}:", None
            yield from _lines(value, sources, dotted + ".")
        else:
            yield f"{indent}{_flow(key)}: {_flow(value)}", _describe(source_of(sources, dotted))


def _describe(source: str) -> str:
    if source == FROM_FILE:
        return "from file"
    if source.startswith("env "):
        return f"from {source}"
    return source  # "default", or a note such as "derived from openai.base_url"


def _flow(value: object) -> str:
    """One value as single-line YAML (quoted only when YAML needs it)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1_000_000, allow_unicode=True)
    return text.removesuffix("\n...\n").strip()
