"""Run one unit by (run dir, stage, index): what hand-written sbatch scripts call.

``python -m kun_hpc.cluster.worker RUN_DIR STAGE [INDEX]`` runs unit INDEX (default:
``$SLURM_ARRAY_TASK_ID``) of STAGE with the run's saved config. On ``USR2`` (``--signal`` before the
time limit, or preemption) it asks Slurm to requeue the task and exits: the requeued task resumes
from the unit's last committed chunk. Submissions made by ``kun-hpc run`` go through submitit instead,
which does the same.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from kun_hpc.cluster.grid import plan_grid
from kun_hpc.config import load_run
from kun_hpc.core.unit_log import slurm_job
from kun_hpc.io.layout import stage_key
from kun_hpc.stages.runner import run_unit


def _requeue_on_usr2() -> None:
    def handler(signum, frame):
        job = slurm_job()
        if job:
            print(f"kun-hpc worker: USR2, requeueing {job}", file=sys.stderr, flush=True)
            subprocess.run(["scontrol", "requeue", job], check=False)
        os._exit(0)

    signal.signal(signal.SIGUSR2, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (2, 3):
        print("usage: python -m kun_hpc.cluster.worker RUN_DIR STAGE [INDEX]", file=sys.stderr)
        return 2
    run_dir, stage = argv[0], stage_key(argv[1])
    index = int(argv[2] if len(argv) == 3 else os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    cfg = load_run(run_dir)
    units = plan_grid(cfg).units.get(stage)
    if units is None:
        print(f"kun-hpc worker: no stage {stage!r} in {run_dir}/config.yaml pipeline.stages", file=sys.stderr)
        return 2
    if not 0 <= index < len(units):
        print(f"kun-hpc worker: {stage} has units 0..{len(units) - 1}, not {index}", file=sys.stderr)
        return 2
    _requeue_on_usr2()
    marker = run_unit(units[index])
    print(f"kun-hpc worker: {marker['unit']} done: in {marker['in']} out {marker['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
