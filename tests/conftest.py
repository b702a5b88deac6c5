from __future__ import annotations

from pathlib import Path

import pytest

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
