"""Benchmark: submit a 10,000-unit no-op grid to the sandbox cluster and watch it.

Reports, in one run, on the real sandbox cluster (MaxArraySize 1001 unless --max-array says otherwise):
* sbatch calls and submit time of kun-hpc's chunked arrays (expected: ceil(N / MaxArraySize) calls);
* scheduler calls per minute while ``kun-hpc status --watch``-style polling runs (kun_hpc.cluster.status over
  kun_hpc.cluster.scheduler), beside submitit's own default polling (``job.done()`` over every job, as a wait
  loop does) on the same grid.

Calls are counted by shims on PATH that log each call and exec the real squeue/sacct/sbatch. The jobs are
submitted held (``--hold``), so nothing runs; they are cancelled at the end.

    python tools/bench_slurm_submit.py --units 10000 --watch-s 60 --json bench-out/slurm_submit.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kun_hpc import config  # noqa: E402
from kun_hpc.cluster.grid import plan_grid  # noqa: E402
from kun_hpc.cluster.scheduler import SchedulerView  # noqa: E402
from kun_hpc.cluster.status import unit_statuses  # noqa: E402
from kun_hpc.run import make_executor  # noqa: E402
from kun_hpc.stages.runner import run_unit  # noqa: E402

SHIM = """#!/bin/sh
echo "$(date +%s.%N) {name}" >> "{log}"
exec "{real}" "$@"
"""


def install_shims(folder: Path, log: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("squeue", "sacct", "sbatch"):
        real = shutil.which(name)
        if real is None:
            raise SystemExit(
                f"{name} not found: start the sandbox (make sandbox) and source slurm/sandbox/env.sh"
            )
        path = folder / name
        path.write_text(SHIM.format(name=name, log=log, real=real))
        path.chmod(0o755)
    os.environ["PATH"] = f"{folder}:{os.environ['PATH']}"


def calls(log: Path, since: float, until: float) -> dict[str, int]:
    out: dict[str, int] = {}
    if not log.exists():
        return out
    for line in log.read_text().splitlines():
        ts, name = line.split()
        if since <= float(ts) <= until:
            out[name] = out.get(name, 0) + 1
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--units", type=int, default=10_000)
    ap.add_argument(
        "--max-array", type=int, default=1001, help="MaxArraySize the sandbox is (re)started with"
    )
    ap.add_argument("--watch-s", type=float, default=60.0, help="seconds of polling measured for each side")
    ap.add_argument(
        "--poll-s", type=float, default=None, help="kun-hpc poll interval (default: the config's)"
    )
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    subprocess.run(
        [str(REPO / "slurm/sandbox/start.sh")],
        check=True,
        capture_output=True,
        env={**os.environ, "SLURM_MAX_ARRAY_SIZE": str(args.max_array)},
    )
    os.environ.setdefault("SLURM_CONF", str(REPO / ".slurm-sandbox/etc/slurm.conf"))
    work = args.work or Path(tempfile.mkdtemp(prefix="kun-bench-slurm-"))
    log = work / "calls.log"
    install_shims(work / "shims", log)

    shards = work / "run" / "shards" / "bench"
    shards.mkdir(parents=True, exist_ok=True)
    for i in range(args.units):  # empty shards: a no-op grid of N units
        (shards / f"part-{i:05d}.jsonl.zst").write_bytes(b"")
    overrides = [
        f"run.dir={work / 'run'}",
        "executor.kind=slurm",
        "corpora=[]",
        "pipeline.stages=[tests.stages_for_tests:Tag]",
        "executor.slurm.extra_flags.hold=true",
        "executor.slurm.mem_gb=0.1",
    ]
    if args.poll_s is not None:
        overrides.append(f"executor.poll_interval_s={args.poll_s}")
    cfg = config.load(None, overrides)
    config.save_resolved(cfg, cfg.run.dir)
    units = plan_grid(cfg).units["tag"]
    ex = make_executor(cfg)
    t0 = time.time()
    ex.submit(run_unit, units, name="tag", log_dir=Path(cfg.run.dir) / "logs" / "tag")
    entries = ex.entries
    submit_s = time.time() - t0
    sbatch = calls(log, t0, time.time()).get("sbatch", 0)
    print(
        f"submitted {len(units)} units in {submit_s:.1f} s with {sbatch} sbatch calls "
        f"(MaxArraySize {ex.max_array_size}: expected {-(-len(units) // ex.max_array_size)})"
    )

    try:
        # kun-hpc: what `kun-hpc status --watch` does each interval
        view = SchedulerView(cfg.executor.poll_interval_s)
        t1 = time.time()
        rounds = 0
        while time.time() - t1 < args.watch_s:
            rows = unit_statuses(cfg, view)
            rounds += 1
            time.sleep(1.0)  # a watch loop wakes often; the view rate-limits the scheduler calls
        kun_calls = calls(log, t1, time.time())
        pending = sum(r.state == "pending" for r in rows)

        # submitit: its own polling of the same jobs (job.done() over every job, as a wait loop does)
        import submitit

        jobs = [submitit.SlurmJob(folder=e["log_dir"], job_id=t) for e in entries for t in e["tasks"]]
        t2 = time.time()
        while time.time() - t2 < args.watch_s:
            sum(j.done() for j in jobs)
            time.sleep(1.0)
        sub_calls = calls(log, t2, time.time())
    finally:
        subprocess.run(["scancel", *[e["job"] for e in entries]], check=False)

    minute = args.watch_s / 60
    result = {
        "units": len(units),
        "max_array_size": ex.max_array_size,
        "sbatch_calls": sbatch,
        "submit_s": round(submit_s, 2),
        "watch_s": args.watch_s,
        "kun_poll_interval_s": cfg.executor.poll_interval_s,
        "kun_status_rounds": rounds,
        "kun_pending_seen": pending,
        "kun_calls_per_min": {k: round(v / minute, 1) for k, v in kun_calls.items()},
        "submitit_calls_per_min": {k: round(v / minute, 1) for k, v in sub_calls.items()},
    }
    kun_total = sum(kun_calls.values()) / minute
    sub_total = sum(sub_calls.values()) / minute
    print(f"scheduler calls per minute while watching {len(units)} units for {args.watch_s:.0f} s:")
    interval = cfg.executor.poll_interval_s
    print(f"  kun-hpc status (interval {interval:g} s): {kun_total:.1f}  {result['kun_calls_per_min']}")
    print(f"  submitit job.done() loop (its defaults):   {sub_total:.1f}  {result['submitit_calls_per_min']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
