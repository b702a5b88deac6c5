"""The ``kun-hpc`` command: ``kun-hpc COMMAND [CONFIG.yaml] [key=value ...]``.

Every command but ``inspect``, ``review`` and ``export`` takes an optional YAML preset from ``configs/``
(or a run folder) and ``key=value`` overrides; the commands that write save the resolved config and its hash
in the run directory and run on the configured executor (``kun-hpc config`` prints that config and writes
nothing). This module parses arguments, maps errors to exit codes (0 ok, 1 failed, 2 bad config or command
line, 3 too much bad input) and prints; what a command does is in :mod:`kun_hpc.run`. The help text
(:data:`DESCRIPTION`, :data:`COMMANDS`, the usage lines of :data:`OPERANDS`) is plain text, as a terminal
shows it (issue 16).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import select
import signal
import sys
import threading
import time
from pathlib import Path

import orjson
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from kun_hpc import config as config_mod
from kun_hpc import run
from kun_hpc.cluster.dag import Submitted
from kun_hpc.cluster.funnel import print_funnel, yield_line
from kun_hpc.cluster.plan import plan, print_plan
from kun_hpc.cluster.rates import run_progress
from kun_hpc.cluster.scheduler import ACTIVE, SchedulerView, cancel, cancel_local
from kun_hpc.cluster.status import (
    failed_logs,
    merge_job_state,
    print_status,
    requeue_lines,
    summarize,
    unit_statuses,
    with_activity,
)
from kun_hpc.config.checks import Problems
from kun_hpc.core.console import console as make_console
from kun_hpc.core.errors import BadInputError
from kun_hpc.inspect_run import add_parser as add_inspect_parser
from kun_hpc.inspect_run import main as inspect_main
from kun_hpc.io.lock import holder, run_lock
from kun_hpc.iterate import iterate, print_report
from kun_hpc.merge.export import add_parser as add_export_parser
from kun_hpc.merge.export import main as export_main
from kun_hpc.quality.review import add_parser as add_review_parser
from kun_hpc.quality.review import main as review_main
from kun_hpc.stages.filter import calibration_path, needs_calibration
from kun_hpc.stages.shard import empty_corpora
from kun_hpc.stages.summary import print_reports
from kun_hpc.train.launch import check_launch, prepare, run_local, submit_slurm
from kun_hpc.train.sizing import print_estimates, train_plan

DESCRIPTION = (
    "kun-hpc: Chinese instruction data (Kun) on a cluster. Every command but inspect, review and export "
    "takes an optional YAML preset (configs/default.yaml when none is given; a run folder: the config it ran "
    "with) and key=value overrides. Exit codes: 0 ok, 1 failed, 2 bad config, 3 too much bad input, "
    "130 / 143 interrupted (SIGINT / SIGTERM: run the same command to resume)."
)
COMMANDS = {
    "shard": "native corpus files -> zstd JSONL shards with a manifest",
    "reshard": "N shards -> M shards, routed by record id (deterministic)",
    "run": "shard if needed, then submit the pipeline grid (only units without a valid marker)",
    "status": "per-stage done/running/pending/failed from markers and one squeue/sacct query",
    "logs": "the tail of each failed unit's log; each Slurm requeue (a lost node, preemption) of the run",
    "cancel": "scancel this run's jobs, or stop the local command running it and its workers",
    "plan": "print the grid, arrays, sbatch calls and estimated CPU/GPU hours without submitting",
    "filter-calibrate": "shard if needed, then (re)compute the filter's perplexity percentile cut-offs",
    "train": "SFT of the Label model (seed pairs inverted) or the Primary Chat model (forward)",
    "iterate": "Humpback's self-curation rounds: chat model retrained on seed + curated pairs, judges again",
    "merge": "dedup the final records across all corpora, write the dataset, its card and the funnel report",
    "config": "print the resolved config as a run saves it in config.yaml (writes nothing)",
}
# what each command takes before its flags (the usage line); a run folder stands for its config.yaml
PRESET = "[CONFIG.yaml] [key=value ...]"
RUN_OR_PRESET = "[RUN_DIR | CONFIG.yaml] [key=value ...]"
OPERANDS = {
    "status": RUN_OR_PRESET,
    "logs": RUN_OR_PRESET,
    "cancel": RUN_OR_PRESET,
    "config": RUN_OR_PRESET,
    "train": "{" + ",".join(config_mod.TRAIN_TASKS) + "} " + PRESET,
    "merge": "[RUN_DIR | CONFIG.yaml] [allow_partial=true] [key=value ...]",
    "iterate": "RUN_DIR [key=value ...]",
}


def version() -> str:
    """The installed distribution's version (its metadata, not the source tree's)."""
    try:
        return importlib.metadata.version("kun-hpc")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"


def _flags(c: argparse.ArgumentParser) -> str:
    """A command's flags for its usage line, as argparse writes them (``[--lines LINES]``)."""
    out = []
    for a in c._actions:
        if not a.option_strings or isinstance(a, argparse._HelpAction):
            continue
        name = a.option_strings[-1]
        if a.nargs == 0:
            out.append(f"[{name}]")
        else:
            value = "{" + ",".join(map(str, a.choices)) + "}" if a.choices else a.metavar or a.dest.upper()
            out.append(f"[{name} {value}]")
    return " ".join(["[-h]", *out])


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kun-hpc", description=DESCRIPTION)
    p.add_argument("--version", action="version", version=f"kun-hpc {version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_ in COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=help_)
        if name == "train":
            _train_arguments(c)
        if name == "iterate":
            _iterate_arguments(c)
        partial = "; allow_partial=true merges the complete groups of an unfinished run"
        example = "train.epochs=1" if name == "train" else "executor.kind=inline"  # train takes --executor
        c.add_argument(
            "args",
            nargs="*",
            metavar="CONFIG key=value",
            help="a YAML preset or a run folder (the config it ran with), then overrides such as "
            f"{example}{partial if name == 'merge' else ''}",
        )
        if name == "run":
            c.add_argument("--wait", action="store_true", help="slurm: wait with a progress bar until done")
        if name == "status":
            c.add_argument("--watch", action="store_true", help="refresh every executor.poll_interval_s")
        if name == "plan":
            c.add_argument("--gpus", type=int, metavar="N", help="also estimate the wall clock on N GPUs")
        if name == "logs":
            c.add_argument("-n", "--lines", type=int, default=20, help="lines of each log (default 20)")
        c.usage = f"%(prog)s {OPERANDS.get(name, PRESET)} {_flags(c)}"
    add_inspect_parser(sub)  # takes a run folder, not a config
    add_review_parser(sub)  # export / import: also a run folder
    add_export_parser(sub)  # a run folder with a merged dataset
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
        # the command's own usage line, not the top-level one
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices.get(ns.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        ns.args = [*ns.args, *extra]
    return ns


def main(argv: list[str] | None = None) -> int:
    """The ``kun-hpc`` command: its exit code (0 done; 1 failed; 2 bad config; 3 bad input; 128 + signal
    when interrupted, 141 when the reader of its output went away, as a pipe into ``head`` does)."""
    try:
        return _main(argv)
    except BrokenPipeError as e:
        if not _stdout_closed():  # another pipe (stderr's, a child's stdin): a failure like any other
            with contextlib.suppress(OSError):
                print(f"kun-hpc: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        # Python's documented recipe (library/signal, "Note on SIGPIPE"): stdout points nowhere from here,
        # so the interpreter's last flush at exit does not raise into the terminal again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


def _stdout_closed() -> bool:
    """Whether stdout is a pipe or socket whose reader has gone (poll reports POLLERR on a pipe's write end,
    POLLHUP on a socket whose peer closed)."""
    poll = select.poll()
    poll.register(sys.stdout.fileno(), select.POLLOUT)
    return any(events & (select.POLLERR | select.POLLHUP) for _, events in poll.poll(0))


def _main(argv: list[str] | None) -> int:
    ns = parse(argv)
    if ns.command == "inspect":
        return inspect_main(ns)
    if ns.command == "review":
        return review_main(ns)
    if ns.command == "export":
        return export_main(ns)
    preset, overrides = split_args(ns.args)
    if ns.command == "train":  # the task decides train.output, which is resolved at load
        overrides = [f"train.task={ns.task}", *overrides]
    if preset is not None and Path(preset).is_dir():  # a run folder: the config it was run with
        preset = str(Path(preset) / "config.yaml")
    if ns.command == "merge":
        overrides = [f"merge.{o}" if o.startswith("allow_partial=") else o for o in overrides]
    try:
        cfg = run.load(ns.command, preset, overrides)  # the whole config, checked before any work
    except config_mod.ConfigError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:  # the machine, not the config: a text library release known to corrupt text
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 1
    writes = ns.command in WRITERS
    try:
        with _interruptible(), run_lock(cfg.run.dir, ns.command) if writes else contextlib.nullcontext():
            return COMMAND_FUNCS[ns.command](cfg, ns)
    except KeyboardInterrupt as e:  # SIGINT, SIGTERM: the local workers were stopped on the way out
        print(f"kun-hpc: interrupted{'; run the same command to resume' if writes else ''}", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else signal.SIGINT)
    except BadInputError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 3
    except config_mod.ConfigError as e:  # found while running (a model folder, a tokenizer, ...)
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, RuntimeError) as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        raise
    except (OSError, ValueError) as e:  # a bad file or value met while running: a message, not a traceback
        print(f"kun-hpc: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


# the commands that write in the run directory: one at a time per run (kun_hpc/io/lock.py); the Slurm merge
# job holds it too (kun_hpc/run.py)
WRITERS = ("run", "shard", "reshard", "merge", "filter-calibrate", "iterate")


class Interrupted(KeyboardInterrupt):
    """The command got SIGINT or SIGTERM (``signum``); exit code 128 + signum (130, 143)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def _interruptible():
    """SIGINT and SIGTERM end the command as an :class:`Interrupted` raised where it is (the local executor
    stops its workers as it unwinds); a second signal while it stops is ignored, so the stop completes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    stopping = []

    def interrupt(signum, frame):
        if not stopping:
            stopping.append(signum)
            raise Interrupted(signum)

    before = {s: signal.signal(s, interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)


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
        print_status(unit_statuses(self.cfg), progress=run_progress(self.cfg))
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
    if split_args(ns.args)[0] is None:
        print(what_runs(cfg), file=sys.stderr)
    return run.run(cfg, TerminalView(cfg), wait=ns.wait)


def what_runs(cfg: DictConfig) -> str:
    """Two lines saying what ``kun-hpc run`` without a preset falls back to (issue 16): the default preset,
    the executor, the corpora, the stages and the run folder."""
    default = Path(config_mod.DEFAULT_PRESET)
    corpora = ", ".join(f"{c.name} ({', '.join(c.paths)})" for c in cfg.corpora) or "none"
    stages = ", ".join(cfg.pipeline.stages) or "none (shards only)"
    stages += ", then the merge" if cfg.merge.auto else ""
    return (
        f"kun-hpc run: no preset given: {default.parent.name}/{default.name} on the {cfg.executor.kind} "
        f"executor, stages: {stages}; run dir {cfg.run.dir}\n"
        f"kun-hpc run: corpora {corpora}"
    )


def cmd_config(cfg: DictConfig, ns: argparse.Namespace) -> int:
    """The resolved config on stdout, as :func:`kun_hpc.config.save_resolved` writes it; nothing written.
    Then what ``kun-hpc run`` would check before any work (:func:`kun_hpc.run.check`): its problems on
    stderr and exit 2, so ``config`` validates a config before it is run."""
    sys.stdout.write(config_mod.to_yaml(cfg))
    problems = Problems()
    run.check(cfg, "run", problems)
    if problems.lines:
        print(f"kun-hpc config: kun-hpc run would stop here: {problems.message()}", file=sys.stderr)
        return 2
    return 0


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
    console = make_console(stderr=True)  # 160 columns when not a terminal: the records columns fit
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
            records = with_activity(run_progress(cfg), rows)  # a stopped stage has no ETA
            for stage, counts in summarize(rows).items():
                total = sum(counts.values())
                extra = " ".join(f"{k}={v}" for k, v in counts.items() if k != "done" and v)
                extra = f"{records[stage].summary()} {extra}" if stage in records else extra
                if stage not in bars:
                    bars[stage] = progress.add_task(stage, total=total, extra=extra)
                progress.update(bars[stage], completed=counts.get("done", 0), extra=extra)
            active = [r for r in rows if r.state in ("running", "pending")]
            merge = merge_job_state(Path(cfg.run.dir), view) if follow_merge and not active else None
            driver = holder(cfg.run.dir)  # another command working in the run (a local run between stages)
            busy = driver is not None and not driver.mine
            if until_settled and not active and not busy and not (merge and merge[1] in ACTIVE):
                break
            time.sleep(cfg.executor.poll_interval_s)
    print_status(rows, console, progress=records)
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
    print_status(rows, progress=run_progress(cfg))
    for said in empty_corpora(cfg):  # the run stopped at the shard step: no unit says why
        print(f"stopped at the shard step (exit 3): {said}")
    _print_merge_job(cfg, merge_job_state(Path(cfg.run.dir)), file=sys.stdout)
    print_funnel(cfg)
    print(yield_line(cfg))
    return 0


def cmd_logs(cfg: DictConfig, ns: argparse.Namespace) -> int:
    print(failed_logs(unit_statuses(cfg), ns.lines))
    requeues = requeue_lines(Path(cfg.run.dir))
    if requeues:
        print("\nrequeued by Slurm (a restart resumes after the unit's last chunk, or finds the unit done):")
        print("\n".join(f"  {line}" for line in requeues))
    return 0


def cmd_cancel(cfg: DictConfig, ns: argparse.Namespace) -> int:
    arrays = cancel(Path(cfg.run.dir))
    local = cancel_local(Path(cfg.run.dir))  # a local or inline run: its command stops its workers
    if arrays or not local:
        print(f"kun-hpc cancel: scancel {' '.join(arrays) or '(nothing submitted)'}", file=sys.stderr)
    if local:
        print(f"kun-hpc cancel: {local}", file=sys.stderr)
    return 0


def cmd_plan(cfg: DictConfig, ns: argparse.Namespace) -> int:
    if ns.gpus is not None and ns.gpus < 1:
        print(f"kun-hpc plan: --gpus must be >= 1, not {ns.gpus}", file=sys.stderr)
        return 2
    print_plan(plan(cfg, gpus=ns.gpus))
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
    check_launch(cfg, ns.executor)
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


def _iterate_arguments(c: argparse.ArgumentParser) -> None:
    c.add_argument("--rounds", type=int, default=1, metavar="K", help="rounds after the run itself (round 0)")
    c.add_argument(
        "--executor",
        choices=("local", "slurm"),
        help="where each round's training runs (default: slurm when executor.kind is slurm, else local); "
        "slurm: the stage arrays wait for the training job",
    )


def cmd_iterate(cfg: DictConfig, ns: argparse.Namespace) -> int:
    print_report(iterate(cfg, ns.rounds, ns.executor, TerminalView))
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
    "iterate": cmd_iterate,
    "config": cmd_config,
}


if __name__ == "__main__":
    sys.exit(main())
