"""``kun-hpc iterate RUN --rounds K``: Humpback's self-curation rounds over a finished run (issue 17).

Humpback (Li et al. 2023, "Self-Alignment with Instruction Backtranslation", arXiv:2308.06259, section 2,
"iterative self-curation") iterates: model M_k scores the back-translated pairs, the best become A_k, and
M_{k+1} is fine-tuned from the base model (LLaMa there) on the seed data plus A_k, not from M_k. Kun makes
one pass and stops. Here, over a run whose grid and merge are complete:

::

    round 0   the run itself: Point's verdicts with the run's own chat model M_0; A_0 = <run>/merge/dataset
    round k   M_k = train.base_model fine-tuned (train.task=chat) on train.seed_data + A_{k-1}
                  -> <run>/iterate/round-<k>/train/chat/model
              the run's stages after Label (Kun: point, answer, rules), point/answer.engine.model = M_k,
              over the run's labelled units -> the merge -> A_k = <run>/iterate/round-<k>/merge/dataset

Round k >= 1 is a run folder of its own, ``<run>/iterate/round-<k>/``, run by :mod:`kun_hpc.run`'s machinery:
its shards are the Label stage's output shards (the labelled units: the instructions stay, Point judges them
again, Answer polishes again), hard-linked once into ``<run>/iterate/labelled/<corpus>/`` with a manifest;
its ``pipeline.stages`` are the run's stages after Label; its markers, logs, ``kun-hpc status`` and merge
are those of any run. A_{k-1} goes to training as an Alpaca JSONL file (``instruction``, ``input`` "",
``output``): ``<run>/iterate/round-<k-1>/curated.jsonl``.

Resume: a round's *key* covers what decides its model and what its stages read: the training keys that
change the model, the content of the seed files, of A_{k-1} and of the chat template, and the labelled
units. It is kept in ``<round>/round.json``; a round whose key changed is emptied and made again (its model,
stages and merge all follow from those inputs). Within a key, training resumes from its newest checkpoint
and the grid and merge from their markers (the stages' own keys decide those, as in any run). A finished
round has a valid marker ``<round>/done/iterate/round.json`` and is skipped.

On Slurm a round is the training job (:func:`kun_hpc.train.launch.submit_slurm`) and the stage arrays after
it (``afterok``, :func:`kun_hpc.cluster.dag.submit_grid`); the command waits for them and merges before the
next round, whose training set needs A_k.

The report (``<run>/iterate/report.json`` and a table on stdout): per round the model, the training examples,
Point's verdicts (good, bad, other: both tags, no tag, or a rejection that is no verdict), the verdicts that
changed against the round before (by record id), the pairs kept (the merged dataset's rows) and the yield
(pairs kept / labelled units).
"""

from __future__ import annotations

import copy
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import xxhash
from omegaconf import DictConfig, OmegaConf
from rich.table import Table

from kun_hpc import config as config_mod
from kun_hpc import run
from kun_hpc.cluster.dag import submit_grid, wait_grid
from kun_hpc.cluster.executors import Task
from kun_hpc.cluster.grid import is_done, plan_grid, stage_hashes
from kun_hpc.cluster.phases import is_phase_done
from kun_hpc.cluster.scheduler import SchedulerView, record_submission, wait_for_jobs
from kun_hpc.config import ConfigError, ExecutorKind, TrainTask, config_hash
from kun_hpc.core.console import console as make_console
from kun_hpc.core.counts import Counts
from kun_hpc.core.hashing import file_sha256
from kun_hpc.io.atomic import atomic_open, atomic_write_bytes
from kun_hpc.io.layout import stage_dir, stage_key
from kun_hpc.io.lock import run_lock
from kun_hpc.io.markers import valid_marker, write_marker
from kun_hpc.io.shards import ShardInfo, input_info, list_shards, read_shard, write_manifest
from kun_hpc.merge.assemble import MergeResult, find_inputs, makes_pairs
from kun_hpc.stages.point import OUTCOMES
from kun_hpc.train.data import MODEL_DIR, model_done, report_path, seed_files
from kun_hpc.train.launch import NOT_MODEL, check_launch, prepare, run_local, submit_slurm

ITERATE = "iterate"  # <run>/iterate/, and the step name of a round's marker
LABELLED = "labelled"
CURATED = "curated.jsonl"
ROUND_FILE = "round.json"
VERDICTS_FILE = "verdicts.npz"
REPORT = "report.json"
TRAIN_STAGE = "train"  # the training job's name in the round's job registry (status, cancel)
VERDICTS = ("good", "bad", "other")  # Point's verdict on a unit: kept, judged bad, anything else
# train keys that change no trained model (kun_hpc.train.launch's) and the seed files (their content is
# hashed instead); every other train key is in a round's key
TRAIN_NOT_MODEL = (*NOT_MODEL, "seed_data")

ViewFor = Callable[[DictConfig], run.View]  # a run's View for a round's config (kun_hpc/cli.py's)


def iterate_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / ITERATE


def round_dir(run_dir: str | Path, k: int) -> Path:
    """``<run>/iterate/round-<k>``: round k's run folder (round 0 holds only A_0 and its verdicts)."""
    return iterate_dir(run_dir) / f"round-{k}"


# ------------------------------------------------------------------------------------------ the run
@dataclass
class Labelled:
    """The run's labelled units as the rounds read them: ``root`` (``<run>/iterate/labelled``), their number,
    and ``digest``, a hash of the Label stage's config hash and every shard's sha256."""

    root: Path
    records: int
    digest: str


@dataclass
class Source:
    """The run iterated on, as it ran (its saved config, no override): what every round starts from."""

    cfg: DictConfig
    stages: list[str]  # the stages each round runs again: the run's stages after Label
    labelled: Labelled
    dataset: list[Path]  # A_0's dataset shards (jsonl)


def check_source(cfg: DictConfig) -> list[str]:
    """The stages after Label that a round runs again; ConfigError when the run has no Label stage, no Point
    stage after it, or does not end in pairs (Answer or rules)."""
    keys = [stage_key(s) for s in cfg.pipeline.stages]
    if "label" not in keys:
        raise ConfigError(f"iterate: pipeline.stages {list(keys)} of {cfg.run.dir} has no label stage")
    after = list(cfg.pipeline.stages)[keys.index("label") + 1 :]
    if "point" not in [stage_key(s) for s in after]:
        raise ConfigError(f"iterate: pipeline.stages {list(keys)}: no point stage after label to judge again")
    if not makes_pairs(after[-1]):
        raise ConfigError(
            f"iterate: pipeline.stages {list(keys)}: the last stage makes no pairs (answer or rules): "
            "a round needs (instruction, output) pairs to train on"
        )
    return after


def load_source(run_dir: str | Path) -> Source:
    """The finished run: its stages, its labelled units linked for the rounds, A_0's dataset shards.
    RuntimeError when its grid or merge is not complete."""
    cfg = config_mod.load_run(run_dir)
    stages = check_source(cfg)
    labelled = link_labelled(cfg)
    try:
        inputs = find_inputs(cfg)  # RuntimeError naming what is missing
    except RuntimeError as e:
        raise RuntimeError(f"iterate: {e}") from None
    plan = run.merge_plan(cfg, inputs)
    markers = [valid_marker(u.run_dir, u.phase, u.name, u.config_hash) for u in plan.assemble.units]
    if any(m is None for m in markers):
        raise RuntimeError(f"iterate: {run_dir} is not merged under its config: `kun-hpc merge {run_dir}`")
    return Source(cfg, stages, labelled, dataset_shards(plan.dataset, markers))  # type: ignore[arg-type]


def link_labelled(cfg: DictConfig) -> Labelled:
    """Hard-link the Label stage's output shards into ``<run>/iterate/labelled/`` (same relative paths; a
    symbolic link where the filesystem refuses a hard link), with a manifest per folder that ``kun-hpc
    status``, ``plan`` and the merge's funnel read. A link that no longer points at the Label output (the
    Label stage ran again) is made again. RuntimeError when a Label unit has no valid marker."""
    grid = plan_grid(cfg)
    units = grid.units["label"]
    missing = [u.name for u in units if not is_done(u)]
    if missing:
        raise RuntimeError(
            f"iterate: the Label stage of {cfg.run.dir} is not complete ({len(missing)} of {len(units)} "
            f"units without a valid marker: {', '.join(missing[:5])}): run `kun-hpc run {cfg.run.dir}` first"
        )
    source, root = stage_dir(cfg, "label"), iterate_dir(cfg.run.dir) / LABELLED
    folders: dict[Path, list[ShardInfo]] = {}
    inputs: dict[Path, list[dict]] = {}
    entries = []
    for u in units:
        marker = valid_marker(u.run_dir, u.stage, u.name, u.config_hash)
        for s in marker["shards"]:  # type: ignore[index]
            rel = Path(s["output"]).relative_to(source)
            _link(Path(s["output"]), root / rel)
            info = ShardInfo(rel.name, Counts.from_dict(s).unit_counts.out, s["bytes"], s["sha256"])
            folders.setdefault((root / rel).parent, []).append(info)
            inputs.setdefault((root / rel).parent, []).append(input_info(s["output"], 1))
            entries.append((str(rel), s["sha256"]))
    linked = {root / rel for rel, _ in entries}
    for stale in (p for p in list_shards(root) if p not in linked):  # left by a larger Label output
        stale.unlink()
    digest = config_hash({"label": stage_hashes(cfg)[_named(cfg, "label")], "shards": sorted(entries)})
    for folder, infos in folders.items():
        n = sum(i.records for i in infos)
        write_manifest(
            folder, shards=infos, inputs=inputs[folder], config_hash=digest, read=n, quarantined={},
            extra={"corpus": folder.name, "labelled_from": str(source)},
        )  # fmt: skip
    return Labelled(root, sum(i.records for infos in folders.values() for i in infos), digest)


def _named(cfg: DictConfig, key: str) -> str:
    """How ``pipeline.stages`` names the stage of folder name ``key``."""
    return next(s for s in cfg.pipeline.stages if stage_key(s) == key)


def _link(src: Path, dst: Path) -> None:
    if dst.exists() and os.path.samefile(src, dst):
        return
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.link")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:  # another filesystem, or hard links refused
        tmp.symlink_to(src)
    os.replace(tmp, dst)


def dataset_shards(dataset: Path, assemble_markers: list[dict]) -> list[Path]:
    """The JSONL shards a merge wrote, from its ``merge-assemble`` markers (an empty input writes none)."""
    return [dataset / "jsonl" / s["output"] for m in assemble_markers for s in m["shards"] if s["output"]]


def write_curated(shards: list[Path], path: Path) -> tuple[int, dict[str, list[str]]]:
    """A merged dataset's pairs as Alpaca JSONL (``instruction``, ``input`` "", ``output``), in dataset
    order; the number of pairs and, per LLM stage, the models its ``prov`` names."""
    models: dict[str, set[str]] = {}
    n = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as f:
        for shard in shards:
            for row in read_shard(shard):
                pair = {"instruction": row["instruction"], "input": "", "output": row["output"]}
                f.write(orjson.dumps(pair, option=orjson.OPT_APPEND_NEWLINE))
                n += 1
                for stage, entry in orjson.loads(row["prov"] or "{}").items():
                    if isinstance(entry, dict) and "model" in entry:
                        models.setdefault(stage, set()).add(str(entry["model"]))
    return n, {s: sorted(m) for s, m in sorted(models.items())}


# ------------------------------------------------------------------------------------------ verdicts
@dataclass
class Verdicts:
    """Point's verdict on every labelled unit of a round: ``ids``, the xxh3_64 of each record id (sorted;
    64 bits: a collision among 10^7 ids has a chance of about 3e-6, and is refused, not miscounted), and
    ``codes``, the index of its verdict in :data:`VERDICTS`."""

    ids: np.ndarray
    codes: np.ndarray

    def counts(self) -> dict[str, int]:
        found = np.bincount(self.codes, minlength=len(VERDICTS))
        return {v: int(found[i]) for i, v in enumerate(VERDICTS)}

    def changes(self, before: Verdicts) -> dict[str, int]:
        """``{"good->bad": n, ...}``: the units judged differently than in ``before``, per pair of verdicts
        (units in both rounds; a round judges the same labelled units)."""
        _, mine, theirs = np.intersect1d(self.ids, before.ids, assume_unique=True, return_indices=True)
        old, new = before.codes[theirs], self.codes[mine]
        moved = Counter(zip(old[old != new].tolist(), new[old != new].tolist(), strict=True))
        return {f"{VERDICTS[a]}->{VERDICTS[b]}": n for (a, b), n in sorted(moved.items())}


def verdict_of(record: dict) -> int:
    """Index in :data:`VERDICTS` of a Point output record (kept) or rejected record (with ``reject``)."""
    reject = record.get("reject")
    if reject is None:
        return 0
    return 1 if OUTCOMES.get(reject["reason"]) == "bad" else 2


def read_verdicts(cfg: DictConfig) -> Verdicts:
    """Point's verdicts of a complete run (kept and rejected shards of every unit)."""
    ids: list[int] = []
    codes: list[int] = []
    for u in plan_grid(cfg).units["point"]:
        for t in u.shards:
            for path in (t.output, t.rejected):
                for r in read_shard(path) if Path(path).exists() else ():
                    ids.append(xxhash.xxh3_64_intdigest(str(r["id"]).encode()))
                    codes.append(verdict_of(r))
    order = np.argsort(np.asarray(ids, dtype=np.uint64), kind="stable")
    hashed = np.asarray(ids, dtype=np.uint64)[order]
    if len(hashed) > 1 and (hashed[1:] == hashed[:-1]).any():
        raise RuntimeError(f"iterate: Point's records of {cfg.run.dir} repeat an id (or its 64-bit hash)")
    return Verdicts(hashed, np.asarray(codes, dtype=np.uint8)[order])


def verdicts(cfg: DictConfig, cache: Path) -> Verdicts:
    """:func:`read_verdicts`, kept in ``cache/verdicts.npz`` under the Point stage's config hash."""
    key = stage_hashes(cfg)[_named(cfg, "point")]
    path = cache / VERDICTS_FILE
    if path.is_file():
        with np.load(path) as saved:
            if str(saved["key"]) == key:
                return Verdicts(saved["ids"], saved["codes"])
    found = read_verdicts(cfg)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{VERDICTS_FILE}"
    with open(tmp, "wb") as f:
        np.savez(f, ids=found.ids, codes=found.codes, key=np.asarray(key))
    os.replace(tmp, path)
    return found


# ------------------------------------------------------------------------------------------ a round
def round_config(base: DictConfig, source: Source, k: int, curated: Path) -> DictConfig:
    """Round k's run config: ``base`` (the run's config with the command's overrides) with its own run folder,
    the labelled units as shards, the stages after Label, M_k as the Point and Answer model, and training on
    the seed files + ``curated`` (A_{k-1})."""
    folder = round_dir(source.cfg.run.dir, k)
    cfg = copy.deepcopy(base)
    cfg.run.dir = str(folder)
    cfg.run.name = f"{source.cfg.run.name}-round-{k}"
    cfg.shard.output = str(source.labelled.root)
    cfg.dedup.raw = False  # the labelled units were deduplicated before Label saw them
    cfg.pipeline.stages = list(source.stages)
    cfg.merge.output = str(folder / "merge")
    cfg.train.task = TrainTask.chat
    cfg.train.output = str(folder / "train" / "chat")
    cfg.train.seed_data = [*base.train.seed_data, str(curated)]
    for key in ("point", "answer"):
        cfg[key].engine.model = str(Path(cfg.train.output) / MODEL_DIR)
    return cfg


def round_key(cfg: DictConfig, labelled: Labelled, curated: Path, seeds: list[str]) -> tuple[str, dict]:
    """What decides round k's model and what its stages read, and its hash: the training keys but
    :data:`TRAIN_NOT_MODEL`, the sha256 of each seed file, of A_{k-1} and of the chat template, and the
    labelled units' digest."""
    train = OmegaConf.to_container(cfg.train, resolve=True, enum_to_str=True)
    for key in TRAIN_NOT_MODEL:
        train.pop(key, None)  # type: ignore[union-attr]
    inputs = {
        "train": train,
        "seed": {str(p): file_sha256(p) for p in seed_files(seeds)},
        "curated": {str(curated): file_sha256(curated)},
        "chat_template": file_sha256(config_mod.find_file(cfg.train.chat_template)),
        "labelled": labelled.digest,
    }
    return config_hash(inputs), inputs


def done_hash(cfg: DictConfig, key: str) -> str:
    """The hash a finished round's marker is written under: its key and its stages' config hashes."""
    return config_hash({"key": key, "stages": stage_hashes(cfg)})


def finished(cfg: DictConfig, key: str) -> dict | None:
    """Round ``cfg``'s marker when the round is finished under ``key``: a valid marker, the model, every
    unit's and the merge's markers, and A_k as the marker recorded it; else None."""
    marker = valid_marker(cfg.run.dir, ITERATE, "round", done_hash(cfg, key))
    if marker is None or not model_done(cfg.train.output):
        return None
    curated = Path(cfg.run.dir) / CURATED
    if not curated.is_file() or file_sha256(curated) != marker["curated_sha256"]:
        return None
    try:
        inputs = find_inputs(cfg)
    except RuntimeError:
        return None
    plan = run.merge_plan(cfg, inputs)
    return marker if all(is_phase_done(u) for u in plan.assemble.units) else None


def reset(folder: Path, key: str, inputs: dict, view: run.View) -> None:
    """Empty round ``folder`` (all but its lock) when it was made under another key; then record the key."""
    path = folder / ROUND_FILE
    if path.is_file() and orjson.loads(path.read_bytes())["key"] != key:
        view.note(f"kun-hpc iterate: {folder.name}: its inputs changed since it ran (round.json): made again")
        for p in folder.iterdir():
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.name != "lock":  # held by this command
                p.unlink()
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, orjson.dumps({"key": key, "inputs": inputs}, option=orjson.OPT_INDENT_2))


def train_round(cfg: DictConfig, where: str, view: run.View) -> Task | None:
    """M_k: nothing when the model is there; locally, trained here (resuming from its newest checkpoint);
    on Slurm, the training job submitted (recorded in the round's job registry) as a task to wait for."""
    out = Path(cfg.train.output)
    if model_done(out):
        return None
    check_launch(cfg, where)
    prepare(cfg)  # the SFT set (rebuilt when its inputs changed) and the config the training reads
    if where == "local":
        view.note(f"kun-hpc iterate: {Path(cfg.run.dir).name}: training {out / MODEL_DIR}")
        run_local(cfg)
        if not model_done(out):
            raise RuntimeError(
                f"iterate: {Path(cfg.run.dir).name}: training stopped before the end (train.stop_at_step?): "
                f"no model in {out}; run again to resume"
            )
        return None
    job = submit_slurm(cfg)
    logs = str(out / "logs")
    entry = {"stage": TRAIN_STAGE, "job": job.job_id, "tasks": [job.job_id], "units": ["train-chat"],
             "dependency": None, "log_dir": logs, "submitted": time.time()}  # fmt: skip
    record_submission(Path(cfg.run.dir), entry)
    view.note(f"kun-hpc iterate: {Path(cfg.run.dir).name}: training job {job.job_id} (logs in {logs})")
    return Task(TRAIN_STAGE, "train-chat", job=job.job_id, array=job.job_id, log_dir=logs)


def run_round(cfg: DictConfig, key: str, inputs: dict, where: str, view: run.View) -> dict:
    """Round ``cfg`` from where it stands: train M_k (or find it), the stages over the labelled units (after
    the training job on Slurm), the merge, A_k; its marker. Returns the marker."""
    folder = Path(cfg.run.dir)
    with run_lock(folder, ITERATE):
        executor = run.make_executor(cfg)
        if executor.detached and run.refuse_while_queued(cfg, ITERATE, view):
            raise RuntimeError(f"iterate: jobs of {folder} are still queued or running")
        reset(folder, key, inputs, view)
        run.start(cfg, ITERATE, view)
        trained = train_round(cfg, where, view)
        grid = plan_grid(cfg)
        submitted = submit_grid(grid, executor, folder / "logs", after=[trained] if trained else [])
        wait_grid(submitted, executor, folder)
        view.grid(submitted)
        if trained is not None:
            wait_for_jobs(SchedulerView(cfg.executor.poll_interval_s), [trained.job])
        if not model_done(cfg.train.output):
            logs = trained.log_dir if trained is not None else cfg.train.output
            raise RuntimeError(f"iterate: {folder.name}: the training left no model: see {logs}")
        if any(submitted.failed.values()):
            raise RuntimeError(f"iterate: {folder.name}: units failed (kun-hpc logs {folder}); run again")
        result = run.merge_dataset(cfg, executor)
        view.note(f"kun-hpc merge: {result.summary()}")
        return finish(cfg, key, result)


def finish(cfg: DictConfig, key: str, result: MergeResult) -> dict:
    """A_k written for the next round, and the round's marker (what the report shows of it)."""
    folder = Path(cfg.run.dir)
    curated = folder / CURATED
    kept, models = write_curated(dataset_shards(result.dataset, result.assemble), curated)
    data = orjson.loads(report_path(cfg.train.output, "chat").read_bytes())
    examples = read_shard_sources(Path(data["path"]))
    marker = {
        "unit": "round",
        "config_hash": done_hash(cfg, key),
        "model": str(Path(cfg.train.output) / MODEL_DIR),
        "examples": data["out"],
        "examples_by_source": examples,
        "kept": kept,
        "models": models,
        "curated_sha256": file_sha256(curated),
    }
    write_marker(folder, ITERATE, "round", marker)
    return marker


def read_shard_sources(path: Path) -> dict[str, int]:
    """Examples of an SFT set per seed file they came from."""
    found: Counter[str] = Counter()
    with open(path, "rb") as f:
        for line in f:
            if line.strip():
                found[str(orjson.loads(line).get("source", ""))] += 1
    return dict(found)


# ------------------------------------------------------------------------------------------ the rounds
def iterate(base: DictConfig, rounds: int, where: str | None, view_for: ViewFor) -> dict:
    """``kun-hpc iterate``: rounds 1..``rounds`` over the run ``base.run.dir`` (``base``: its config with the
    command's overrides, checked), each skipped when finished; ``where``: where training runs (``local`` or
    ``slurm``; None: ``slurm`` when ``executor.kind`` is). Writes and returns the report. Raises ConfigError
    (the run cannot be iterated, a bad train key) and RuntimeError (the run is not finished, a round
    failed)."""
    if rounds < 1:
        raise ConfigError(f"iterate: --rounds must be >= 1, not {rounds}")
    where = where or ("slurm" if base.executor.kind == "slurm" else "local")
    base = copy.deepcopy(base)
    base.train.task = TrainTask.chat
    if where == "slurm":
        base.executor.kind = ExecutorKind.slurm  # the stage arrays wait for the training job
    check_base(base)
    source = load_source(base.run.dir)
    note = view_for(source.cfg).note
    zero = round_dir(source.cfg.run.dir, 0)
    kept, models = write_curated(source.dataset, zero / CURATED)
    rows = [{"round": 0, "model": str(source.cfg.point.engine.model), "examples": None, "kept": kept,
             "models": models, "dir": str(source.cfg.run.dir)}]  # fmt: skip
    cache = {0: (source.cfg, zero)}
    seeds = list(base.train.seed_data)
    for k in range(1, rounds + 1):
        cfg = round_config(base, source, k, round_dir(source.cfg.run.dir, k - 1) / CURATED)
        key, inputs = round_key(cfg, source.labelled, Path(cfg.train.seed_data[-1]), seeds)
        marker = finished(cfg, key)
        if marker is not None:
            note(f"kun-hpc iterate: round {k}: finished, skipped ({cfg.run.dir})")
        else:
            note(f"kun-hpc iterate: round {k}: M_{k} = {cfg.train.base_model} fine-tuned on the seed + "
                 f"{cfg.train.seed_data[-1]}")  # fmt: skip
            marker = run_round(cfg, key, inputs, where, view_for(cfg))
        shown = ("model", "examples", "examples_by_source", "kept", "models")
        rows.append({"round": k, **{f: marker[f] for f in shown}, "dir": str(cfg.run.dir)})
        cache[k] = (cfg, Path(cfg.run.dir))
        write_report(source, rows, cache)
    return write_report(source, rows, cache)


def check_base(base: DictConfig) -> None:
    """What training a round needs (``train.base_model`` a model folder, the chat template:
    :func:`kun_hpc.run.check`), and seed settings that read the curated Alpaca JSONL as Alpaca."""
    run.check(base, "train")
    fmt = str(base.train.seed_format)
    if fmt not in ("auto", "jsonl"):
        raise ConfigError(
            f"config key 'train.seed_format': {fmt!r} would read the rounds' curated pairs (Alpaca JSONL) "
            "wrongly: use auto"
        )
    if base.train.get("seed_columns"):
        raise ConfigError(
            "config key 'train.seed_columns': a column mapping would read the rounds' curated pairs (Alpaca "
            "JSONL) wrongly: convert the seed to Alpaca, ShareGPT or OpenAI messages and leave it empty"
        )


def write_report(source: Source, rows: list[dict], cache: dict[int, tuple[DictConfig, Path]]) -> dict:
    """``<run>/iterate/report.json``: per round its row with Point's verdicts, the changes against the round
    before, and the yield over the labelled units."""
    labelled = source.labelled.records
    out = []
    before = None
    for row in rows:
        cfg, folder = cache[row["round"]]
        mine = verdicts(cfg, folder)
        changes = mine.changes(before) if before is not None else {}
        out.append({
            **row,
            "verdicts": mine.counts(),
            "changes": changes,
            "good_to_bad": changes.get("good->bad", 0),
            "bad_to_good": changes.get("bad->good", 0),
            "labelled": labelled,
            "yield": round(row["kept"] / labelled, 6) if labelled else None,
        })  # fmt: skip
        before = mine
    report = {"run": str(source.cfg.run.dir), "labelled": labelled, "rounds": out}
    path = iterate_dir(source.cfg.run.dir) / REPORT
    atomic_write_bytes(path, orjson.dumps(report, option=orjson.OPT_INDENT_2))
    return report


def print_report(report: dict, console=None) -> None:
    """The report as a table (stdout)."""
    table = Table(title=f"kun-hpc iterate: {report['labelled']:,} labelled units")
    cols = ("round", "model", "train ex.", "good", "bad", "other", "good->bad", "bad->good", "kept", "yield")
    for col in cols:
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in report["rounds"]:
        v = r["verdicts"]
        first = r["round"] == 0
        table.add_row(
            str(r["round"]),
            _short(r["model"], report["run"]),
            "-" if r["examples"] is None else f"{r['examples']:,}",
            f"{v['good']:,}",
            f"{v['bad']:,}",
            f"{v['other']:,}",
            "-" if first else f"{r['good_to_bad']:,}",
            "-" if first else f"{r['bad_to_good']:,}",
            f"{r['kept']:,}",
            "-" if r["yield"] is None else f"{100 * r['yield']:.1f}%",
        )
    (console or make_console()).print(table)


def _short(path: str, run_dir: str) -> str:
    """A model folder under the run relative to it (``iterate/round-1/train/chat/model``)."""
    p = Path(path)
    return str(p.relative_to(run_dir)) if p.is_relative_to(run_dir) else path
