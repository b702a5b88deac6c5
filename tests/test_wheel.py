"""A non-editable install works (issue 16, item 8): the wheel built from the source ships the presets, corpus
and cluster configs and prompt templates as package data, and the installed copy, run from a directory
outside the repo, loads the default config and every preset (by name), renders a prompt template and runs
``kun-hpc --help`` and ``plan``, importing itself, not the repo's editable copy."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO

# Run by the installed copy from a directory outside the repo: every preset by name, the default config,
# a template rendered; printed as JSON.
PROBE = r"""
import json, sys
import kun_hpc
from kun_hpc import config
from kun_hpc.config.paths import CONFIGS
from kun_hpc.inference.prompt import PromptTemplate
from kun_hpc.train.accelerate_config import accelerate_file

# what a user's own config sets over a profile or a corpus config
models = [f"{s}.engine.model=m" for s in ("label", "point", "answer")]
must_set = ([], models, [*models, "corpora.0.paths=[corpus.jsonl]"])
presets = {}
for path in sorted(CONFIGS.rglob("*.yaml")):
    name = path.relative_to(CONFIGS).with_suffix("").as_posix()
    if name.startswith("accelerate/"):  # accelerate's own config format, read by train.distributed
        continue
    for i, extra in enumerate(must_set):
        try:
            presets[name] = config.load(name, [*extra, "run.dir=run"]).run.name
            break
        except config.ConfigError:
            if i == len(must_set) - 1:
                raise
default = config.load()
with open("mine.yaml", "w") as f:  # a user's config on the bundled profile and corpus config
    f.write("include: [profiles/cpu.yaml, corpora/wudao.yaml]\nrun: {name: mine}\n")
mine = config.load("mine.yaml", [*must_set[-1], "run.dir=run"])
label = default.label
template = PromptTemplate.load(config.find_file(label.template), label.template_sha256, ["text"])
print(json.dumps({
    "package": kun_hpc.__file__,
    "default_preset": str(config.DEFAULT_PRESET),
    "default_run": default.run.name,
    "label_template": default.label.template,
    "chat_template": default.train.chat_template,
    "presets": presets,
    "mine": [mine.run.name, mine.corpora[0].name, mine.executor.kind],
    "rendered": template.render(text="你好"),
    "accelerate": str(accelerate_file(config.load(None, ["train.distributed=fsdp", "run.dir=run"]).train)),
}))
"""


def bundled_files() -> set[str]:
    """The repo's configs (through its link to the package folder), as paths inside the wheel."""
    root = REPO / "kun_hpc" / "configs"
    return {f"kun_hpc/configs/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The wheel built from a copy of the source (the repo stays untouched), installed without its
    dependencies (the test's venv has them) into a temporary target folder."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    shutil.copytree(REPO / "kun_hpc", src / "kun_hpc", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    build = subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = (tmp / "dist").glob("kun_hpc-*.whl")
    with zipfile.ZipFile(wheel) as z:
        assert bundled_files() <= set(z.namelist())
    target = tmp / "site"
    install = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(target), str(wheel)],
        cwd=tmp, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert install.returncode == 0, install.stderr[-3000:]
    return target


def run_installed(target: Path, cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(target)}  # ahead of the venv's editable finder
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_the_installed_wheel_finds_its_presets_and_templates_outside_the_repo(installed, tmp_path):
    out = run_installed(installed, [sys.executable, "-c", PROBE], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout)
    package = installed / "kun_hpc"
    assert Path(got["package"]) == package / "__init__.py"  # not the repo's copy
    assert Path(got["default_preset"]) == package / "configs" / "default.yaml"
    assert got["default_run"] == "default"
    assert got["label_template"] == str(package / "configs" / "prompts" / "label.txt")
    assert got["chat_template"] == str(package / "configs" / "prompts" / "chat.txt")
    names = {f.removeprefix("kun_hpc/configs/").removesuffix(".yaml") for f in bundled_files()}
    assert set(got["presets"]) == {n for n in names if not n.startswith(("prompts/", "accelerate/"))}
    assert got["accelerate"] == str(package / "configs" / "accelerate" / "fsdp.yaml")
    assert got["presets"]["demo"] == "demo"
    assert got["mine"] == ["mine", "wudao", "slurm"]
    template = (REPO / "configs" / "prompts" / "label.txt").read_text(encoding="utf-8")
    assert got["rendered"] == template.replace("{text}", "你好")


@pytest.mark.slow
def test_the_installed_command_runs_outside_the_repo(installed, tmp_path):
    script = installed / "bin" / "kun-hpc"
    help_ = run_installed(installed, [str(script), "--help"], tmp_path)
    assert help_.returncode == 0, help_.stderr[-3000:]
    assert "usage: kun-hpc" in help_.stdout
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"第{i}段正文。"}) + "\n" for i in range(5)), "utf-8")
    plan = run_installed(
        installed, [str(script), "plan", "demo", "run.dir=run", "corpora=[{name: c, format: jsonl, "
                    "paths: [corpus.jsonl], expected_records: 5}]"], tmp_path,
    )  # fmt: skip
    assert plan.returncode == 0, plan.stderr[-3000:]
    assert "filter" in plan.stdout and "answer" in plan.stdout
