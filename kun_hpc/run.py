"""The whole run, top to bottom: what ``kun-hpc run`` (and each of its parts as a command) does.

::

    native corpus files --shard--> <run>/shards/<corpus>/part-XXXXX.jsonl.zst     kun_hpc/stages/shard.py
    [dedup.raw: exact + MinHash dedup across all shards --> <run>/dedup_raw/...]   kun_hpc/merge/raw.py
    [preparation: the filter's perplexity calibration --> <run>/filter/...]         kun_hpc/stages/filter.py
    the grid: shards --stage 1--> <run>/stages/<stage 1>/<corpus>/... --stage 2--> ...
    merge: [decontaminate] -> dedup by instruction -> dataset + card + report        kun_hpc/merge/, report/

The per-shard stages are ``pipeline.stages`` (in Kun: filter, label, point, answer, rules). Shard i of a
stage is made from shard i of the stage before, so the grid is a set of chains, one per group of
``pipeline.shards_per_task`` shards: unit g of stage k+1 runs as soon as unit g of stage k succeeded
(:mod:`kun_hpc.cluster.dag`; on Slurm ``--dependency=aftercorr``), not when the whole stage is done. Every
unit writes a completion marker ``<run>/done/<stage>/<unit>.json`` (:mod:`kun_hpc.io.markers`); a re-run
submits only units without a valid one (:mod:`kun_hpc.cluster.grid`). The dedups and the merge are global
phases instead (:mod:`kun_hpc.cluster.phases`): every unit of one before any of the next.

Every step runs on one :class:`~kun_hpc.cluster.executors.Executor` (inline, local or Slurm), made here
from ``executor.*`` with each stage's resources resolved here; no step knows which. On Slurm, ``run``
submits the grid and a merge job after it and returns (``--wait`` follows it instead). What the user sees
goes through a :class:`View` (``kun_hpc/cli.py`` prints it).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

from kun_hpc import config as config_mod
from kun_hpc.cluster.dag import Submitted, submit_grid, wait_grid
from kun_hpc.cluster.executors import Executor, InlineExecutor, LocalExecutor
from kun_hpc.cluster.funnel import funnel_row
from kun_hpc.cluster.grid import plan_grid
from kun_hpc.cluster.phases import Phase, PhaseUnit, is_phase_done, run_phases
from kun_hpc.cluster.scheduler import MERGE_STAGE, SchedulerView, queued_tasks, scancel, wait_for_jobs
from kun_hpc.cluster.slurm import SlurmExecutor, resources_for
from kun_hpc.config import config_hash
from kun_hpc.config.checks import Problems, attempt, fail
from kun_hpc.inference.engine import ModelPathError, resolve_model_path
from kun_hpc.io.lock import run_lock
from kun_hpc.merge.assemble import (
    AssembleTask,
    MergeInputs,
    MergeResult,
    column_types,
    dedup_keys,
    find_inputs,
    merge_dir,
)
from kun_hpc.merge.decontaminate import decontaminate_phase
from kun_hpc.merge.dedup import dedup_phases, make_job, output_settings, settings_of
from kun_hpc.merge.raw import PHASE as DEDUP_RAW
from kun_hpc.merge.raw import run_dedup_raw
from kun_hpc.report import write_report
from kun_hpc.stages import filter as filter_stage
from kun_hpc.stages.registry import check_template, preflight, stage_class, stage_classes
from kun_hpc.stages.reshard import run_reshard
from kun_hpc.stages.rules import FAITHFULNESS_SETTINGS
from kun_hpc.stages.shard import run_shard
from kun_hpc.stages.steps import Step
from kun_hpc.stages.summary import StepReport, check_bad_fraction
from kun_hpc.train.accelerate_config import check_accelerate
from kun_hpc.train.data import task_template


class View(Protocol):
    """What the run shows as it goes (kun_hpc/cli.py prints each to the terminal)."""

    def note(self, text: str) -> None:
        """One line about what happens (run dir, pending units, jobs)."""

    def steps(self, reports: list[StepReport]) -> None:
        """The shard or reshard table."""

    def funnel(self, rows: list[dict] | None = None) -> None:
        """Records in, out, rejected, quarantined: ``rows``, or the grid's stages when None."""

    def grid(self, result: Submitted) -> None:
        """How the grid's units ended (inline, local): the status table and failures."""

    def follow(self, cfg: DictConfig) -> int:
        """Follow a detached run until it settled (``run --wait``); 0 when every unit is done."""


def make_executor(cfg: DictConfig) -> Executor:
    """The executor ``executor.kind`` names, with each stage's and phase's Slurm resources resolved from
    ``executor.slurm`` and ``executor.stage_resources``."""
    kind = cfg.executor.kind
    if kind == "inline":
        return InlineExecutor()
    if kind == "local":
        return LocalExecutor(cfg.executor.max_parallel, run_dir=cfg.run.dir)
    if kind == "slurm":
        return SlurmExecutor(
            cfg.run.dir,
            lambda name: resources_for(cfg, name),
            cfg.executor.slurm.max_array_size,
            cfg.executor.poll_interval_s,
        )
    raise config_mod.ConfigError(f"config key 'executor.kind': unknown executor {kind!r}")


def drive(step: Step, executor: Executor, log_root: Path) -> Any:
    """Run a step (:mod:`kun_hpc.stages.steps`): map each array it yields on ``executor``; its result."""
    try:
        array = next(step)
        while True:
            outcomes = executor.map(array.fn, array.units, name=array.name, log_dir=log_root / array.log)
            array = step.send(outcomes)
    except StopIteration as done:
        return done.value


def load(command: str, preset: str | Path | None, overrides: list[str] | tuple[str, ...]) -> DictConfig:
    """The config of ``kun-hpc <command>``, checked whole before the command does anything (issue 16): the
    config's own checks (:func:`kun_hpc.config.load`: overrides, required keys, each section) and what the
    command needs besides (:func:`check`). Raises one :class:`ConfigError` listing every problem."""
    problems = Problems()
    cfg = config_mod.load(preset, overrides, problems)
    check(cfg, command, problems)
    problems.raise_any()
    return cfg


def check(cfg: DictConfig, command: str, problems: Problems | None = None) -> None:
    """What ``command`` needs beyond the config's own checks, before its first side effect (a saved config,
    a run dir, a shard), every problem found:

    * ``run``: :func:`~kun_hpc.stages.registry.preflight` of ``pipeline.stages`` (their names and imports,
      model folders, templates, the tokenizer, each stage's own preflight);
    * ``shard``, ``reshard``, ``merge``, ``plan``, ``filter-calibrate``: the stage names resolve (a typo is
      found before the corpus is sharded, not after); ``filter-calibrate`` with cut-offs to calibrate: the
      filter's preflight too;
    * ``train``: the base model folder, the task's prompt template, the accelerate config of
      ``train.distributed``;
    * ``status``, ``logs``, ``cancel``, ``config``: nothing more (a run folder is read as it is).

    Problems are added to ``problems``, else raised as one :class:`ConfigError`."""
    found = problems if problems is not None else Problems()
    if command == "run":
        preflight(cfg, found)
    elif command in ("shard", "reshard", "merge", "plan", "filter-calibrate"):
        with found.collect():
            stage_classes(cfg.pipeline.stages)
        if command == "filter-calibrate" and filter_stage.needs_calibration(cfg):
            preflight(cfg, found, ["filter"])
    elif command == "train":
        found.run(_check_train, cfg)
    if problems is None:
        found.raise_any()


def _check_train(cfg: DictConfig) -> None:
    """``kun-hpc train``: ``train.base_model`` a local model folder, the task's prompt template loads."""
    if OmegaConf.is_missing(cfg.train, "base_model"):
        fail("config key 'train.base_model': a local model folder is required")
    else:
        attempt(_base_model, cfg)
    attempt(check_accelerate, cfg.train)
    if cfg.train.task == "label":  # the Label stage's own template, as the stage checks it
        attempt(check_template, cfg, "label")
        return
    try:
        task_template(cfg, cfg.train.task)
    except (OSError, RuntimeError, ValueError) as e:
        fail(f"config key 'train.chat_template': {e}")


def _base_model(cfg: DictConfig) -> None:
    try:
        resolve_model_path(config_mod.find_file(cfg.train.base_model))
    except ModelPathError as e:
        raise config_mod.ConfigError(f"config key 'train.base_model': {e}") from None


def start(cfg: DictConfig, command: str, view: View) -> Path:
    """Save the resolved config and its hash in the run directory (every worker reads it from there)."""
    run_dir = Path(cfg.run.dir)
    digest = config_mod.save_resolved(cfg, run_dir)
    view.note(f"kun-hpc {command}: run dir {run_dir} (config {digest})")
    return run_dir


def shard(cfg: DictConfig, executor: Executor, view: View, command: str = "shard") -> None:
    """Shard (or reshard) the corpora; fails above ``shard.max_bad_fraction`` (BadInputError)."""
    step = run_shard(cfg) if command == "shard" else run_reshard(cfg)
    reports = drive(step, executor, Path(cfg.run.dir) / "logs")
    view.steps(reports)
    check_bad_fraction(reports, cfg.shard.max_bad_fraction)


def dedup_raw(cfg: DictConfig, executor: Executor, view: View) -> None:
    """``dedup.raw``: exact and MinHash dedup over all shards before any stage reads them."""
    markers = run_dedup_raw(cfg, executor)
    view.funnel([funnel_row(DEDUP_RAW, markers, len(markers))])


def prepare(cfg: DictConfig, executor: Executor) -> None:
    """Each stage's cluster-wide preparation (:meth:`~kun_hpc.stages.base.Stage.prepare`: the filter's
    perplexity calibration), after sharding and before the grid."""
    for name in cfg.pipeline.stages:
        drive(stage_class(name).prepare(cfg), executor, Path(cfg.run.dir) / "logs")


def calibrate(cfg: DictConfig, executor: Executor) -> dict | None:
    """``kun-hpc filter-calibrate``: the filter's perplexity cut-offs, computed again (one job); None when the
    filter needs none."""
    return drive(filter_stage.calibration(cfg, force=True), executor, Path(cfg.run.dir) / "logs")


def run(cfg: DictConfig, view: View, wait: bool = False) -> int:
    """``kun-hpc run``: shard, dedup, prepare, run the grid, merge. Returns the exit code (1: a unit failed,
    or jobs of the run are still queued). ``cfg``: checked for the run (:func:`load`)."""
    executor = make_executor(cfg)
    if (
        executor.detached
        and cfg.pipeline.stages
        and refuse_while_queued(cfg, "run", view, supersede_merge=True)
    ):
        return 1  # submitting again would run units twice (and queued workers read the config saved next)
    run_dir = start(cfg, "run", view)
    shard(cfg, executor, view)
    if cfg.dedup.raw:
        dedup_raw(cfg, executor, view)
    prepare(cfg, executor)
    grid = plan_grid(cfg)
    if not grid.stages:
        view.note(f"kun-hpc run: no stages in pipeline.stages; shards are ready under {cfg.shard.output}")
        return merge(cfg, executor, view) if cfg.merge.auto else 0
    submitted = submit_grid(grid, executor, run_dir / "logs")
    pending = ", ".join(f"{s}={n}" for s, n in submitted.pending.items())
    view.note(f"kun-hpc run: pending units: {pending}")
    if executor.detached:
        jobs = submitted.jobs  # one array (one sbatch call) each
        view.note(f"kun-hpc run: {len(jobs)} sbatch calls, jobs {' '.join(jobs) or '-'}")
        if not wait:
            if cfg.merge.auto:
                job = submit_merge_job(cfg, executor, submitted)
                view.note(
                    f"kun-hpc run: merge job {job} starts when every unit has succeeded (Slurm cancels it "
                    "if one fails: run again then)"
                )
            return 0
        rc = view.follow(cfg)
        return merge(cfg, executor, view) if rc == 0 and cfg.merge.auto else rc
    wait_grid(submitted, executor, run_dir)
    view.grid(submitted)
    if any(submitted.failed.values()):
        return 1
    return merge(cfg, executor, view) if cfg.merge.auto else 0


def refuse_while_queued(cfg: DictConfig, command: str, view: View, supersede_merge: bool = False) -> bool:
    """True (and says why) when jobs of the run are still queued or running. A merge job still pending is
    cancelled first when ``supersede_merge``: the new submission brings its own."""
    queued = queued_tasks(Path(cfg.run.dir))
    waiting = [t for t, (stage, state) in queued.items() if stage == MERGE_STAGE and state == "PENDING"]
    if supersede_merge and waiting:
        scancel(waiting)
        view.note(f"kun-hpc {command}: cancelled the pending merge job {' '.join(waiting)}")
        queued = {t: v for t, v in queued.items() if t not in waiting}
    if not queued:
        return False
    jobs = " ".join(sorted({t.split("_")[0] for t in queued}))
    stages = ", ".join(sorted({stage for stage, _ in queued.values()}))
    view.note(
        f"kun-hpc {command}: {len(queued)} jobs of this run ({stages}) are still queued or running (jobs "
        f"{jobs}); wait for them (kun-hpc status --watch) or kun-hpc cancel, then run again"
    )
    return True


# --------------------------------------------------------------------------------------------- merge
def merge(cfg: DictConfig, executor: Executor, view: View) -> int:
    """``kun-hpc merge`` (and the end of ``run``): :func:`merge_dataset`, then its summary line."""
    result = merge_dataset(cfg, executor)
    view.note(f"kun-hpc merge: {result.summary()}")
    return 0


def merge_dataset(cfg: DictConfig, executor: Executor) -> MergeResult:
    """Check the grid is complete, decontaminate and dedup the final records cluster-wide, write the dataset,
    its card and its report.

    ::

        last stage's shards of every complete group                              merge/assemble.find_inputs
          [--merge-decontaminate (per shard; merge.decontaminate.benchmarks)-->]  merge/decontaminate/
          --merge-dedup-<key> (4 phases per merge.dedup_by entry)-->              merge/dedup/
          --merge-assemble (per shard)--> <merge.output>/dataset/{jsonl,parquet}  merge/assemble.py
        then the report with its quality sections, and the card (dataset/README.md)  report/
    """
    inputs = find_inputs(cfg)
    if inputs.missing:
        print(
            f"merge: allow_partial: merging the complete groups only; missing ({len(inputs.missing)}): "
            + ", ".join(inputs.missing),
            file=sys.stderr,
        )
    plan = merge_plan(cfg, inputs)
    log_root = Path(cfg.run.dir) / "logs"
    decontaminated: list[dict] = []
    if plan.decontaminate is not None:  # before the dedup passes, which then read its kept shards
        decontaminated = run_phases([plan.decontaminate], executor, log_root)[-1]
    passes = [(key, run_phases(phases, executor, log_root)[-1]) for key, phases in plan.passes]
    _clear_stale(plan.dataset, plan.dataset_shards, plan.assemble.units)
    assembled = run_phases([plan.assemble], executor, log_root)[-1]
    result = MergeResult(inputs, passes, assembled, plan.dataset, merge_dir(cfg) / "report", decontaminated)
    write_report(cfg, result)  # and the card, with the report's quality summary
    return result


@dataclass
class MergePlan:
    """The merge's phases, in the order they run; each reads what the one before writes."""

    decontaminate: Phase | None  # None without merge.decontaminate.benchmarks
    passes: list[tuple[str, list[Phase]]]  # (dedup key, its four phases) per pass
    assemble: Phase
    dataset: Path
    dataset_shards: int  # shards the assemble writes (dataset/jsonl/part-XXXXX)

    def phases(self) -> list[Phase]:
        first = [self.decontaminate] if self.decontaminate is not None else []
        return [*first, *(p for _, phases in self.passes for p in phases), self.assemble]


def merge_plan(cfg: DictConfig, inputs: MergeInputs) -> MergePlan:
    """The merge's phases over ``inputs``, with the config hashes their markers are checked against (what
    decides each phase's output: :mod:`kun_hpc.config.outputs`); nothing runs (the decontamination's
    benchmark index is built, or reused)."""
    out = merge_dir(cfg)
    run_dir = str(cfg.run.dir)
    settings = settings_of(cfg.dedup, cfg.merge.zstd_level)
    shards, root, upstream = inputs.shards, inputs.root, inputs.upstream
    decontaminate = None
    if cfg.merge.decontaminate.benchmarks:
        decontaminate, shards, root, upstream = decontaminate_phase(cfg, inputs.kind, shards, root, upstream)
    passes = []
    for key in dedup_keys(cfg, inputs.kind):
        job = make_job(f"merge-dedup-{key}", key, shards, root, out / f"dedup-{key}", settings, run_dir)
        passes.append((key, dedup_phases(job, upstream)))
        shards, root = [Path(p) for p in job.outputs], out / f"dedup-{key}"
        upstream = config_hash({"dedup": key, "upstream": upstream, "settings": output_settings(settings)})
    dataset = out / "dataset"
    spt = cfg.dedup.shards_per_task
    # a pair without the rules stage's faithfulness is measured here, with the rules section's settings;
    # the hash covers the ones the measure reads
    rules = OmegaConf.to_container(cfg.rules, resolve=True) if inputs.kind == "pairs" else None
    measure = {k: rules[k] for k in FAITHFULNESS_SETTINGS} if rules is not None else None
    what = {"upstream": upstream, "kind": inputs.kind, "parquet": cfg.merge.parquet, "rules": measure}
    what["columns"] = column_types(inputs.kind)  # a release that adds a column assembles again
    h = config_hash({**what, "inputs": [os.path.relpath(s, run_dir) for s in shards]})  # the run may move

    def task(i: int) -> AssembleTask:
        group = tuple(str(s) for s in shards[i : i + spt])
        m = cfg.merge
        return AssembleTask(inputs.kind, group, str(dataset), i, bool(m.parquet), int(m.zstd_level), rules)

    fn = "kun_hpc.merge.assemble:assemble_unit"
    starts = range(0, len(shards), spt)
    units = [PhaseUnit("merge-assemble", g, fn, task(i), run_dir, h) for g, i in enumerate(starts)]
    return MergePlan(decontaminate, passes, Phase("merge-assemble", units), dataset, len(shards))


def _clear_stale(dataset: Path, n: int, units: list[PhaseUnit]) -> None:
    """Shards numbered past this merge's (left by an earlier, larger one) would be loaded with it."""
    if all(is_phase_done(u) for u in units):
        return
    for sub in ("jsonl", "parquet"):
        for p in sorted((dataset / sub).glob("part-*")):
            if int(p.name[5:10]) >= n:
                p.unlink()


# The merge as a Slurm job of its own, so that `kun-hpc run` can submit a whole run and return. It waits
# (afterok) for every array the run submitted: it starts once every unit succeeded, and Slurm cancels it
# (--kill-on-invalid-dep=yes) as soon as one fails; running `kun-hpc run` again then re-submits what failed
# and a new merge job. The driver loads the run's saved config and runs the same merge_dataset as
# `kun-hpc merge`: its phases are arrays of their own, submitted from inside the job (with submitit's
# clean_env, so they do not inherit the driver's allocation). It is requeued like any unit (timeout,
# preemption); a restarted driver first waits for the phase arrays its earlier attempt left in the queue,
# then resumes at the phase markers, so no phase unit runs twice at once. Its resources are
# executor.stage_resources.merge over executor.slurm; its time_min need not cover the whole merge (each
# requeue resumes), but each attempt should outlast a phase.
@dataclass(frozen=True)
class MergeJob:
    run_dir: str
    unit: str = MERGE_STAGE  # the registry's unit name


def run_merge_job(job: MergeJob) -> dict:
    """What the merge driver runs (in a Slurm job), holding the run directory as ``kun-hpc merge`` does."""
    cfg = config_mod.load_run(job.run_dir)
    view = SchedulerView(cfg.executor.poll_interval_s)
    queued = queued_tasks(Path(job.run_dir), view)
    left = {t for t, (stage, _) in queued.items() if stage != MERGE_STAGE}
    if left:  # an earlier attempt of this driver was requeued while its phase arrays ran
        wait_for_jobs(view, left)
    with run_lock(job.run_dir, "merge"):
        result = merge_dataset(cfg, make_executor(cfg))
    print(f"merge job: {result.summary()}")
    return {"dataset": str(result.dataset), "rows": result.rows, "job": os.environ.get("SLURM_JOB_ID", "")}


def submit_merge_job(cfg: DictConfig, executor: Executor, after: Submitted) -> str:
    """Submit the merge driver after every task of the grid (afterok); its job id."""
    (task,) = executor.submit(
        run_merge_job,
        [MergeJob(str(cfg.run.dir))],
        name=MERGE_STAGE,
        log_dir=Path(cfg.run.dir) / "logs" / MERGE_STAGE,
        after=[after.all_tasks or None],
    )
    return task.array or task.job
