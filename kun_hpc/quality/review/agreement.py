"""``kun-hpc review import``: measure the stage's decisions against the people's and write
``agreement.json``."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import orjson

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.quality.review.common import (
    AGREEMENT_NAME,
    EXAMPLES,
    GOOD,
    KEPT,
    RESAMPLES,
    REVIEW_DIR,
    SET,
    TARGET_PRECISION,
    ReviewError,
    _now,
    run_config,
)
from kun_hpc.quality.review.read import Reviewed, join_export, load_export, read_review
from kun_hpc.quality.review.stats import (
    agreement_stats,
    bootstrap_intervals,
    lowest_threshold,
    stratum_weights,
)


def measure(
    rows: list[Reviewed], target: float = TARGET_PRECISION, resamples: int = RESAMPLES, seed: int = 0
) -> dict:
    """Everything ``review import`` reports about ``rows`` joined to their export (see
    :func:`import_review`), without files."""
    ok = [r for r in rows if r.problem is None]
    problems = Counter(r.problem for r in rows if r.problem is not None)
    examples: dict[str, list[str]] = {}
    for r in rows:
        if r.problem is not None and len(examples.setdefault(r.problem, [])) < EXAMPLES:
            examples[r.problem].append(r.where)
    judge = np.array([r.judge == GOOD for r in ok], dtype=bool)
    human = np.array([r.human == GOOD for r in ok], dtype=bool)
    strata = [r.stratum for r in ok]
    uncompared = sorted({r.stratum for r in rows if r.stratum} - set(strata))
    weight = stratum_weights(strata, [r.stratum_records for r in ok])
    counted = agreement_stats(judge, human)
    stats = agreement_stats(judge, human, weight)
    boot = bootstrap_intervals(judge, human, weight, strata if weight is not None else None, resamples, seed)
    by_reason: dict[str, dict[str, int]] = {}
    for r in ok:
        d = by_reason.setdefault(r.reason or KEPT, {"n": 0, "human_good": 0})
        d["n"] += 1
        d["human_good"] += r.human == GOOD
    scored = [r for r in ok if r.score is not None]
    threshold = None
    if scored:
        ws = stratum_weights([r.stratum for r in scored], [r.stratum_records for r in scored])
        threshold = lowest_threshold(
            np.array([r.score for r in scored]), np.array([r.human == GOOD for r in scored]), target, ws
        )
    return {
        "rows": len(rows),
        "n": len(ok),
        "not_compared": dict(sorted(problems.items())),
        "examples": examples,
        "strata_not_compared": uncompared,
        "weighted": weight is not None,
        "confusion": {k: int(counted[k]) for k in ("tp", "fp", "fn", "tn")},
        "confusion_records": {k: stats[k] for k in ("tp", "fp", "fn", "tn")} if weight is not None else None,
        **{k: stats[k] for k in ("precision", "recall", "accuracy", "kappa")},
        "kappa_ci": [boot["kappa"]["low"], boot["kappa"]["high"]],
        "precision_ci": [boot["precision"]["low"], boot["precision"]["high"]],
        "bootstrap": {k: boot[k] for k in ("resamples", "seed", "level", "method")}
        | {"undefined": {k: boot[k]["undefined"] for k in ("kappa", "precision")}},
        "by_reason": dict(sorted(by_reason.items())),
        "scored": len(scored),
        "target_precision": target,
        "threshold": threshold,
    }


def import_review(
    run_dir: str | Path,
    path: str | Path,
    target: float = TARGET_PRECISION,
    resamples: int = RESAMPLES,
    seed: int = 0,
    export: str | Path | None = None,
) -> dict:
    """Read a filled review file (:func:`read_review`), join it by id to the run's export
    (:func:`load_export`: ``export`` or ``<run>/review/export.json``; :func:`join_export`), measure the
    stage's decisions against the humans' (:func:`measure`) and write the result to
    ``<run>/review/agreement.json``, with the file, the run's ``point.mode`` and ``point.threshold``, the
    time, ``stage``, ``export`` (the export's stage, mark, seed, time, texts shown, strata and
    :func:`stage_state`: what :func:`section` compares with the run later) and ``not_in_file`` (the
    export's rows the file lacks). Rows that cannot be compared are counted by kind (``not_compared``) with
    the first few named (``examples``). Raises :class:`ReviewError` for a bad run, file, row, export or
    ``target``, for a file of another export, and for a file without a single comparable row (the last
    agreement.json is kept then)."""
    if not 0 < target <= 1:
        raise ReviewError(f"--target-precision must be in (0, 1] (got {target})")
    if resamples < 1:
        raise ReviewError(f"--resamples must be >= 1 (got {resamples})")
    path, run_dir = Path(path), Path(run_dir)
    rows, how = read_review(path)  # a bad file is named before the run's config is loaded (seconds)
    cfg = run_config(run_dir)
    drawn, export_path = load_export(cfg, export)
    missing = join_export(rows, drawn, path, export_path)
    if not any(r.problem is None for r in rows):
        why = ", ".join(f"{k} {v}" for k, v in sorted(Counter(r.problem for r in rows).items()))
        raise ReviewError(f"{path}: no row has a person's verdict, nothing to compare ({why or 'no rows'})")
    keys = ("stage", SET, "n", "seed", "created", "fields", "strata", "state")
    result = {
        "file": str(path.resolve()),
        "read_as": how,
        "created": _now(),
        "point_mode": str(cfg.point.mode),
        "point_threshold": float(cfg.point.threshold),
        "stage": drawn["stage"],
        "export": {"file": export_path.name, **{k: drawn[k] for k in keys}},
        "not_in_file": missing,
        **measure(rows, target, resamples, seed),
    }
    atomic_write_bytes(
        run_dir / REVIEW_DIR / AGREEMENT_NAME, orjson.dumps(result, option=orjson.OPT_INDENT_2)
    )
    return result
