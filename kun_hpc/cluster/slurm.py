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
  ``status``, ``logs`` and ``cancel`` read.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson
import submitit
from omegaconf import DictConfig, OmegaConf
from submitit.core.utils import FailedSubmissionError

from kun_hpc.cluster.executors import Executor, Outcome

REGISTRY = "jobs.jsonl"
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


class _SlurmExecutor(submitit.SlurmExecutor):
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


def resources_for(cfg: DictConfig, stage: str) -> dict[str, Any]:
    res = OmegaConf.to_container(cfg.executor.slurm)
    if stage in cfg.executor.stage_resources:
        res.update(OmegaConf.to_container(cfg.executor.stage_resources[stage]))
    return res


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


class SlurmExecutor(Executor):
    kind = "slurm"

    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        self.run_dir = Path(cfg.run.dir)
        self._max_array: int | None = cfg.executor.slurm.max_array_size
        self.sbatch_calls = 0

    @property
    def max_array_size(self) -> int:
        if self._max_array is None:
            self._max_array = live_max_array_size()
        return self._max_array

    def chunks(self, n: int) -> list[range]:
        size = self.max_array_size  # array indices run 0..MaxArraySize-1
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def submit(
        self,
        fn: Callable[[Any], Any],
        units: Sequence[Any],
        *,
        stage: str,
        log_dir: Path,
        dependencies: Sequence[str | None] | None = None,
    ) -> list[dict]:
        """Submit units as arrays; ``dependencies[c]`` is the sbatch dependency of chunk c. Returns the
        registry entries (one per sbatch call)."""
        with _outside_any_job():
            return self._submit(fn, units, stage=stage, log_dir=log_dir, dependencies=dependencies)

    def _submit(self, fn, units, *, stage, log_dir, dependencies) -> list[dict]:
        res = resources_for(self.cfg, stage)
        entries = []
        for c, idx in enumerate(self.chunks(len(units))):
            ex = _SlurmExecutor(folder=log_dir)
            params = submitit_parameters(res, f"kun-{stage}")
            dep = dependencies[c] if dependencies else None
            if dep:
                params["dependency"] = dep
            ex.update_parameters(**params)
            chunk = [units[i] for i in idx]
            jobs = ex.map_array(UnitTask(fn), chunk)
            self.sbatch_calls += 1
            array_id = jobs[0].job_id.split("_")[0]
            # a one-unit chunk is a plain job ("60"), the others are array tasks ("56_0", ...)
            entry = {
                "stage": stage,
                "job": array_id,
                "tasks": [j.job_id for j in jobs],
                "units": [getattr(u, "unit", str(i)) for i, u in zip(idx, chunk, strict=True)],
                "dependency": dep,
                "log_dir": str(log_dir),
                "submitted": time.time(),
            }
            entries.append(entry)
            record_submission(self.run_dir, entry)
        return entries

    def map(self, fn, units, *, name, log_dir, on_done=None):
        """Blocking map (shard, reshard, dedup phases): submit arrays, wait for them, report each unit."""
        if not units:
            return []
        entries = self.submit(fn, units, stage=name.split()[0], log_dir=Path(log_dir))
        from kun_hpc.cluster.status import SchedulerView, wait_for_jobs

        view = SchedulerView(self.cfg.executor.poll_interval_s)
        states = wait_for_jobs(view, (t for e in entries for t in e["tasks"]))
        out = []
        i = 0
        for e in entries:
            for k, _ in enumerate(e["units"]):
                unit = units[i]
                i += 1
                job = e["tasks"][k]
                state = states.get(job, "UNKNOWN")
                job_obj = submitit.SlurmJob(folder=e["log_dir"], job_id=job)
                if state == "COMPLETED":
                    out.append(Outcome(unit, True, job_obj.result(), log=str(job_obj.paths.stderr)))
                else:
                    err = _tail(job_obj.paths.stderr, 5)
                    out.append(
                        Outcome(unit, False, error=f"job {job} {state}\n{err}", log=str(job_obj.paths.stderr))
                    )
                if on_done:
                    on_done(out[-1])
        return out


def _tail(path: Path, n: int) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def record_submission(run_dir: Path, entry: dict) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / REGISTRY, "ab") as f:
        f.write(orjson.dumps(entry, option=orjson.OPT_APPEND_NEWLINE))


def read_registry(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / REGISTRY
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
