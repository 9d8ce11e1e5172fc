"""The README is a user's guide and the reference is in docs/: every page the README points to is
there (and every page is pointed to), links between pages land, and each command's page names every
flag its `--help` lists (its subcommands' too), or links to the page that does (flags shared by
several commands are described once), so the reference cannot fall behind the parser."""

import argparse
import re
from pathlib import Path

import pytest

from simlab.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
# which page documents each command (chat and loom share the chat's flags; sessions' replay too)
PAGES = {
    "chat": "chat.md",
    "loom": "loom.md",
    "generate": "generate.md",
    "models": "models.md",
    "tokens": "servers.md",
    "doctor": "servers.md",
    "sessions": "sessions.md",
    "replay": "sessions.md",
    "compare": "compare.md",
    "trace": "trace.md",
    "personas": "personas.md",
    "steer": "steer.md",
    "multiverse": "multiverse.md",
}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def flags(parser: argparse.ArgumentParser) -> set[str]:
    """A parser's long options, its subcommands' included."""
    out = {o for a in parser._actions for o in a.option_strings if o.startswith("--") and o != "--help"}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                out |= flags(child)
    return out


def test_the_readme_points_to_every_page_and_every_page_is_there():
    linked = set(re.findall(r"\]\((docs/[\w-]+\.md)\)", README))
    pages = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert linked == pages and pages


def test_links_between_pages_land():
    for page in (ROOT / "docs").glob("*.md"):
        for target in re.findall(r"\]\(([\w-]+\.md)(?:#[\w-]*)?\)", page.read_text(encoding="utf-8")):
            assert (ROOT / "docs" / target).exists(), f"{page.name} links to {target}"
        assert "](#" not in page.read_text(encoding="utf-8"), f"{page.name}: an anchor of the old README"


def test_the_readme_holds_the_two_commands_a_tour_and_the_layout():
    assert "make run" in README and "make test" in README
    assert "## A short tour" in README and "## Layout" in README
    assert len(README.splitlines()) < 270  # a guide to start with, not the reference


def linked(page: str) -> str:
    """The text of the pages a page links to (shared flags are named once, on their topic's page)."""
    targets = set(re.findall(r"\]\(([\w-]+\.md)\)", page))
    return "".join((ROOT / "docs" / t).read_text(encoding="utf-8") for t in sorted(targets))


@pytest.mark.parametrize("command", sorted(PAGES))
def test_each_commands_page_names_every_flag_of_its_help(command):
    page = (ROOT / "docs" / PAGES[command]).read_text(encoding="utf-8")
    missing = sorted(f for f in flags(commands()[command]) if f not in page + linked(page))
    assert not missing, f"docs/{PAGES[command]} does not name {missing} ({command} --help lists them)"


def test_every_command_has_a_page():
    assert set(commands()) == set(PAGES)
