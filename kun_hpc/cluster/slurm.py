"""Slurm through submitit: arrays chunked under the live MaxArraySize, per-shard chains, requeue.

* Arrays go through submitit's ``map_array``, one sbatch call per chunk of at most ``MaxArraySize`` units
  (read from ``scontrol show config`` unless configured), throttled with ``%array_parallelism``.
* Unit g of stage k+1 waits only for unit g of stage k: both arrays are chunked the same way and
  chained with ``--dependency=aftercorr:<job>``; ``--kill-on-invalid-dep=yes`` cancels the dependents of
  a failed unit instead of leaving them pending forever.
* Every job is ``--requeue``-able and gets ``--signal=USR2@signal_delay_s``: on preemption or timeout,
  submitit calls :meth:`UnitTask.checkpoint` and requeues it; the unit resumes from its last committed
  chunk. A plain ``scontrol requeue`` (SIGTERM) or ``kill -9`` also ends in a resume, from the same
  chunks, when the job restarts or the run is submitted again.
* sbatch runs with ``--parsable``; the job id is found even when a site wrapper prints more.
* Every submission is appended to ``<run>/jobs.jsonl`` (stage, array job id, unit per array index), which
  ``status``, ``logs`` and ``cancel`` read (:mod:`kun_hpc.cluster.scheduler`).
* Workers import the ``kun_hpc`` the submitting command runs and find custom stages in its working
  directory (:func:`~kun_hpc.cluster.executors.worker_env`, exported by the job script), and a failed
  task is shown by its exception (``Type: message``) when its result holds one (issue 16).
* Resources come from the caller: a function from a stage or phase name to its ``executor.slurm`` settings
  (:func:`resources_for` over the run's config), so the executor reads no config.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import submitit
from omegaconf import DictConfig, OmegaConf
from submitit.core.utils import FailedSubmissionError

from kun_hpc.cluster.executors import Executor, Outcome, Task, check_after, job_error, upstream, worker_env
from kun_hpc.cluster.scheduler import SchedulerView, record_submission, tail, wait_for_jobs

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def parse_job_id(output: str | bytes) -> str:
    """The job id in sbatch output: ``--parsable`` style (``id`` or ``id;cluster``), or a sentence."""
    if isinstance(output, bytes):
        output = output.decode(errors="replace")
    for line in reversed(output.strip().splitlines()):
        m = re.fullmatch(r"\s*(\d+)(?:;\S+)?\s*", line)
        if m:
            return m.group(1)
    m = re.search(r"[Ss]ubmitted batch job (\d+)", output) or re.search(r"\bjob (\d+)", output)
    if m:
        return m.group(1)
    raise FailedSubmissionError(f"could not find a job id in the sbatch output: {output!r}")


class SbatchExecutor(submitit.SlurmExecutor):
    """submitit's SlurmExecutor with ``sbatch --parsable`` and a job id found in any sbatch output."""

    def _make_submission_command(self, submission_file_path: Path) -> list[str]:
        return ["sbatch", "--parsable", str(submission_file_path)]

    @staticmethod
    def _get_job_id_from_submission_command(string: bytes | str) -> str:
        return parse_job_id(string)


@contextlib.contextmanager
def _outside_any_job() -> Iterator[None]:
    """Submitting from inside a job (the merge job does): without the job's own SLURM_* variables, which
    sbatch would read as options of the new job (submitit's clean_env), but with the cluster's config file
    and the user's SBATCH_* defaults."""
    if "SLURM_JOB_ID" not in os.environ:
        yield
        return
    keep = {k: v for k, v in os.environ.items() if k == "SLURM_CONF" or k.startswith("SBATCH_")}
    with submitit.helpers.clean_env():
        os.environ.update(keep)
        try:
            yield
        finally:
            for k in keep:
                os.environ.pop(k, None)


class UnitTask(submitit.helpers.Checkpointable):
    """What a Slurm array task runs. Checkpointing needs no state: progress is the committed chunks."""

    def __init__(self, fn: Callable[[Any], Any]):
        self.fn = fn

    def __call__(self, unit: Any) -> Any:
        return self.fn(unit)


def live_max_array_size() -> int:
    out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, check=True).stdout
    m = re.search(r"^MaxArraySize\s*=\s*(\d+)", out, re.M)
    return int(m.group(1)) if m else 1001


def _safe(key: str, value: Any) -> Any:
    """Values end up in #SBATCH lines: refuse control characters (a newline would start a new line)."""
    if isinstance(value, str) and _CONTROL.search(value):
        raise ValueError(f"sbatch option {key}={value!r} contains a control character")
    return value


def submitit_parameters(res: dict[str, Any], name: str) -> dict[str, Any]:
    extra = {"requeue": True, "kill-on-invalid-dep": "yes"}
    extra.update({str(k).replace("_", "-"): _safe(k, v) for k, v in (res.get("extra_flags") or {}).items()})
    params: dict[str, Any] = {
        "job_name": _safe("job_name", name),
        "time": int(res["time_min"]),
        "cpus_per_task": int(res["cpus_per_task"]),
        "mem": f"{int(res['mem_gb'] * 1024)}MB",
        "signal_delay_s": int(res["signal_delay_s"]),
        "array_parallelism": int(res["array_parallelism"]),
        "additional_parameters": extra,
    }
    for key in ("partition", "account", "qos", "constraint"):
        if res.get(key):
            params[key] = _safe(key, res[key])
    if res.get("gpus_per_task"):
        params["gpus_per_task"] = int(res["gpus_per_task"])
    return params


Resources = Callable[[str], dict[str, Any]]


class SlurmExecutor(Executor):
    """Units as sbatch arrays (see the module docstring). ``resources(name)``: the ``executor.slurm``
    settings of a stage or phase; ``max_array_size``: ``None`` reads the live MaxArraySize once."""

    kind = "slurm"
    detached = True

    def __init__(
        self,
        run_dir: str | Path,
        resources: Resources,
        max_array_size: int | None = None,
        poll_interval_s: float = 10.0,
    ):
        self.run_dir = Path(run_dir)
        self.resources = resources
        self._max_array = max_array_size
        self.poll_interval_s = poll_interval_s
        self.entries: list[dict] = []  # the registry entries of every sbatch call made here

    @property
    def sbatch_calls(self) -> int:
        return len(self.entries)

    @property
    def max_array_size(self) -> int:
        if self._max_array is None:
            self._max_array = live_max_array_size()
        return self._max_array

    def chunks(self, n: int) -> list[range]:
        size = self.max_array_size  # array indices run 0..MaxArraySize-1
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def submit(self, fn, units, *, name, log_dir, after=None):
        """Units with no ``after`` go in arrays of at most MaxArraySize; units that each wait for one task of
        the same earlier array, in its order, go in one array chained task by task (``aftercorr``); any
        other ``after`` becomes ``afterok`` on the arrays named."""
        check_after(units, after)
        tasks = [Task(name, u) for u in units]
        free: list[int] = []
        corr: dict[str, list[tuple[Task, int]]] = {}  # upstream array -> (its task, position) per unit
        other: dict[str, list[int]] = {}  # afterok dependency -> positions
        for i in range(len(units)):
            wanted = after[i] if after else None
            ups = upstream(wanted)
            if any(not t.job for t in ups):
                raise ValueError(f"after= of unit {i} names a task no sbatch call submitted")
            if not ups:
                free.append(i)
            elif isinstance(wanted, Task):
                corr.setdefault(wanted.array, []).append((wanted, i))
            else:
                arrays = list(dict.fromkeys(t.array for t in sorted(ups, key=lambda t: t.seq)))
                other.setdefault("afterok:" + ":".join(arrays), []).append(i)
        calls: list[tuple[list[int], str | None]] = []
        for array, waiting in sorted(corr.items(), key=lambda kv: kv[1][0][0].seq):
            waiting.sort(key=lambda tp: tp[0].index)
            if [t.index for t, _ in waiting] == list(range(len(waiting))):  # task j waits for task j
                calls.append(([i for _, i in waiting], f"aftercorr:{array}"))
            else:
                other.setdefault(f"afterok:{array}", []).extend(i for _, i in waiting)
        calls += [([ps[k] for k in c], dep) for dep, ps in other.items() for c in self.chunks(len(ps))]
        calls += [([free[k] for k in c], None) for c in self.chunks(len(free))]
        with _outside_any_job():
            for positions, dependency in calls:
                self._sbatch(fn, tasks, positions, name, Path(log_dir), dependency)
        return tasks

    def _sbatch(
        self, fn: Callable[[Any], Any], tasks: list[Task], positions: list[int], name: str, log_dir: Path,
        dependency: str | None,
    ) -> None:  # fmt: skip
        stage = name.split()[0]
        ex = SbatchExecutor(folder=log_dir)
        params = submitit_parameters(self.resources(stage), f"kun-{stage}")
        params["setup"] = [f"export {k}={shlex.quote(v)}" for k, v in worker_env().items()]
        if dependency:
            params["dependency"] = dependency
        ex.update_parameters(**params)
        chunk = [tasks[i].unit for i in positions]
        jobs = ex.map_array(UnitTask(fn), chunk)
        array_id = jobs[0].job_id.split("_")[0]
        # a one-unit chunk is a plain job ("60"), the others are array tasks ("56_0", ...)
        entry = {
            "stage": stage,
            "job": array_id,
            "tasks": [j.job_id for j in jobs],
            "units": [getattr(u, "unit", str(i)) for i, u in zip(positions, chunk, strict=True)],
            "dependency": dependency,
            "log_dir": str(log_dir),
            "submitted": time.time(),
        }
        self.entries.append(entry)
        record_submission(self.run_dir, entry)
        for k, (i, job) in enumerate(zip(positions, jobs, strict=True)):
            tasks[i].job, tasks[i].array, tasks[i].index, tasks[i].seq = (
                job.job_id,
                array_id,
                k,
                len(self.entries),
            )
            tasks[i].log_dir = str(log_dir)

    def wait(self, tasks, on_done=None):
        """Wait until the tasks left the queue; a task that did not complete fails with its log's tail."""
        states = wait_for_jobs(SchedulerView(self.poll_interval_s), (t.job for t in tasks))
        for t in tasks:
            state = states.get(t.job, "UNKNOWN")
            job = submitit.SlurmJob(folder=t.log_dir, job_id=t.job)
            log = str(job.paths.stderr)
            if state == "COMPLETED":
                outcome = Outcome(t.unit, True, job.result(), log=log)
            else:
                error = job_error(job.paths.result_pickle)
                first = f"job {t.job} {state}" + (f": {error.splitlines()[0]}" if error else "")
                outcome = Outcome(t.unit, False, error=f"{first}\n{tail(job.paths.stderr, 5, '')}", log=log)
            outcome.name = t.name
            t.outcome = outcome
            if on_done:
                on_done(outcome)
        return [t.outcome for t in tasks]


def resources_for(cfg: DictConfig, stage: str) -> dict[str, Any]:
    """``executor.slurm`` with ``executor.stage_resources[stage]`` over it (plain dict)."""
    res = OmegaConf.to_container(cfg.executor.slurm)
    if stage in cfg.executor.stage_resources:
        res.update(OmegaConf.to_container(cfg.executor.stage_resources[stage]))
    return res
