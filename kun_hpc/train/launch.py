"""``kun-hpc train label|chat``: prepare the SFT set, then run the SFT loop here or on Slurm.

* ``local``: ``train.nproc`` processes on this machine (one: in this process; more: ``python -m
  kun_hpc.train.launch CONFIG`` children with ``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` set, gloo on CPU).
* ``slurm``: one submitit job of ``train.nodes`` x ``train.tasks_per_node`` tasks (one per GPU);
  ``submitit.helpers.TorchDistributedEnvironment`` exports the torch.distributed variables from Slurm's.
  The job is ``--requeue``-able with ``--signal=USR2@train.slurm.signal_delay_s``: on preemption or time-out
  submitit calls :meth:`TrainTask.checkpoint`, which resubmits the same task; it restarts from the newest
  complete checkpoint (the steps since it are done again).

The resolved config goes to ``<output>/config.yaml``; every process reads it from there.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import submitit
from omegaconf import DictConfig, OmegaConf

from kun_hpc import config as config_mod
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.train.data import build_sft_set, data_path, model_done, report_path
from kun_hpc.train.seed import seed_files

JOBS_FILE = "jobs.jsonl"
SETTINGS_FILE = "train_settings.json"  # the settings the checkpoints and the model of train.output follow
# the keys of the SFT set (its own fingerprint covers them) and those that change no trained weight
DATA_KEYS = ("task", "seed_data", "seed_format", "seed_columns", "chat_template", "max_len", "base_model")
NOT_MODEL = ("output", "slurm", "save_steps", "keep_checkpoints", "log_steps", "stop_at_step")


def check_launch(cfg: DictConfig, executor: str) -> None:
    """Before any work: ``train.distributed`` fsdp / deepspeed shard over two or more processes, and
    accelerate applies them on GPUs only (checked here for ``--executor local``; a Slurm job's GPUs are on
    its nodes). Raises ConfigError."""
    t = cfg.train
    if t.distributed == "ddp":
        return
    world = int(t.nproc) if executor == "local" else int(t.nodes) * int(t.tasks_per_node)
    if world < 2:
        raise config_mod.ConfigError(
            f"train.distributed={t.distributed} shards the model over processes and {world} process has "
            "nothing to shard over: use train.distributed=ddp, or more processes (train.nproc; on Slurm "
            "train.nodes x train.tasks_per_node)"
        )
    import torch

    if executor == "local" and not torch.cuda.is_available():
        raise config_mod.ConfigError(
            f"train.distributed={t.distributed}: accelerate applies it on GPUs only and this machine has "
            "none; use train.distributed=ddp on CPU"
        )


def trained_before(out: Path) -> str | None:
    """What of a training ``out`` already holds: "a model", "checkpoints" or None."""
    if model_done(out):
        return "a model"
    return "checkpoints" if any((out / "checkpoints").glob("checkpoint-*")) else None


def _flat(d: dict, prefix: str = "") -> dict:
    """Nested sections as dotted keys (lora.enabled), so that a change names its key."""
    out: dict = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def check_settings(t: DictConfig, out: Path) -> None:
    """A ``train.output`` that holds checkpoints or a model refuses other training settings (a resume would
    mix two schedules, and a finished folder would say "already done" for a model it did not train);
    otherwise the settings are recorded in ``<out>/train_settings.json``. Raises ConfigError naming each
    changed key."""
    skip = (*NOT_MODEL, *DATA_KEYS)
    settings = _flat({k: v for k, v in OmegaConf.to_container(t, resolve=True).items() if k not in skip})
    path = out / SETTINGS_FILE
    before = trained_before(out)
    if before and path.is_file():
        old = orjson.loads(path.read_bytes())
        changed = [
            f"train.{k}: {old.get(k)!r} -> {settings.get(k)!r}"
            for k in sorted(set(old) | set(settings))
            if old.get(k) != settings.get(k)
        ]
        if changed:
            raise config_mod.ConfigError(
                f"train.output {out}: holds {before} trained with other settings ({'; '.join(changed)}); "
                f"choose a new train.output, or delete {out} to train again"
            )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps(settings, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


def prepare(cfg: DictConfig) -> Path:
    """Resolve the output folder, build the task's SFT set (when its config changed), save the config."""
    from transformers import AutoTokenizer

    from kun_hpc.inference.engine import go_offline, resolve_model_path

    t = cfg.train
    if OmegaConf.is_missing(t, "base_model"):
        raise config_mod.ConfigError("config key 'train.base_model': a local model folder is required")
    t.base_model = str(resolve_model_path(config_mod.find_file(t.base_model)))
    t.output = str(Path(t.output).resolve())
    out = Path(t.output)
    digest = config_mod.config_hash(
        {
            "data": {k: t[k] for k in DATA_KEYS},
            "label_template": cfg.label.template_sha256,
            # the seed files by content too: an edited file builds the set again
            "seed_files": sorted(file_sha256(f) for f in seed_files(list(t.seed_data))),
        }
    )
    stamp = out / "data" / f"{t.task}.sha256"
    check_settings(t, out)
    if not (data_path(out, t.task).is_file() and stamp.is_file() and stamp.read_text().strip() == digest):
        before = trained_before(out)
        if stamp.is_file() and before:
            raise config_mod.ConfigError(
                f"train.output {out}: holds {before} trained on another data set (seed files, "
                "templates, max_len or base model changed); choose a new train.output"
            )
        go_offline()
        report = build_sft_set(cfg, t.task, AutoTokenizer.from_pretrained(t.base_model), out)
        stamp.write_text(digest + "\n")
        print(
            f"kun-hpc train: {t.task} set: {report.out} examples of {report.records_in} "
            f"(rejected {dict(report.rejected)}, quarantined {dict(report.quarantined)})",
            file=sys.stderr,
        )
    config_mod.save_resolved(cfg, out)
    return out


def load_saved(out: str | Path) -> DictConfig:
    return config_mod.load(Path(out) / "config.yaml")


def data_report(out: str | Path, task: str) -> dict:
    return orjson.loads(report_path(out, task).read_bytes())


# ------------------------------------------------------------------------------------------------ local
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(cfg: DictConfig) -> list[dict[str, Any]]:
    """Train with ``train.nproc`` processes here; one summary per process."""
    from kun_hpc.train.sft import train

    out = Path(cfg.train.output)
    n = int(cfg.train.nproc)
    if n == 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return [train(cfg)]
    port = str(_free_port())
    procs = []
    for rank in range(n):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(n),
            "LOCAL_WORLD_SIZE": str(n),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": port,
        }
        cmd = [
            sys.executable,
            "-m",
            "kun_hpc.train.launch",
            str(out / "config.yaml"),
            str(out / f"result-{rank}.json"),
        ]
        procs.append(subprocess.Popen(cmd, env=env))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise RuntimeError(f"train: local processes exited with {codes} (their tracebacks are above)")
    return [orjson.loads((out / f"result-{r}.json").read_bytes()) for r in range(n)]


# ------------------------------------------------------------------------------------------------ slurm
class TrainTask(submitit.helpers.Checkpointable):
    """What each Slurm task runs. ``checkpoint`` (inherited) resubmits the same call on preemption/time-out:
    the state is the checkpoints on disk."""

    def __call__(self, config_path: str) -> dict[str, Any]:
        from kun_hpc.train.sft import train

        # Slurm's view wins over variables inherited from the submitting shell (sbatch exports its env)
        env = submitit.helpers.TorchDistributedEnvironment()
        env.export(set_cuda_visible_devices=False, overwrite=True)
        os.environ["MASTER_PORT"] = str(master_port(os.environ.get("SLURM_JOB_ID", "0")))
        # before the rendezvous: a rank that hangs there has said where it runs and where it waits
        print(
            f"kun-hpc train: rank {env.rank} of {env.world_size} on {socket.gethostname()}, local rank "
            f"{env.local_rank}, rendezvous at {os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}",
            file=sys.stderr,
            flush=True,
        )
        return train(load_saved(Path(config_path).parent))


def master_port(job_id: str) -> int:
    """The rendezvous port, the same on every node of a job: from the job id, in 15000-29999. submitit's
    own choice lies in Linux's ephemeral range (32768-60999), where any outgoing connection on the node
    may hold it (EADDRINUSE at rank 0, the other ranks waiting on it)."""
    return 15000 + int(job_id.split("_")[0] or 0) % 15000


def slurm_parameters(cfg: DictConfig) -> dict[str, Any]:
    from kun_hpc.cluster.slurm import submitit_parameters

    t = cfg.train
    params = submitit_parameters(OmegaConf.to_container(t.slurm), f"kun-train-{t.task}")
    params.pop("array_parallelism", None)
    params["additional_parameters"].pop("kill-on-invalid-dep", None)
    params.update(nodes=int(t.nodes), ntasks_per_node=int(t.tasks_per_node))
    params["srun_args"] = ["--kill-on-bad-exit=1"]  # one rank failing ends the step, not a hang
    return params


def submit_slurm(cfg: DictConfig) -> submitit.Job:
    from kun_hpc.cluster.slurm import SbatchExecutor

    out = Path(cfg.train.output)
    ex = SbatchExecutor(folder=out / "logs")
    ex.update_parameters(**slurm_parameters(cfg))
    job = ex.submit(TrainTask(), str(out / "config.yaml"))
    with open(out / JOBS_FILE, "ab") as f:
        f.write(
            orjson.dumps(
                {"job": job.job_id, "task": cfg.train.task, "submitted": time.time()},
                option=orjson.OPT_APPEND_NEWLINE,
            )
        )
    return job


def main(argv: list[str] | None = None) -> int:
    """A local child process: ``python -m kun_hpc.train.launch CONFIG.yaml RESULT.json``."""
    from kun_hpc.train.sft import train

    config_path, result = (argv or sys.argv[1:])[:2]
    summary = train(load_saved(Path(config_path).parent))
    Path(result).write_bytes(orjson.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
