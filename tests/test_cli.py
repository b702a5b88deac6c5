"""The `kun-hpc` command line itself (issue 16, "small things a user notices"): `--version`, `kun-hpc config`,
what `run` says it runs without a preset, help text a terminal shows as written, the `logs` flags."""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import tomllib
import yaml
from omegaconf import OmegaConf

from kun_hpc import cli
from kun_hpc import config as config_mod
from tests.conftest import REPO, sample_overrides

# reStructuredText roles and literals, as docstrings write them
MARKUP = re.compile(r"``|:(mod|class|func|meth|data|attr|exc|ref|doc):`")


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as e:
        cli.main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def subparsers() -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in cli._parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def all_commands() -> list[list[str]]:
    """Every command line that has a help text: each command, and the subcommands of review."""
    out = []
    for name, parser in subparsers().items():
        out.append([name])
        nested = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
        out += [[name, sub] for sub in (nested.choices if nested else ())]
    return out


def test_version_is_the_installed_distributions(capsys):
    expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    with pytest.raises(SystemExit) as e:
        cli.main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"kun-hpc {expected}"


def files_under(folder: Path) -> set[Path]:
    return set(folder.rglob("*"))


def test_config_prints_the_resolved_config_and_writes_nothing(tmp_path, capsys, monkeypatch, tiny_model):
    monkeypatch.chdir(tmp_path)
    overrides = [f"run.dir={tmp_path / 'run'}", "shard.records_per_shard=7", "pipeline.stages=[filter]"]
    overrides.append(f"filter.tokenizer={tiny_model}")
    before = files_under(tmp_path)
    assert cli.main(["config", *overrides]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = OmegaConf.to_container(config_mod.load(None, overrides), resolve=True, enum_to_str=True)
    assert printed == expected
    assert printed["shard"]["records_per_shard"] == 7 and printed["pipeline"]["stages"] == ["filter"]
    assert files_under(tmp_path) == before, "kun-hpc config wrote files"


def test_config_prints_what_a_command_saves(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tiny_corpus(tmp_path)
    overrides = [f"corpora=[{{name: tiny, format: jsonl, paths: [{corpus.name}]}}]", "executor.kind=inline"]
    overrides.append(f"run.dir={tmp_path / 'r'}")
    assert cli.main(["config", *overrides]) == 0
    printed = capsys.readouterr().out
    assert not (tmp_path / "r").exists()
    assert cli.main(["shard", *overrides]) == 0  # a command that saves the run's config
    assert printed == (tmp_path / "r" / "config.yaml").read_text()
    assert yaml.safe_load(printed)["corpora"][0]["paths"] == [str(corpus)]  # absolute, as saved


def test_config_of_a_run_folder_is_the_config_it_saved(tmp_path, capsys):
    cfg = config_mod.load(None, [f"run.dir={tmp_path}", "run.name=saved"])
    config_mod.save_resolved(cfg, tmp_path)
    before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path)}
    assert cli.main(["config", str(tmp_path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out) == yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert {p: p.stat().st_mtime_ns for p in files_under(tmp_path)} == before


def test_config_says_what_run_would_refuse(tmp_path, capsys):
    """``config`` prints the config, then checks it as ``run`` would before any work: a stage typo and a
    filter without a tokenizer are named on stderr (exit 2), as ``run`` names them."""
    overrides = [f"run.dir={tmp_path / 'run'}", "pipeline.stages=[filtr, filter]", "filter.tokenizer=/no/tok"]
    assert cli.main(["config", *overrides]) == 2
    out, err = capsys.readouterr()
    assert yaml.safe_load(out)["pipeline"]["stages"] == ["filtr", "filter"]
    assert err.startswith("kun-hpc config: kun-hpc run would stop here: 2 problems in the config:")
    assert cli.main(["run", *overrides]) == 2
    assert capsys.readouterr().err.split("\n", 1)[1] == err.split("\n", 1)[1]  # the same problems
    assert not (tmp_path / "run").exists()


def test_config_with_a_bad_key_exits_2(tmp_path, capsys):
    assert cli.main(["config", f"run.dir={tmp_path}", "shard.records_per_shrd=7"]) == 2
    assert "records_per_shrd" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()


def tiny_corpus(folder: Path) -> Path:
    path = folder / "tiny.jsonl"
    path.write_text("".join(orjson.dumps({"text": f"第{i}条记录的正文。"}).decode() + "\n" for i in range(3)))
    return path


def test_run_without_a_preset_says_what_it_runs_first(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    corpus = tiny_corpus(tmp_path)
    overrides = [
        f"corpora=[{{name: tiny, format: jsonl, paths: [{corpus}]}}]",
        "executor.kind=inline",
        f"run.dir={tmp_path / 'r'}",
        "merge.auto=false",
    ]
    assert cli.main(["run", *overrides]) == 0
    err = capsys.readouterr().err.splitlines()
    first, second = err[0], err[1]
    assert first.startswith("kun-hpc run: no preset given: configs/default.yaml on the inline executor")
    assert "stages: none (shards only)" in first and f"run dir {tmp_path / 'r'}" in first
    assert second == f"kun-hpc run: corpora tiny ({corpus})"
    # with a preset the user named, nothing to announce
    preset = tmp_path / "p.yaml"
    preset.write_text(Path(config_mod.DEFAULT_PRESET).read_text())
    assert cli.main(["run", str(preset), *overrides]) == 0
    assert "no preset given" not in capsys.readouterr().err


@pytest.mark.parametrize("argv", all_commands(), ids=" ".join)
def test_help_has_no_markup(argv, capsys):
    text = help_text(argv, capsys)
    assert not MARKUP.search(text), text


def test_help_of_the_whole_command_has_no_markup(capsys):
    text = help_text([], capsys)
    assert not MARKUP.search(text), text
    assert "--version" in text and "config" in text
    flat = " ".join(text.split())
    assert "130 / 143 interrupted" in flat  # every exit code the commands return (docs/troubleshooting.md)
    assert "stop the local command running it" in flat  # cancel stops local runs too


def test_each_commands_help_gives_an_override_it_takes(capsys):
    """``train`` takes ``--executor``, not ``executor.kind``: its example is a train key (one that loads)."""
    for name in ("train", "run"):
        flat = " ".join(help_text([name], capsys).split())
        example = flat.split("overrides such as ")[1].split()[0].rstrip(",;)")
        assert example == ("train.epochs=1" if name == "train" else "executor.kind=inline")
        config_mod.load(None, [example])  # a key of the schema


def usage(argv: list[str], capsys) -> str:
    # the usage line, unwrapped (argparse wraps it at the terminal width)
    text = help_text(argv, capsys)
    return " ".join(text.split("\n\n")[0].split())


def test_usage_lines_name_what_each_command_takes(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    train = usage(["train"], capsys)
    assert train.startswith("usage: kun-hpc train {label,chat} [CONFIG.yaml] [key=value ...]"), train
    assert "--executor {local,slurm}" in train and "[--wait]" in train
    merge = usage(["merge"], capsys)
    assert merge.startswith("usage: kun-hpc merge [RUN_DIR | CONFIG.yaml] [allow_partial=true]"), merge
    assert usage(["run"], capsys) == "usage: kun-hpc run [CONFIG.yaml] [key=value ...] [-h] [--wait]"
    assert usage(["logs"], capsys).startswith("usage: kun-hpc logs [RUN_DIR | CONFIG.yaml]")
    assert usage(["config"], capsys).startswith("usage: kun-hpc config [RUN_DIR | CONFIG.yaml]")
    for name in cli.COMMANDS:  # every flag a command has is in its usage line
        parser = subparsers()[name]
        flags = {a.option_strings[-1] for a in parser._actions if a.option_strings}
        line = usage([name], capsys)
        assert all(f in line or f == "--help" for f in flags), (name, line)


def test_logs_has_no_flag_that_does_nothing(tmp_path, capsys):
    assert "--failed" not in help_text(["logs"], capsys)
    with pytest.raises(SystemExit) as e:
        cli.main(["logs", "--failed", f"run.dir={tmp_path}"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --failed" in err
    assert err.startswith("usage: kun-hpc logs ")  # the command's usage line, not the top-level one


@pytest.mark.parametrize("command", ["config", "status", "plan", "logs"])
def test_output_into_a_closed_pipe_ends_quietly_with_141(command, tmp_path):
    """`kun-hpc status | head`: once the reader has gone, the command stops without a traceback or a
    BrokenPipeError message and exits 141 (128 + SIGPIPE, what a shell reports for `yes | head`), whether
    Python's print (config, logs) or rich (status, plan: its default exits 1) wrote last."""
    read, write = os.pipe()
    os.close(read)  # the reader went away before kun-hpc wrote a line
    kun = Path(sys.executable).parent / "kun-hpc"
    argv = [kun, command, *sample_overrides(tmp_path / "run")]
    done = subprocess.run(argv, stdout=write, stderr=subprocess.PIPE, text=True)
    os.close(write)
    assert (done.returncode, done.stderr) == (141, "")


def test_a_broken_pipe_that_is_not_stdout_is_a_failure_said(tmp_path, capsys, monkeypatch):
    def broken(argv):
        raise BrokenPipeError(32, "Broken pipe")  # as writing to a child's stdin that died

    with open(tmp_path / "out.txt", "w") as out:  # stdout a file: its reader has not gone
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(cli, "_main", broken)
        assert cli.main(["status"]) == 1
    assert capsys.readouterr().err == "kun-hpc: BrokenPipeError: [Errno 32] Broken pipe\n"
