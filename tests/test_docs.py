"""The docs stay true to the code: the config reference is current, every `kun-hpc` command line the docs show
names a real command with real flags, and the README links every doc."""

from __future__ import annotations

import argparse
import re
import shlex

import pytest

from kun_hpc import cli
from kun_hpc.core.unit_log import LOG_PREFIX
from tests.conftest import REPO
from tools import render_config_reference

DOCS = sorted((REPO / "docs").glob("*.md"))
README = REPO / "README.md"
COMMAND = re.compile(r"kun-hpc ([a-z][a-z-]*)(?=[\s`]|$)")


def command_lines(text: str) -> list[str]:
    """`kun-hpc ...` as the docs show it to be typed: inline code spans, and lines of fenced blocks that start
    with it (after an optional `$ `). Table titles, messages (`kun-hpc run: ...`) and a unit's log lines
    (`kun-hpc unit <unit>: ...`, kun_hpc/core/unit_log.py) are not commands."""
    lines = re.findall(r"`(kun-hpc [^`]+)`", text)
    for block in re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M):
        typed = (ln.removeprefix("$ ") for ln in block.splitlines())
        lines += [ln for ln in typed if ln.startswith("kun-hpc ")]
    return [ln for ln in lines if COMMAND.match(ln) and not ln.startswith(f"{LOG_PREFIX} ")]


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_the_config_reference_is_current():
    doc = render_config_reference.DOC.read_text()
    assert render_config_reference.updated(doc) == doc, "run python tools/render_config_reference.py"


def test_the_config_reference_names_every_key():
    doc = render_config_reference.DOC.read_text()
    keys = ("run.dir", "executor.slurm.max_array_size", "corpora[i].paths", "label.engine.model",
            "point.sampling.stop", "train.lora.r", "dedup.normalize.t2s")  # fmt: skip
    for key in keys:
        assert f"| `{key}` |" in doc
    unexplained = [line.split("|")[1].strip() for line in doc.splitlines() if line.rstrip().endswith("|  |")]
    assert not unexplained, f"config fields without a comment in kun_hpc/config/: {unexplained}"


@pytest.mark.parametrize("path", [README, *DOCS], ids=lambda p: p.name)
def test_every_command_line_in_the_docs_parses(path):
    parsers = subparsers()
    assert set(parsers) == {*cli.COMMANDS, "inspect", "review", "export"}
    for line in command_lines(path.read_text()):
        name = COMMAND.match(line).group(1)
        assert name in parsers, f"{path.name}: `{line}` names no kun-hpc command"
        try:
            words = shlex.split(line.rstrip("\\ "))
        except ValueError:  # an unbalanced quote continued on the next line
            words = line.split()
        parser = parsers[name]
        nested = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        if nested and len(words) > 2 and words[2] in nested.choices:  # kun-hpc review export ...
            parser = nested.choices[words[2]]
        known = {s for a in parser._actions for s in a.option_strings}
        words = [w.strip("[]") for w in words]  # usage lines: [--wait]
        flags = {w.split("=")[0] for w in words if re.fullmatch(r"--?[a-z][a-z-]*(=.*)?", w)}
        assert flags <= known, f"{path.name}: `{line}` uses {sorted(flags - known)}, not options of {name}"


def test_the_checker_sees_commands_and_skips_messages():
    text = (
        "Run `kun-hpc status --watch` or\n```\n$ kun-hpc run --wait configs/x.yaml\n"
        "kun-hpc run: pending units\n        kun-hpc funnel (done units)\n```\n"
    )
    assert command_lines(text) == ["kun-hpc status --watch", "kun-hpc run --wait configs/x.yaml"]


def test_the_readme_links_every_doc():
    readme = README.read_text()
    missing = [p.name for p in DOCS if f"docs/{p.name}" not in readme]
    assert not missing, f"README.md does not link {missing}"
