"""The names every part of the review shares: its constants (stages, file names, columns, the bootstrap's
defaults), :class:`ReviewError` and the run's saved config."""

from __future__ import annotations

import time
from pathlib import Path

from omegaconf import DictConfig

from kun_hpc.config import load_run

GOOD, BAD = "好", "差"
STAGES = ("point", "answer", "dataset")
KEPT = "kept"  # the stratum name of what the stage kept
REVIEW_DIR = "review"
CSV_NAME = "review.csv"
TASKS_NAME = "label_studio_tasks.json"
LS_CONFIG_NAME = "label_studio_config.xml"
EXPORT_NAME = "export.json"
AGREEMENT_NAME = "agreement.json"
HUMAN, NOTES = "human_verdict", "notes"  # the reviewer's columns (and Label Studio control names)
SET = "review_set"  # each row's mark of the export that wrote it (export.json's ``review_set``)
TEXT_COLUMNS = ("instruction", "text", "answer")
# the stage's side of a row: in export.json (what the import reads) and, to hide while reviewing, at the
# end of the CSV; never in the Label Studio tasks (its Data Manager shows every data field as a column)
STAGE_COLUMNS = (
    "corpus", "stage", "judge_verdict", "score", "reason", "stratum", "stratum_records", "source",
)  # fmt: skip
RESAMPLES, LEVEL, TARGET_PRECISION = 2000, 0.95, 0.9
EXAMPLES = 5  # rows named per kind of row that could not be compared


class ReviewError(ValueError):
    """A run, stage or review file that cannot be used; the message names the file, the row and why."""


def run_config(run_dir: str | Path) -> DictConfig:
    """The run's saved config (``<run>/config.yaml``); :class:`ReviewError` when ``run_dir`` is no run."""
    if not (Path(run_dir) / "config.yaml").is_file():
        raise ReviewError(f"{run_dir}: not a run folder (no config.yaml in it)")
    return load_run(run_dir)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
