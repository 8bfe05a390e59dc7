"""MkDocs hooks of the manual (``hooks:`` in mkdocs.yml).

- The generated references must be what the code generates now: a stale one
  is a warning, so ``mkdocs build --strict`` fails (``python -m
  bridge_tools.docs`` writes them).
- The README is the front door and links into the manual with relative links
  (``docs/contract.md#commands``), which work on GitHub; after the build,
  every such link must reach a page of the site and an anchor on it, and every
  other relative link of the README a file of the repository.

MkDocs itself checks the links between pages (``validation:``); warnings fail
a strict build.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final

from mkdocs.plugins import get_plugin_logger

from bridge_tools.docs.reference import REGENERATE, ROOT, stale_files
from bridge_tools.docs.snippets import github_anchors, markdown_links

log = get_plugin_logger("manual")

README: Final = ROOT / "README.md"
_ids: dict[str, set[str]] = {}  # page source path (docs-relative) → ids in its HTML


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name == "id" and value:
                self.ids.add(value)


def on_pre_build(config: Any) -> None:
    _ids.clear()
    for path in stale_files():
        log.warning(f"{path} differs from what the code generates: run {REGENERATE}")


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    parser = _Ids()
    parser.feed(html)
    _ids[page.file.src_uri] = parser.ids
    return html


def on_post_build(config: Any) -> None:
    docs = Path(config["docs_dir"]).resolve()
    for problem in readme_link_problems(README, docs, _ids):
        log.warning(f"README.md: {problem}")


def readme_link_problems(readme: Path, docs: Path, page_ids: dict[str, set[str]]) -> list[str]:
    """What is wrong with the README's relative links, given the built pages' ids."""
    problems = []
    text = readme.read_text(encoding="utf-8")
    own = github_anchors(text)
    for line, target in markdown_links(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        if not path_part:
            if anchor not in own:
                problems.append(f"line {line}: #{anchor} is no heading of the README")
            continue
        path = (readme.parent / path_part).resolve()
        if not path.exists():
            problems.append(f"line {line}: {path_part} does not exist")
            continue
        if path.is_relative_to(docs) and path.suffix == ".md":
            page = path.relative_to(docs).as_posix()
            if page not in page_ids:
                problems.append(f"line {line}: {path_part} is not a page of the site")
            elif anchor and anchor not in page_ids[page]:
                problems.append(f"line {line}: {path_part} has no anchor #{anchor}")
        elif anchor:
            problems.append(f"line {line}: {target}: an anchor in a file that is not a page")
    return problems
