"""``kun-hpc review export``: draw the sample and write the review set (``export.json`` and the reviewer's
files)."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.quality.review.common import (
    CSV_NAME,
    EXPORT_NAME,
    LS_CONFIG_NAME,
    REVIEW_DIR,
    SET,
    STAGE_COLUMNS,
    STAGES,
    TASKS_NAME,
    ReviewError,
    _now,
    run_config,
)
from kun_hpc.quality.review.files import csv_bytes, label_studio_config, label_studio_tasks, shown_fields
from kun_hpc.quality.review.sample import _record, draw, review_row, stage_lines, stage_state


@dataclass
class ReviewSet:
    """What :func:`export_review` wrote: the rows, the texts shown (``fields``), each stratum's size and
    draws, the export's mark (``review_set``) and the files."""

    stage: str
    rows: list[dict]
    sizes: dict[str, int]
    drawn: dict[str, int]
    fields: tuple[str, ...] = ()
    review_set: str = ""
    files: list[Path] = field(default_factory=list)


def export_review(
    run_dir: str | Path,
    stage: str = "point",
    n: int = 200,
    seed: int = 0,
    out: str | Path | None = None,
    force: bool = False,
) -> ReviewSet:
    """Write the review set of ``stage`` (one of :data:`STAGES`) into ``out`` (default ``<run>/review``):
    ``review.csv``, ``label_studio_tasks.json``, ``label_studio_config.xml`` and ``export.json``: the stage,
    seed, run, ``review_set`` (a mark every row of the reviewer's files carries), the texts shown
    (``fields``), each stratum's size and draws, the stage's :func:`stage_state` and, keyed by record id,
    each drawn record's side (decision, score, reason, stratum, corpus, source), which the import reads.

    Cost: one pass over the stage's shards (kept and rejected; the dataset's parts for ``dataset``), parsing
    the rejected lines (and the dataset's) for their reason or corpus, holding at most ``n`` lines per
    stratum. Rows are shuffled (seeded) so a row's place does not tell the stage's decision. Raises
    :class:`ReviewError` for a bad run or stage, an empty stage, a record id drawn twice (the import joins by
    id), and a ``review.csv`` already in ``out`` (a reviewer may be filling it) unless ``force``.
    """
    if stage not in STAGES:
        raise ReviewError(f"--stage must be one of {', '.join(STAGES)} (got {stage!r})")
    if n < 1:
        raise ReviewError(f"-n must be >= 1 (got {n})")
    run_dir = Path(run_dir)
    out = Path(out) if out is not None else run_dir / REVIEW_DIR
    if (run_dir / "config.yaml").is_file() and (out / CSV_NAME).exists() and not force:
        raise ReviewError(
            f"{out / CSV_NAME} exists (a reviewer may be filling it): pass --force to replace it, or --out"
        )
    cfg = run_config(run_dir)
    chosen, sizes, drawn = draw(stage_lines(cfg, stage), n, seed)
    if not sizes:
        raise ReviewError(f"stage {stage!r} has no records (kept or rejected): nothing to review")
    rows, base, where = [], Path(cfg.run.dir), {}
    for stratum, picks in chosen.items():
        for path, i, line in picks:
            source = f"{path.relative_to(base) if path.is_relative_to(base) else path}:{i}"
            row = review_row(_record(line, path, i), stage, stratum, sizes[stratum], source)
            if row["id"] in where:
                raise ReviewError(
                    f"{source}: record id {row['id']!r} is also at {where[row['id']]}: a review is joined "
                    "back by id, so the stage's ids must be unique"
                )
            where[row["id"]] = source
            rows.append(row)
    random.Random(seed).shuffle(rows)
    fields, created = shown_fields(stage, rows), _now()
    mark = uuid.uuid4().hex[:12]  # each export its own, even of the same sample in the same second
    for r in rows:
        r[SET] = mark
    manifest = {
        "stage": stage, SET: mark, "run": str(base), "n": len(rows), "seed": seed, "created": created,
        "fields": list(fields), "state": stage_state(cfg, stage),
        "strata": {s: {"records": sizes[s], "drawn": drawn[s]} for s in sizes},
        "rows": {r["id"]: {c: r[c] for c in STAGE_COLUMNS if c not in ("stage", "stratum_records")}
                 for r in rows},
    }  # fmt: skip
    result = ReviewSet(stage, rows, sizes, drawn, fields, mark)
    result.files = [out / CSV_NAME, out / TASKS_NAME, out / LS_CONFIG_NAME, out / EXPORT_NAME]
    # export.json first: files of an earlier export in ``out`` carry its mark, which the import refuses
    atomic_write_bytes(out / EXPORT_NAME, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    atomic_write_bytes(out / CSV_NAME, csv_bytes(rows, fields))
    atomic_write_bytes(out / TASKS_NAME, label_studio_tasks(rows, fields))
    atomic_write_bytes(out / LS_CONFIG_NAME, label_studio_config(fields).encode())
    return result
