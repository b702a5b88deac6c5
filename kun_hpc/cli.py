"""The ``kun-hpc`` command: ``kun-hpc COMMAND [CONFIG.yaml] [key=value ...]``.

Every command takes an optional YAML preset from ``configs/`` and ``key=value`` overrides, saves the
resolved config and its hash in the run directory, and runs on the configured executor. This module parses
arguments, maps errors to exit codes (0 ok, 1 failed, 2 bad config, 3 too much bad input) and prints; what a
command does is in :mod:`kun_hpc.run`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import orjson
from omegaconf import DictConfig
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from kun_hpc import config as config_mod
from kun_hpc import run
from kun_hpc.cluster.dag import Submitted
from kun_hpc.cluster.funnel import print_funnel, yield_line
from kun_hpc.cluster.plan import plan, print_plan
from kun_hpc.cluster.scheduler import ACTIVE, SchedulerView, cancel
from kun_hpc.cluster.status import failed_logs, merge_job_state, print_status, summarize, unit_statuses
from kun_hpc.core.errors import BadInputError
from kun_hpc.inspect_run import add_parser as add_inspect_parser
from kun_hpc.inspect_run import main as inspect_main
from kun_hpc.quality.review import add_parser as add_review_parser
from kun_hpc.quality.review import main as review_main
from kun_hpc.stages.filter import calibration_path, needs_calibration
from kun_hpc.stages.summary import print_reports
from kun_hpc.train.launch import prepare, run_local, submit_slurm
from kun_hpc.train.sizing import print_estimates, train_plan

COMMANDS = {
    "shard": "native corpus files -> zstd JSONL shards with a manifest",
    "reshard": "N shards -> M shards, routed by record id (deterministic)",
    "run": "shard if needed, then submit the pipeline grid (only units without a valid marker)",
    "status": "per-stage done/running/pending/failed from markers and one squeue/sacct query",
    "logs": "the tail of each failed unit's log",
    "cancel": "scancel this run's jobs",
    "plan": "print the grid, arrays, sbatch calls and estimated CPU/GPU hours without submitting",
    "filter-calibrate": "shard if needed, then (re)compute the filter's perplexity percentile cut-offs",
    "train": "SFT of the Label model (seed pairs inverted) or the Primary Chat model (forward)",
    "merge": "dedup the final records across all corpora, write the dataset, its card and the funnel report "
    "(kun-hpc merge RUN_DIR [allow_partial=true])",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kun-hpc", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=help_)
        if name == "train":
            _train_arguments(c)
        c.add_argument(
            "args",
            nargs="*",
            metavar="[CONFIG.yaml] key=value",
            help="a config preset, then overrides such as executor.kind=inline",
        )
        if name == "run":
            c.add_argument("--wait", action="store_true", help="slurm: wait with a progress bar until done")
        if name == "status":
            c.add_argument("--watch", action="store_true", help="refresh every executor.poll_interval_s")
        if name == "logs":
            c.add_argument("--failed", action="store_true", default=True, help="failed units (the default)")
            c.add_argument("-n", "--lines", type=int, default=20)
    add_inspect_parser(sub)  # takes a run folder, not a config
    add_review_parser(sub)  # export / import: also a run folder
    return p


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is the preset when it is not a key=value override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def parse(argv: list[str] | None) -> argparse.Namespace:
    """Flags may come anywhere (``run CONFIG --wait key=value``): argparse stops filling a ``nargs="*"``
    positional at the first flag, so the overrides after it are gathered here."""
    parser = _parser()
    ns, extra = parser.parse_known_args(argv)
    if extra and (not hasattr(ns, "args") or any(e.startswith("-") for e in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        ns.args = [*ns.args, *extra]
    return ns


def main(argv: list[str] | None = None) -> int:
    ns = parse(argv)
    if ns.command == "inspect":
        return inspect_main(ns)
    if ns.command == "review":
        return review_main(ns)
    preset, overrides = split_args(ns.args)
    if ns.command == "train":  # the task decides train.output, which is resolved at load
        overrides = [f"train.task={ns.task}", *overrides]
    if preset is not None and Path(preset).is_dir():  # a run folder: the config it was run with
        preset = str(Path(preset) / "config.yaml")
    if ns.command == "merge":
        overrides = [f"merge.{o}" if o.startswith("allow_partial=") else o for o in overrides]
    try:
        cfg = config_mod.load(preset, overrides)
    except config_mod.ConfigError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 2
    try:
        return COMMAND_FUNCS[ns.command](cfg, ns)
    except BadInputError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 3
    except config_mod.ConfigError as e:  # found while running (a model folder, a tokenizer, ...)
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError) as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as e:  # a bad file or value met while running: a message, not a traceback
        print(f"kun-hpc: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


class TerminalView:
    """How ``kun-hpc`` shows a run (:class:`kun_hpc.run.View`): notes and tables on stderr, as it goes."""

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg

    def note(self, text: str) -> None:
        print(text, file=sys.stderr)

    def steps(self, reports: list) -> None:
        print_reports(reports)

    def funnel(self, rows: list[dict] | None = None) -> None:
        print_funnel(self.cfg, rows=rows)

    def grid(self, result: Submitted) -> None:
        print_status(unit_statuses(self.cfg))
        print_funnel(self.cfg)
        for f in (f for fs in result.failed.values() for f in fs):
            print(f"failed: {f}", file=sys.stderr)
        for stage, names in result.skipped.items():
            if names:
                print(f"not run ({stage}): {', '.join(names)}: an upstream unit failed", file=sys.stderr)

    def follow(self, cfg: DictConfig) -> int:
        return _watch(cfg, until_settled=True)


def cmd_shard(cfg: DictConfig, ns: argparse.Namespace) -> int:
    view = TerminalView(cfg)
    run.start(cfg, "shard", view)
    run.shard(cfg, run.make_executor(cfg), view)
    return 0


def cmd_reshard(cfg: DictConfig, ns: argparse.Namespace) -> int:
    view = TerminalView(cfg)
    run.start(cfg, "reshard", view)
    run.shard(cfg, run.make_executor(cfg), view, "reshard")
    return 0


def cmd_run(cfg: DictConfig, ns: argparse.Namespace) -> int:
    return run.run(cfg, TerminalView(cfg), wait=ns.wait)


def cmd_merge(cfg: DictConfig, ns: argparse.Namespace) -> int:
    view = TerminalView(cfg)
    executor = run.make_executor(cfg)
    if executor.detached and run.refuse_while_queued(cfg, "merge", view):
        return 1  # two merges at once would write the same files
    return run.merge(cfg, executor, view)


def _watch(cfg: DictConfig, until_settled: bool, follow_merge: bool = False) -> int:
    """Progress bars until no unit is queued (and, with ``follow_merge``, no merge job); 0 when every unit
    is done."""
    view = SchedulerView(cfg.executor.poll_interval_s)
    merge = None
    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[extra]}"),
        console=console,
        transient=False,
    ) as progress:
        bars: dict[str, int] = {}
        while True:
            rows = unit_statuses(cfg, view)
            for stage, counts in summarize(rows).items():
                total = sum(counts.values())
                extra = " ".join(f"{k}={v}" for k, v in counts.items() if k != "done" and v)
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=total, extra=extra)
                progress.update(bars[stage], completed=counts.get("done", 0), extra=extra)
            active = [r for r in rows if r.state in ("running", "pending")]
            merge = merge_job_state(Path(cfg.run.dir), view) if follow_merge and not active else None
            if until_settled and not active and not (merge and merge[1] in ACTIVE):
                break
            time.sleep(cfg.executor.poll_interval_s)
    print_status(rows, console)
    _print_merge_job(cfg, merge)
    return 0 if all(r.state == "done" for r in rows) else 1


def _print_merge_job(cfg: DictConfig, merge: tuple[str, str, str] | None, file=None) -> None:
    file = file or sys.stderr
    if merge:
        job, state, reason = merge
        print(f"merge job {job}: {state} {reason}".rstrip(), file=file)
        if state == "COMPLETED":
            print(f"report: {Path(cfg.merge.output) / 'report' / 'report.md'}", file=file)


def cmd_status(cfg: DictConfig, ns: argparse.Namespace) -> int:
    if ns.watch:
        return _watch(cfg, until_settled=True, follow_merge=True)
    rows = unit_statuses(cfg)
    print_status(rows)
    _print_merge_job(cfg, merge_job_state(Path(cfg.run.dir)), file=sys.stdout)
    print_funnel(cfg)
    print(yield_line(cfg))
    return 0


def cmd_logs(cfg: DictConfig, ns: argparse.Namespace) -> int:
    print(failed_logs(unit_statuses(cfg), ns.lines))
    return 0


def cmd_cancel(cfg: DictConfig, ns: argparse.Namespace) -> int:
    arrays = cancel(Path(cfg.run.dir))
    print(f"kun-hpc cancel: scancel {' '.join(arrays) or '(nothing submitted)'}", file=sys.stderr)
    return 0


def cmd_plan(cfg: DictConfig, ns: argparse.Namespace) -> int:
    print_plan(plan(cfg))
    rows = train_plan(cfg)
    if rows:
        print_estimates(rows, f"kun-hpc train {cfg.train.task} (estimates, not measurements)")
    return 0


def cmd_filter_calibrate(cfg: DictConfig, ns: argparse.Namespace) -> int:
    if not needs_calibration(cfg):
        print(
            "kun-hpc filter-calibrate: nothing to do: filter.perplexity needs a scorer and "
            "thresholds=percentile",
            file=sys.stderr,
        )
        return 0
    view = TerminalView(cfg)
    run_dir = run.start(cfg, "filter-calibrate", view)
    executor = run.make_executor(cfg)
    run.shard(cfg, executor, view)
    data = run.calibrate(cfg, executor)
    print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    print(f"kun-hpc filter-calibrate: wrote {calibration_path(run_dir)}", file=sys.stderr)
    return 0


def _train_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("task", choices=config_mod.TRAIN_TASKS, help="label: inverted pairs; chat: forward pairs")
    c.add_argument(
        "--executor",
        choices=("local", "slurm"),
        default="local",
        help="local: train.nproc processes here; slurm: train.nodes x train.tasks_per_node tasks",
    )
    c.add_argument("--wait", action="store_true", help="slurm: wait for the job and print its result")


def cmd_train(cfg: DictConfig, ns: argparse.Namespace) -> int:
    out = prepare(cfg)
    print(f"kun-hpc train {cfg.train.task}: output {out}", file=sys.stderr)
    if ns.executor == "slurm":
        job = submit_slurm(cfg)
        print(f"kun-hpc train: submitted job {job.job_id} (logs in {out / 'logs'})", file=sys.stderr)
        if not ns.wait:
            return 0
        results = job.results()
    else:
        results = run_local(cfg)
    print(orjson.dumps(results[0], option=orjson.OPT_INDENT_2).decode())
    return 0


COMMAND_FUNCS = {
    "shard": cmd_shard,
    "reshard": cmd_reshard,
    "run": cmd_run,
    "status": cmd_status,
    "logs": cmd_logs,
    "cancel": cmd_cancel,
    "plan": cmd_plan,
    "filter-calibrate": cmd_filter_calibrate,
    "train": cmd_train,
    "merge": cmd_merge,
}


if __name__ == "__main__":
    sys.exit(main())
