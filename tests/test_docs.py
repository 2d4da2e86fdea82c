"""The README and docs/ name only command-line flags that exist.

Every ``--flag`` in a shell code block or a code span of ``README.md`` and ``docs/*.md`` is checked against the
argparse parsers of the ``ilt`` command: a flag on an ``ilt SUBCOMMAND ...`` line (or after ``torchrun ... -m
ilt_core.cli``) against that subcommand's parser (``ilt train``'s is its ``HfArgumentParser``), any other flag
against the flags of every ``ilt`` command. Flags of other programs (pip, npm, torchrun's own) are skipped by
the program's name.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from ilt_core.cli.main import build_parser
from ilt_core.training.arguments import _argument_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FLAG = re.compile(r"(?<![\w-])--[A-Za-z][A-Za-z0-9_-]*")
#: Commands whose flags are not ilt's (a code span or line starting with one of these is not checked).
OTHER_PROGRAMS = ("pip", "python -m pip", "npm", "make", "git", "apt-get", "ilt-lm-eval", "$ ilt-lm-eval")


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings if s.startswith("--")}


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    found: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


@pytest.fixture(scope="module")
def commands() -> dict[tuple[str, ...], set[str]]:
    """Flags by command path: ``()`` for ``ilt`` itself, ``("data", "prepare")`` for ``ilt data prepare``."""
    out: dict[tuple[str, ...], set[str]] = {}

    def walk(path: tuple[str, ...], parser: argparse.ArgumentParser) -> None:
        out[path] = _flags(parser) | {"--help"}
        for name, sub in _subparsers(parser).items():
            walk((*path, name), sub)

    walk((), build_parser())
    out[("train",)] = _flags(_argument_parser()) | {"--help"}
    return out


def _snippets(text: str) -> list[str]:
    """The lines of shell code blocks (```shell) and the code spans of the prose."""
    snippets, fenced, shell = [], False, False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced, shell = not fenced, line.strip()[3:] in ("shell", "bash", "sh", "console")
            continue
        if fenced:
            snippets += [line] if shell else []
        else:
            snippets += re.findall(r"`([^`]+)`", line)
    return snippets


def _command(snippet: str, commands: dict[tuple[str, ...], set[str]]) -> tuple[str, ...] | None:
    """The ``ilt`` command a snippet runs (its longest known path), or None when it runs none."""
    text = snippet.strip()
    if "-m ilt_core.cli" in text:
        text = "ilt" + text.split("-m ilt_core.cli", 1)[1]
    if not text.startswith("ilt "):
        return None
    words = text.split()[1:]
    path: tuple[str, ...] = ()
    for word in words:
        if (*path, word) not in commands:
            break
        path = (*path, word)
    return path


def test_every_page_is_there() -> None:
    assert (ROOT / "README.md").is_file() and len(PAGES) > 5


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flag_a_page_names_exists(page: Path, commands) -> None:
    every = set().union(*commands.values())
    wrong = []
    for snippet in _snippets(page.read_text(encoding="utf-8")):
        if snippet.strip().startswith(OTHER_PROGRAMS):
            continue
        path = _command(snippet, commands)
        if path is not None and "torchrun" in snippet:  # torchrun's own flags come before `-m ilt_core.cli`
            snippet = snippet.split("-m ilt_core.cli", 1)[1]
        known = commands[path] if path else every
        wrong += [f"{flag} ({'ilt ' + ' '.join(path) if path else 'any ilt command'}: {snippet.strip()[:60]})"
                  for flag in FLAG.findall(snippet) if flag not in known]  # fmt: skip
    assert not wrong, f"{page.name} names flags that do not exist: {wrong}"


def test_the_check_catches_a_flag_that_does_not_exist(commands) -> None:
    assert _command("ilt generate --model m --prompt x", commands) == ("generate",)
    assert "--max-new-units" in commands[("generate",)]
    assert "--max_new_units" not in commands[("generate",)]  # ilt generate's flags use dashes
    assert "--no_packing" in commands[("train",)] and "--nope" not in commands[("train",)]
    assert _command("torchrun --nproc_per_node 2 -m ilt_core.cli train --seed 1", commands) == ("train",)
    assert _command("ilt data prepare he-news --shards 8", commands) == ("data", "prepare")


def test_benchmarks_readme_lists_every_script_and_no_other() -> None:
    """``benchmarks/README.md``'s table names every script in ``benchmarks/`` once, and nothing that is not there."""
    table = (ROOT / "benchmarks" / "README.md").read_text(encoding="utf-8").split("## What to run", 1)[1]
    table = table.split("\n## ", 1)[0]
    listed = set(re.findall(r"benchmarks/([\w.-]+\.(?:py|sh))", table))
    scripts = {p.name for p in (ROOT / "benchmarks").iterdir() if p.suffix in (".py", ".sh")}
    assert listed == scripts, f"unlisted: {sorted(scripts - listed)}; listed but missing: {sorted(listed - scripts)}"


def test_no_benchmark_script_imports_another() -> None:
    """Scripts share code through the ``ilt_bench`` package, never by importing each other through ``sys.path``."""
    names = {p.stem for p in (ROOT / "benchmarks").glob("*.py")}
    for path in (ROOT / "benchmarks").glob("*.py"):
        text = path.read_text(encoding="utf-8")
        imported = set(re.findall(r"^\s*(?:import|from)\s+(\w+)", text, re.MULTILINE))
        assert not imported & names, f"{path.name} imports {sorted(imported & names)}"
        assert "sys.path.insert" not in text, f"{path.name} changes sys.path"
