"""The stratified sample of a stage's records: the records and their strata, the draw, one review row of a
record, and the stage's state as its markers tell it."""

from __future__ import annotations

import hashlib
import heapq
import random
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
from omegaconf import DictConfig

from kun_hpc.cluster.funnel import stage_markers
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.inspect_run import stage_files
from kun_hpc.io.layout import stage_dir, stage_key
from kun_hpc.io.shards import iter_shard_lines, list_shards
from kun_hpc.quality.cost import ASSEMBLE
from kun_hpc.quality.review.common import BAD, GOOD, HUMAN, KEPT, NOTES, TEXT_COLUMNS, ReviewError


def _record(line: bytes, path: Path, line_no: int) -> dict:
    try:
        row = orjson.loads(line)
    except orjson.JSONDecodeError as e:
        raise ReviewError(f"{path}:{line_no}: not a JSON record ({e})") from None
    if not isinstance(row, dict):
        raise ReviewError(f"{path}:{line_no}: not a JSON object")
    return row


def require_stage(cfg: DictConfig, stage: str) -> None:
    """Raise :class:`ReviewError` naming the run's stages when ``stage`` is not one of them."""
    stages = [stage_key(s) for s in cfg.pipeline.stages]
    if stage not in stages:
        raise ReviewError(f"stage {stage!r} is not in this run; its stages: {', '.join(stages) or 'none'}")


def stage_lines(cfg: DictConfig, stage: str) -> Iterator[tuple[str, Path, int, bytes]]:
    """(stratum, file, 1-based line, line) of every record of ``stage``, files in path order.

    ``point`` / ``answer``: the stage's output shards (stratum ``<corpus>/kept``) and its rejected files
    (``<corpus>/<reason>``), the corpus being the folder; ``dataset``: the merged dataset's JSONL parts
    (``<corpus>/kept``, the corpus read from each record). Raises :class:`ReviewError` when the stage is not
    in the run or has no output yet.
    """
    if stage == "dataset":
        folder = Path(cfg.merge.output) / "dataset" / "jsonl"
        files = list_shards(folder)
        if not files:
            raise ReviewError(f"the run has no merged dataset yet ({folder} holds none): run `kun-hpc merge`")
        for path in files:
            for i, line in enumerate(iter_shard_lines(path), 1):
                yield f"{_record(line, path, i).get('corpus', '')}/{KEPT}", path, i, line
        return
    require_stage(cfg, stage)
    root = stage_dir(cfg, stage)
    if not root.is_dir():
        raise ReviewError(f"stage {stage!r} has no output yet ({root} does not exist): see `kun-hpc status`")
    for kind, base in ((KEPT, root), ("rejected", root / "rejected")):
        for path in stage_files(root, kind, None):
            corpus = path.relative_to(base).parts[0]
            for i, line in enumerate(iter_shard_lines(path), 1):
                why = (
                    KEPT if kind == KEPT else str(_record(line, path, i).get("reject", {}).get("reason", "?"))
                )
                yield f"{corpus}/{why}", path, i, line


def allocate(sizes: dict[str, int], n: int) -> dict[str, int]:
    """How many of ``n`` draws each stratum gets: equal shares, capped by the stratum's size, what a small
    stratum cannot take shared again among the others (water-filling); the last draws that do not divide
    evenly go to the largest strata first (ties by name). Every stratum gets one when ``n`` allows."""
    alloc = dict.fromkeys(sizes, 0)
    left = min(n, sum(sizes.values()))
    while left > 0:
        open_ = sorted((s for s in sizes if alloc[s] < sizes[s]), key=lambda s: (-sizes[s], s))
        share = max(left // len(open_), 1)
        for s in open_:
            give = min(share, sizes[s] - alloc[s], left)
            alloc[s] += give
            left -= give
            if not left:
                break
    return alloc


def draw(lines: Iterator[tuple[str, Path, int, bytes]], n: int, seed: int) -> tuple[dict, dict, dict]:
    """A stratified sample of ``n`` lines: (stratum -> chosen (file, line, bytes), stratum sizes, draws).

    One pass; each line gets a uniform random key from ``random.Random(seed)`` and each stratum keeps its
    ``n`` smallest keys (bottom-k sampling, a uniform sample without replacement whose first ``k`` are again
    uniform): memory holds at most ``n`` lines per stratum, whatever the stage's size. :func:`allocate` then
    says how many of each stratum's smallest keys are taken. The same files and seed give the same sample.
    """
    rng = random.Random(seed)
    heaps: dict[str, list[tuple[float, int, Path, int, bytes]]] = {}
    sizes: Counter[str] = Counter()
    for order, (stratum, path, i, line) in enumerate(lines):
        sizes[stratum] += 1
        key = rng.random()
        heap = heaps.setdefault(stratum, [])
        item = (-key, order, path, i, line)  # a max-heap on the key: its top is the first to go
        if len(heap) < n:
            heapq.heappush(heap, item)
        elif key < -heap[0][0]:
            heapq.heapreplace(heap, item)
    drawn = allocate(dict(sizes), n)
    chosen = {s: [it[2:] for it in sorted(heaps[s], key=lambda t: -t[0])[: drawn[s]]] for s in heaps}
    return chosen, dict(sorted(sizes.items())), dict(sorted(drawn.items()))


def review_row(record: dict, stage: str, stratum: str, size: int, source: str) -> dict:
    """One review row of a stage's record: ``id``, the texts (:data:`TEXT_COLUMNS`, None where the record
    has no such field; ``answer`` is the dataset's ``output`` at ``dataset``), the reviewer's empty
    ``human_verdict`` and ``notes``, and the stage's side (:data:`STAGE_COLUMNS`): ``judge_verdict`` is 好
    when the stage kept the record, 差 when it rejected it (``reason`` says why)."""
    reject = record.get("reject") or {}
    score = record.get("score")
    named = {"answer": "output" if stage == "dataset" else "answer"}
    texts = {c: record.get(named.get(c, c)) for c in TEXT_COLUMNS}
    return {
        "id": str(record.get("id", "")),
        **{c: None if v is None else str(v) for c, v in texts.items()},
        HUMAN: "",
        NOTES: "",
        "corpus": str(record.get("corpus") or stratum.split("/")[0]),
        "stage": stage,
        "judge_verdict": BAD if reject else GOOD,
        "score": score if isinstance(score, (int, float)) else None,
        "reason": str(reject.get("reason", "")),
        "stratum": stratum,
        "stratum_records": size,
        "source": source,
    }


def stage_state(cfg: DictConfig, stage: str) -> dict:
    """What a review of ``stage`` draws from, as the run's markers tell it (no pass over the records):
    ``records`` (each done unit's shards' kept plus rejected records; the merged dataset's rows, from the
    merge-assemble markers, for ``dataset``), ``units`` (markers read) and ``fingerprint``: the first 16 hex
    digits of a sha256 over every output shard's content hash (``sha256`` in its marker) and counts. A stage
    or merge that wrote other records or other counts changes it; a re-run that wrote the same records does
    not. Raises :class:`ReviewError` when ``stage`` is not in the run."""
    if stage == "dataset":
        markers = phase_markers(cfg.run.dir, ASSEMBLE)
        parts = sorted([s["output"], s.get("sha256", ""), s["rows"]] for m in markers for s in m["shards"])
        records = sum(p[2] for p in parts)
    else:
        require_stage(cfg, stage)
        markers = {s: m for s, m, _ in stage_markers(cfg)}.get(stage, [])
        parts = sorted(
            [m["unit"], s.get("sha256", ""), s["out"], sorted(s["rejected"].items())]
            for m in markers
            for s in m.get("shards", [])
        )
        records = sum(p[2] + sum(n for _, n in p[3]) for p in parts)
    digest = hashlib.sha256(orjson.dumps(parts)).hexdigest()[:16]
    return {"stage": stage, "records": records, "units": len(markers), "fingerprint": digest}
