from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import nodes
from tools import make_tiny_model

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "shards" / "sample"


@pytest.fixture
def sample() -> Path:
    return SAMPLE


def sample_overrides(run_dir: Path, *extra: str) -> list[str]:
    """Overrides that point the default preset's corpora at the bundled sample and the run at run_dir."""
    return [
        f"run.dir={run_dir}",
        f"corpora.0.paths=[{SAMPLE / 'wudao'}]",
        f"corpora.1.paths=[{SAMPLE / 'wanjuan'}]",
        f"corpora.2.paths=[{SAMPLE / 'skypile'}]",
        *extra,
    ]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The tiny model: models/tiny-qwen2 when it was built by this builder version, else a fresh build."""
    repo_model = REPO / "models" / "tiny-qwen2"
    if (repo_model / make_tiny_model.FINGERPRINT_FILE).is_file():
        return make_tiny_model.ensure_tiny_model(repo_model)
    return make_tiny_model.build_tiny_model(tmp_path_factory.mktemp("models") / "tiny-qwen2")


# What tests give the Slurm executor on the sandbox (small jobs, one 2-CPU task each).
SLURM_RUN_ARGS = (
    "executor.kind=slurm",
    "executor.slurm.time_min=10",
    "executor.slurm.mem_gb=3",
    "executor.slurm.cpus_per_task=2",
)


def start_sandbox() -> None:
    """Point the Slurm clients at the sandbox cluster and start it if it is not running. start.sh is
    idempotent; it gets the MaxArraySize `make test` starts the cluster with (4), so that it never restarts
    a running cluster under other tests' jobs."""
    os.environ.setdefault("SLURM_CONF", str(REPO / ".slurm-sandbox" / "etc" / "slurm.conf"))
    env = {**os.environ, "SLURM_MAX_ARRAY_SIZE": os.environ.get("SLURM_MAX_ARRAY_SIZE", "4")}
    subprocess.run([str(REPO / "slurm" / "sandbox" / "start.sh")], env=env, check=True, capture_output=True)


@pytest.fixture
def multinode(monkeypatch) -> Iterator[str]:
    """The 3-node sandbox (tests/cluster/nodes.py), every node up (a node an earlier test killed or drained is
    back), and this test's Slurm clients pointed at it; yields its ``SLURM_CONF``."""
    conf = nodes.start_multinode()
    monkeypatch.setenv("SLURM_CONF", conf)
    yield conf


# Tests that need a real part started or built first: the Slurm sandbox, vLLM, a demo from a clean clone.
INTEGRATION_MARKS = ("slurm", "vllm", "demo")


def pytest_collection_modifyitems(config, items) -> None:
    """``integration`` on every test marked slurm, vllm or demo: ``make test-fast`` runs the others that are
    not marked ``slow`` either."""
    for item in items:
        if any(item.get_closest_marker(m) for m in INTEGRATION_MARKS):
            item.add_marker(pytest.mark.integration)
