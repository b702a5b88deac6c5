"""``kun-hpc merge``: check the grid is complete, decontaminate and dedup the final records cluster-wide,
write the dataset, its card and its report. The whole merge, read top to bottom in :func:`run_merge`.

::

    last stage's shards of every complete group (assemble.find_inputs)
      [--merge-decontaminate (array, per shard; when merge.decontaminate.benchmarks)-->]  decontaminate.py
      --merge-dedup-<key> (4 phases per merge.dedup_by entry: instruction, pair, text)-->  dedup.py
      --merge-assemble (array, per shard)--> <merge.output>/dataset/{jsonl,parquet}/part-XXXXX.*  assemble.py
    then the report (report/) with its quality sections and the dataset card (dataset/README.md), in the
    submitting process                                                                     report.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from kun_hpc.cluster.executors import Executor
from kun_hpc.cluster.phases import Phase, PhaseUnit, is_phase_done, run_phases
from kun_hpc.config import config_hash
from kun_hpc.merge.assemble import AssembleTask, MergeResult, dedup_keys, find_inputs, merge_dir
from kun_hpc.merge.decontaminate import decontaminate_phase
from kun_hpc.merge.dedup import dedup_phases, make_job, settings_of
from kun_hpc.merge.report import write_report


def run_merge(cfg: DictConfig, executor: Executor) -> MergeResult:
    inputs = find_inputs(cfg)
    if inputs.missing:
        print(
            f"merge: allow_partial: merging the complete groups only; missing ({len(inputs.missing)}): "
            + ", ".join(inputs.missing),
            file=sys.stderr,
        )
    out = merge_dir(cfg)
    run_dir = str(cfg.run.dir)
    log_root = Path(run_dir) / "logs"
    settings = settings_of(cfg.dedup, cfg.merge.zstd_level)
    shards, root, upstream = inputs.shards, inputs.root, inputs.upstream
    decontaminated: list[dict] = []
    if cfg.merge.decontaminate.benchmarks:  # before the dedup passes, which then read its kept shards
        phase, shards, root, upstream = decontaminate_phase(cfg, inputs.kind, shards, root, upstream)
        decontaminated = run_phases([phase], executor, log_root)[-1]
    passes = []
    for key in dedup_keys(cfg, inputs.kind):
        job = make_job(f"merge-dedup-{key}", key, shards, root, out / f"dedup-{key}", settings, run_dir)
        markers = run_phases(dedup_phases(job, upstream), executor, log_root)[-1]
        passes.append((key, markers))
        shards, root = [Path(p) for p in job.outputs], out / f"dedup-{key}"
        upstream = config_hash({"dedup": key, "upstream": upstream, "settings": settings})
    dataset = out / "dataset"
    spt = cfg.dedup.shards_per_task
    # a pair without the rules stage's faithfulness is measured here, with the rules section's settings
    rules = OmegaConf.to_container(cfg.rules, resolve=True) if inputs.kind == "pairs" else None
    what = {"upstream": upstream, "kind": inputs.kind, "parquet": cfg.merge.parquet, "rules": rules}
    h = config_hash({**what, "inputs": [str(s) for s in shards]})

    def task(i: int) -> AssembleTask:
        group = tuple(str(s) for s in shards[i : i + spt])
        m = cfg.merge
        return AssembleTask(inputs.kind, group, str(dataset), i, bool(m.parquet), int(m.zstd_level), rules)

    fn = "kun_hpc.merge.assemble:assemble_unit"
    starts = range(0, len(shards), spt)
    units = [PhaseUnit("merge-assemble", g, fn, task(i), run_dir, h) for g, i in enumerate(starts)]
    _clear_stale(dataset, len(shards), units)
    assembled = run_phases([Phase("merge-assemble", units)], executor, log_root)[-1]
    result = MergeResult(inputs, passes, assembled, dataset, out / "report", decontaminated)
    write_report(cfg, result)  # and the card, with the report's quality summary
    return result


def _clear_stale(dataset: Path, n: int, units: list[PhaseUnit]) -> None:
    """Shards numbered past this merge's (left by an earlier, larger one) would be loaded with it."""
    if all(is_phase_done(u) for u in units):
        return
    for sub in ("jsonl", "parquet"):
        for p in sorted((dataset / sub).glob("part-*")):
            if int(p.name[5:10]) >= n:
                p.unlink()
