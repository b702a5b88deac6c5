"""The README's quick start as written, from a clean clone: ``make demo`` (the whole Kun cycle: tiny
base model, Label and Primary Chat training, shard -> dedup -> filter -> label -> point -> answer -> rules ->
merge) at reduced size. The install step is skipped by reusing this checkout's ``.venv`` (its install stamp
matches the clone's pyproject.toml, so ``make setup`` has nothing to do); the clone's own code runs
(``PYTHONPATH``)."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import orjson
import pytest

from kun_hpc.io.shards import list_shards, read_shard
from tests.conftest import REPO, SAMPLE

CAN_RUN = shutil.which("make") is not None and (REPO / ".venv" / "bin" / "python").exists()


def quick_start_commands() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Quick start\s*```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no Quick start bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.split("#")[0].strip()]


def small_sample(dest: Path, n: int) -> dict[str, Path]:
    """n records of each bundled corpus in its native layout: WanJuan's and SkyPile's first n, WuDao's first
    n/2 and n/2 of its records 1100.., which are the same texts as WanJuan's first (cross-corpus copies)."""
    wudao = [r for p in sorted((SAMPLE / "wudao").glob("*.json")) for r in json.loads(p.read_text("utf-8"))]
    (dest / "wudao").mkdir(parents=True)
    part = wudao[: n // 2] + wudao[1100 : 1100 + n // 2]
    (dest / "wudao" / "part-0.json").write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
    src = next((SAMPLE / "wanjuan").glob("*.tar.gz"))
    with tarfile.open(src) as tar:
        member = next(m for m in tar.getmembers() if m.isfile())
        lines = tar.extractfile(member).read().splitlines()[:n]
    (dest / "wanjuan").mkdir()
    with tarfile.open(dest / "wanjuan" / "part-0.jsonl.tar.gz", "w:gz") as tar:
        data = b"\n".join(lines) + b"\n"
        info = tarfile.TarInfo(member.name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    (dest / "skypile").mkdir()
    sky = next((SAMPLE / "skypile").glob("*.jsonl")).read_bytes().splitlines()[:n]
    (dest / "skypile" / "part-0.jsonl").write_bytes(b"\n".join(sky) + b"\n")
    return {"wudao": dest / "wudao", "wanjuan": dest / "wanjuan", "skypile": dest / "skypile"}


@pytest.mark.vllm
@pytest.mark.demo
@pytest.mark.skipif(not CAN_RUN, reason="needs make and this checkout's .venv (make setup)")
def test_make_demo_from_a_clean_clone(tmp_path):
    assert quick_start_commands() == ["make demo", "make test"]
    # the stamp `make setup` leaves for this pyproject.toml: without it the clone's `make demo` would install
    # (and point this checkout's editable install at the clone)
    cksum = subprocess.run(["cksum"], input=(REPO / "pyproject.toml").read_bytes(), capture_output=True)
    stamp = REPO / ".venv" / f".installed-{cksum.stdout.split()[0].decode()}"
    assert stamp.is_file(), f"{stamp.name} missing: this checkout's .venv predates pyproject.toml; make setup"
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(REPO / ".venv")
    # make compares times: the fresh clone's pyproject.toml must not look newer than the install stamp
    os.utime(clone / "pyproject.toml", (stamp.stat().st_mtime - 60,) * 2)
    corpora = small_sample(tmp_path / "data", 40)
    run = tmp_path / "run"
    args = [
        f"run.dir={run}",
        *(f"corpora.{i}.paths=[{corpora[name]}]" for i, name in enumerate(("wudao", "wanjuan", "skypile"))),
        "train.max_steps=20",
        "shard.records_per_shard=100",
        "pipeline.shards_per_task=3",  # one unit a stage: one model load each
    ]
    env = {**os.environ, "PYTHONPATH": str(clone), "DEMO_ARGS": " ".join(args)}
    done = subprocess.run(["make", "demo"], cwd=clone, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "pip install" not in done.stdout  # the install step was skipped, as promised
    for task in ("label", "chat"):
        assert (run / "train" / task / "model" / "model.safetensors").is_file()
    said = re.search(r"kun-hpc merge: (\d[\d,]*) records in (\S+)", done.stderr)
    assert said, done.stderr[-3000:]
    report = orjson.loads((run / "merge" / "report" / "report.json").read_bytes())
    rows = sum(1 for p in list_shards(run / "merge" / "dataset" / "jsonl") for _ in read_shard(p))
    assert rows == report["dataset"]["rows"] == int(said.group(1).replace(",", ""))
    steps = [r["step"] for r in report["funnel"]]
    assert steps[:2] == ["shard", "dedup-raw"] and steps[-1] == "dataset"
    chain = ["filter", "label", "point", "answer", "rules"]
    assert [s for s in steps if s in chain] == chain
    # 20 of the WuDao records are WanJuan's first 20: they go before the models see them
    assert report["funnel"][0]["in"] == 120 and report["funnel"][1]["rejected"] == {"duplicate_exact": 20}
    for r in report["funnel"]:
        assert r["in"] == r["out"] + sum(r["rejected"].values()) + sum(r["quarantined"].values()), r
    # the quality part (docs/quality.md): tiny models write noise, and the numbers must say what they wrote
    quality = report["quality"]
    assert {"judge", "faithfulness", "tone", "diversity", "cost"} <= set(quality)
    point = next(r for r in report["funnel"] if r["step"] == "point")
    assert quality["judge"]["records"] == point["in"]  # every record Point read, counted once
    assert quality["faithfulness"]["pairs"] == rows
    card = (run / "merge" / "dataset" / "README.md").read_text()
    assert "## Quality summary" in card and str(run) not in card and str(REPO) not in card
    assert (run / "merge" / "dataset" / "report" / "report.html").is_file()  # the card's link stays inside
