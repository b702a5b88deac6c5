"""Fixtures of the multi-node tests (the cluster itself: ``multinode`` in tests/conftest.py): the tiny-model
Kun chain they run, with its clean inline run computed once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from kun_hpc import cli
from tests.cluster.test_fault_drill import drill_preset
from tests.stages.test_kun_stages import GREEDY


@pytest.fixture(scope="session")
def chain_preset(tmp_path_factory, tiny_model) -> Path:
    """The fault drill's preset: the tiny-model chain over two SkyPile files, one line corrupted."""
    return drill_preset(tmp_path_factory.mktemp("chain"), tiny_model)


@pytest.fixture(scope="session")
def clean_chain_run(chain_preset) -> Path:
    """The chain run inline, once: what every multi-node run of it must equal."""
    run = chain_preset.parent / "clean"
    assert cli.main(["run", str(chain_preset), f"run.dir={run}", "executor.kind=inline", *GREEDY]) == 0
    return run
