"""Benchmark (not a test): near-duplicate removal, kun-hpc's dedup against datatrove 0.10.1's MinHash.

    python tools/bench_dedup.py --input PATH/chinese_poetry_poems.jsonl.zst [--limit N]
                                [--planted-per-kind K] [--precision-sample S] [--shards N] [--repeat R]
                                [--variants kun,datatrove] [--work DIR] [--json OUT.json]

Input. The first ``--limit`` poems (all by default) of the zstd JSONL corpus, ids ``poetry/<line>``, plus
``--planted-per-kind`` (default 400) planted copies of each of five edit kinds, made from distinct randomly
chosen poems (``random.Random(1)``, reproducible), ids ``planted/<kind>/<k>``:

* ``replace1``:  one Han character (U+4E00..U+9FFF) of the poem replaced by another one from U+4E00..U+9FA5;
* ``replace2``:  two distinct Han characters replaced likewise;
* ``punct_add``: one of ，。！？；：、 inserted at a random position;
* ``punct_del``: one punctuation character (Unicode category P*) deleted (poems without one are passed over);
* ``suffix``:    2 to 4 random Han characters (U+4E00..U+9FA5) appended.

A poem the edit would leave unchanged is passed over. The copies are inserted at random places and all
documents are spread round robin over ``--shards`` zstd JSONL shards that every variant reads.

Variants. Each runs in its own interpreter (``--child``), and each of its four phases in a process of its own
(a grand-child), as Slurm would run them as separate tasks:

* ``kun``: kun_hpc.merge.dedup's phases signatures, buckets, clusters, apply on the inline executor (phase i
  runs ``run_phases(phases[: i + 1])``; the earlier ones have valid markers and are skipped), with the
  default ``dedup`` config as it stands (printed, and kept in the JSON as ``settings``). The removed
  records are its rejected ones (``reject.survivor`` names the kept document, ``reject.similarity`` when
  present is summarised); the numbers in the buckets phase's markers are reported as they are (summed).
* ``datatrove``: MinhashDedupSignature -> MinhashDedupBuckets (14 tasks) -> MinhashDedupCluster
  (``save_cluster_id``) -> MinhashDedupFilter (``load_cluster_ids``, exclusion writer), each stage on
  LocalPipelineExecutor with one worker, MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8) and a
  word tokenizer that splits its simplified text into characters (whitespace dropped), so shingles are
  character 5-grams (what issue 13 asks for). A removed document's survivor is the kept document with its
  cluster id. Its xxhash helpers are patched to encode ``str`` first (xxhash >= 4 refuses ``str``).

Measured per phase: wall and CPU seconds of the work itself (inside the grand-child, after its imports,
including reading the shards and writing the outputs), the process's wall time, the RSS after imports
(baseline) and the process's peak RSS (``ru_maxrss`` from ``os.wait4``). Per variant: wall = sum of the
phases' work seconds, docs/s = documents / wall, peak RSS = max over phases. With ``--repeat R`` every
variant runs R times and the run with the best wall counts (peaks: max over all runs).

Quality, per variant:

* ``recall`` per kind and overall: share of planted pairs where the copy or its original was removed;
  ``same cluster`` (stricter): copy and original end with the same kept document.
* ``precision``: a seeded sample (``random.Random(2)``) of up to ``--precision-sample`` (default 2000,
  at least 1000) removed records, each paired with its survivor and compared by the bench's own code (not
  kun's normaliser) on a plain normal form: NFKC, lower case, every character of Unicode category P* or Z*
  and all whitespace dropped. (a) exact character 3-gram Jaccard, (b) character 5-gram Jaccard,
  (c) Levenshtein similarity 1 - distance / max(length). Precision = share with (c) >= 0.7 ("a reader's
  copy"; with a 95% Wilson lower bound); also the share with (a) >= 0.5, and how many pairs differ in their
  digit sequences (``re.findall(r"\\d+")`` of the raw texts).

Ratios kun / datatrove: docs/s, peak RSS, and peak RSS of each kun phase against the datatrove stage in the
same place (signatures vs signature, buckets vs buckets, ...). To see how memory grows with the input, run
at a few ``--limit`` values and compare the per-phase peaks above the baseline.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import re
import resource
import subprocess
import sys
import unicodedata
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from bench_shard import Clock  # noqa: E402  (wall and CPU seconds of a with block)

VARIANTS = ("kun", "datatrove")
PHASES = {
    "kun": ("signatures", "buckets", "clusters", "apply"),
    "datatrove": ("signatures", "buckets", "clusters", "filter"),
}
KINDS = ("replace1", "replace2", "punct_add", "punct_del", "suffix")
CN_PUNCT = "，。！？；：、"
LEV_MIN, J3_MIN = 0.7, 0.5
MARKER_META = {"unit", "phase", "config_hash", "timings", "host", "job", "array_task"}


# ------------------------------------------------------------------------------------------------ input
def _is_han(c: str) -> bool:
    return "\u4e00" <= c <= "\u9fff"


def _han(rng: random.Random, other: str = "") -> str:
    while True:
        c = chr(rng.randint(0x4E00, 0x9FA5))
        if c != other:
            return c


def plant(kind: str, text: str, rng: random.Random) -> str | None:
    """A copy of ``text`` with one edit of ``kind``; None when the poem does not allow it."""
    chars = list(text)
    if kind in ("replace1", "replace2"):
        han = [i for i, c in enumerate(chars) if _is_han(c)]
        n = 1 if kind == "replace1" else 2
        if len(han) < n:
            return None
        for i in rng.sample(han, n):
            chars[i] = _han(rng, chars[i])
    elif kind == "punct_add":
        chars.insert(rng.randint(0, len(chars)), rng.choice(CN_PUNCT))
    elif kind == "punct_del":
        punct = [i for i, c in enumerate(chars) if unicodedata.category(c).startswith("P")]
        if not punct:
            return None
        del chars[rng.choice(punct)]
    elif kind == "suffix":
        chars += [_han(rng) for _ in range(rng.randint(2, 4))]
    else:
        raise ValueError(kind)
    copy = "".join(chars)
    return copy if copy != text else None


def write_shards(records: list[dict], folder: Path, shards: int) -> list[Path]:
    """``records`` round robin into ``shards`` zstd JSONL files ``folder/part-XXXXX.jsonl.zst``."""
    from kun_hpc.io.shards import ZstdJsonlWriter

    paths = []
    for s in range(shards):
        w = ZstdJsonlWriter(folder / f"part-{s:05d}.jsonl.zst")
        for r in records[s::shards]:
            w.write(r)
        w.close()
        paths.append(w.path)
    return paths


def prepare(src: Path, work: Path, limit: int | None, per_kind: int, shards: int) -> tuple[dict, dict]:
    """Write the shards; (what the children need, {id: text} of every document)."""
    import zstandard

    docs = []
    with zstandard.ZstdDecompressor().stream_reader(src.open("rb")) as raw:
        for i, line in enumerate(io.TextIOWrapper(raw, encoding="utf-8")):
            if limit is not None and i >= limit:
                break
            docs.append({"id": f"poetry/{i}", "text": json.loads(line)["text"]})
    rng = random.Random(1)
    order = list(range(len(docs)))
    rng.shuffle(order)
    bases = iter(order)  # distinct base poems over all kinds
    pairs, planted = [], []
    for kind in KINDS:
        for k in range(per_kind):
            for b in bases:
                copy = plant(kind, docs[b]["text"], rng)
                if copy is not None:
                    break
            else:
                raise SystemExit(f"not enough poems to plant {per_kind} copies of each kind")
            planted.append({"id": f"planted/{kind}/{k}", "text": copy})
            pairs.append((docs[b]["id"], planted[-1]["id"], kind))
    for d in planted:
        docs.insert(rng.randrange(len(docs) + 1), d)
    paths = [str(p) for p in write_shards(docs, work / "input", shards)]
    inp = {
        "shards": paths,
        "docs": len(docs),
        "pairs": pairs,
        "bytes": sum(len(d["text"].encode()) for d in docs),
    }
    return inp, {d["id"]: d["text"] for d in docs}


# ------------------------------------------------------------------------------------------------- kun
def _kun_phases(inp: dict, work: Path):
    from kun_hpc import config
    from kun_hpc.merge.dedup import dedup_phases, make_job, settings_of

    out = work / "kun"
    cfg = config.load(None, [f"run.dir={out}"])
    shards = [Path(p) for p in inp["shards"]]
    settings = settings_of(cfg.dedup)
    job = make_job("dedup", "text", shards, shards[0].parent, out / "out", settings, str(out))
    return dedup_phases(job, "bench"), settings


def kun_phase(inp: dict, work: Path, i: int) -> dict:
    from kun_hpc.cluster.executors import InlineExecutor
    from kun_hpc.cluster.phases import run_phases

    phases, _ = _kun_phases(inp, work)
    base_rss = _rss_mb()
    with Clock() as clock:
        run_phases(phases[: i + 1], InlineExecutor(), work / "kun" / "logs")
    return {"wall_s": clock.wall_s, "cpu_s": clock.cpu_s, "rss_after_imports_mb": base_rss}


def kun_collect(inp: dict, work: Path) -> dict:
    from kun_hpc.io.markers import read_marker
    from kun_hpc.io.shards import list_shards, read_shard

    phases, settings = _kun_phases(inp, work)
    out = work / "kun"
    removed = []
    for p in list_shards(out / "out" / "rejected"):
        for r in read_shard(p):
            rj = r.get("reject", {})
            removed.append([r["id"], rj.get("survivor"), rj.get("reason"), rj.get("similarity")])
    markers = [read_marker(u.run_dir, u.phase, u.name) for u in phases[1].units]
    bucket_markers = [{k: v for k, v in m.items() if k not in MARKER_META} for m in markers if m]
    counts: dict = {}
    for m in bucket_markers:
        _add_numbers(counts, m)
    apply = [read_marker(u.run_dir, u.phase, u.name) for u in phases[3].units]
    return {
        "kept": sum(m["out"] for m in apply),
        "removed": removed,
        "settings": settings,
        "bucket_counts": counts,
        "bucket_markers": bucket_markers,
    }


def _add_numbers(into: dict, d: dict) -> None:
    """Sum the numbers of ``d`` (nested dicts too) into ``into``."""
    for k, v in d.items():
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            into[k] = into.get(k, 0) + v
        elif isinstance(v, dict):
            _add_numbers(into.setdefault(k, {}), v)


# ------------------------------------------------------------------------------------------- datatrove
def _char_tokenizer():
    """A datatrove word tokenizer whose words are the characters of the text (whitespace dropped)."""
    from datatrove.utils.word_tokenizers import WordTokenizer

    class CharTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return [c for c in text if not c.isspace()]

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return CharTokenizer("characters")


def _datatrove_stages(inp: dict, work: Path) -> list:
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup.minhash import (
        MinhashConfig,
        MinhashDedupBuckets,
        MinhashDedupCluster,
        MinhashDedupFilter,
        MinhashDedupSignature,
    )
    from datatrove.pipeline.readers import JsonlReader
    from datatrove.pipeline.writers import JsonlWriter

    _xxhash_accepts_str()
    base = work / "datatrove"
    folder = str(Path(inp["shards"][0]).parent)
    mh = MinhashConfig(n_grams=5, num_buckets=14, hashes_per_bucket=8)
    n = len(inp["shards"])

    def reader():
        return JsonlReader(folder, glob_pattern="*.jsonl.zst", text_key="text", id_key="id")

    def ex(steps, tasks, name):
        logs = str(base / "logs" / name)
        return LocalPipelineExecutor(steps, tasks=tasks, workers=1, logging_dir=logs, skip_completed=False)

    sig = MinhashDedupSignature(str(base / "sigs"), mh, language=_char_tokenizer())
    removed = JsonlWriter(str(base / "removed"))
    return [
        ex([reader(), sig], n, "s"),
        ex([MinhashDedupBuckets(str(base / "sigs"), str(base / "buckets"), config=mh)], mh.num_buckets, "b"),
        ex(
            [MinhashDedupCluster(str(base / "buckets"), str(base / "remove"), mh, save_cluster_id=True)],
            1,
            "c",
        ),
        ex(
            [
                reader(),
                MinhashDedupFilter(str(base / "remove"), exclusion_writer=removed, load_cluster_ids=True),
                JsonlWriter(str(base / "kept")),
            ],
            n,
            "f",
        ),
    ]


def datatrove_phase(inp: dict, work: Path, i: int) -> dict:
    stage = _datatrove_stages(inp, work)[i]
    base_rss = _rss_mb()
    with Clock() as clock:
        stage.run()
    return {"wall_s": clock.wall_s, "cpu_s": clock.cpu_s, "rss_after_imports_mb": base_rss}


def datatrove_collect(inp: dict, work: Path) -> dict:
    import gzip

    base = work / "datatrove"

    def records(folder: str):
        for p in sorted((base / folder).rglob("*.jsonl.gz")):
            with gzip.open(p, "rt", encoding="utf-8") as f:
                for line in f:
                    r = json.loads(line)
                    yield r["id"], r.get("metadata", {}).get("minhash_cluster_id", -1)

    kept, survivor_of_cluster = 0, {}
    for doc_id, c in records("kept"):
        kept += 1
        if c != -1:
            survivor_of_cluster[c] = doc_id
    removed = [[doc_id, survivor_of_cluster.get(c), "minhash", None] for doc_id, c in records("removed")]
    return {"kept": kept, "removed": removed}


def _xxhash_accepts_str() -> None:
    """datatrove 0.10.1 hashes ``str`` with xxhash, which xxhash >= 4 refuses; encode first (its own
    default hash function, so the comparison stays with datatrove's intended configuration)."""
    import xxhash
    from datatrove.utils.hashes import xxhash as dt_xxhash

    dt_xxhash.xxhash32 = lambda d: xxhash.xxh32_intdigest(d.encode() if isinstance(d, str) else d)
    dt_xxhash.xxhash64 = lambda d: xxhash.xxh64_intdigest(d.encode() if isinstance(d, str) else d)


RUN_PHASE = {"kun": kun_phase, "datatrove": datatrove_phase}
COLLECT = {"kun": kun_collect, "datatrove": datatrove_collect}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------- processes
def _spawn(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd`` to its end (output to ``log``); (its wall seconds, its peak RSS in MB)."""
    import time

    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    t = time.perf_counter()
    with open(log, "wb") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, cwd=str(log.parent), env=env)
        _, status, rusage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(
            f"{' '.join(cmd[2:5])} failed; log {log}:\n{log.read_text(errors='replace')[-3000:]}"
        )
    return time.perf_counter() - t, rusage.ru_maxrss / 1024


def child(name: str, inp_json: Path, work: Path, result: Path) -> None:
    """One variant: each phase in a grand-child process of its own, then its removals collected."""
    inp = json.loads(inp_json.read_text())
    phases = []
    for i, phase in enumerate(PHASES[name]):
        res = work / f"phase-{i}-{phase}.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--phase", str(i)]
        cmd += ["--work", str(work), "--input-json", str(inp_json), "--result", str(res)]
        wall, peak = _spawn(cmd, work / f"phase-{i}-{phase}.log")
        phases.append(
            {"phase": phase, **json.loads(res.read_text()), "process_wall_s": wall, "peak_rss_mb": peak}
        )
    out = {"records": inp["docs"], "phases": phases, **COLLECT[name](inp, work)}
    result.write_text(json.dumps(out))


def run_variant(name: str, inp_json: Path, work: Path, attempt: int) -> dict:
    wdir = work / f"{name}-{attempt}"
    wdir.mkdir(parents=True, exist_ok=True)
    result = wdir / "result.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--work", str(wdir)]
    cmd += ["--input-json", str(inp_json), "--result", str(result)]
    _spawn(cmd, wdir / "log.txt")
    return json.loads(result.read_text())


# ---------------------------------------------------------------------------------------------- quality
def normal_form(text: str) -> str:
    """NFKC, lower case, without punctuation (P*), separators (Z*) and whitespace."""
    t = unicodedata.normalize("NFKC", text).lower()
    return "".join(c for c in t if not c.isspace() and unicodedata.category(c)[0] not in "PZ")


def jaccard(a: str, b: str, n: int) -> float:
    """Exact Jaccard of the character n-gram sets (a text shorter than n is one gram)."""

    def grams(t: str) -> set[str]:
        return {t[i : i + n] for i in range(len(t) - n + 1)} if len(t) >= n else ({t} if t else set())

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb) if ga or gb else 1.0


def levenshtein(a: str, b: str) -> int:
    """Edit distance (insert, delete, substitute; each 1); the common prefix and suffix are cut first."""
    i, n = 0, min(len(a), len(b))
    while i < n and a[i] == b[i]:
        i += 1
    a, b = a[i:], b[i:]
    j, n = 0, min(len(a), len(b))
    while j < n and a[-1 - j] == b[-1 - j]:
        j += 1
    if j:
        a, b = a[:-j], b[:-j]
    if len(a) < len(b):
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for r, ca in enumerate(a, 1):
        cur = [r]
        for k, cb in enumerate(b, 1):
            cur.append(min(prev[k] + 1, cur[k - 1] + 1, prev[k - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def lev_similarity(a: str, b: str) -> float:
    m = max(len(a), len(b))
    return 1.0 - levenshtein(a, b) / m if m else 1.0


def wilson_low(k: int, n: int, z: float = 1.96) -> float:
    if not n:
        return float("nan")
    p = k / n
    return (p + z * z / (2 * n) - z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def precision(removed: list, texts: dict, size: int) -> dict:
    """The sampled removals compared with their survivors (see the module docstring)."""
    rows = sorted((r for r in removed if r[1] is not None), key=lambda r: r[0])
    sample = random.Random(2).sample(rows, min(size, len(rows)))
    pairs, lev_ok, j3_ok, digits = [], 0, 0, 0
    for doc, surv, reason, sim in sample:
        a, b = texts[doc], texts[surv]
        na, nb = normal_form(a), normal_form(b)
        row = {
            "id": doc,
            "survivor": surv,
            "reason": reason,
            "reported_similarity": sim,
            "j3": jaccard(na, nb, 3),
            "j5": jaccard(na, nb, 5),
            "lev": lev_similarity(na, nb),
            "digits_differ": re.findall(r"\d+", a) != re.findall(r"\d+", b),
        }
        lev_ok += row["lev"] >= LEV_MIN
        j3_ok += row["j3"] >= J3_MIN
        digits += row["digits_differ"]
        pairs.append(row)
    n = len(pairs)
    sims = [r["reported_similarity"] for r in pairs if r["reported_similarity"] is not None]
    return {
        "definition": f"share of sampled removals whose plain normal form has Levenshtein similarity >= "
        f"{LEV_MIN} to its survivor's (NFKC, lower case, no P*/Z*/whitespace)",
        "sampled": n,
        "removed_without_survivor": len(removed) - len(rows),
        "precision_lev": lev_ok / n if n else float("nan"),
        "precision_lev_wilson95_low": wilson_low(lev_ok, n),
        "precision_j3": j3_ok / n if n else float("nan"),
        "digits_differ": digits,
        "min_lev": min((r["lev"] for r in pairs), default=float("nan")),
        "min_j3": min((r["j3"] for r in pairs), default=float("nan")),
        "mean_j5": sum(r["j5"] for r in pairs) / n if n else float("nan"),
        "reported_similarity": {
            "present": len(sims),
            "min": min(sims, default=None),
            "mean": sum(sims) / len(sims) if sims else None,
        },
        "pairs": pairs,
    }


def recall(removed: list, pairs: list) -> dict:
    gone = {r[0] for r in removed}
    rep = {r[0]: r[1] for r in removed}
    per: dict[str, list[int]] = {k: [0, 0, 0] for k in KINDS}  # found, same cluster, total
    for base, copy, kind in pairs:
        c = per[kind]
        c[0] += base in gone or copy in gone
        c[1] += rep.get(base, base) == rep.get(copy, copy)
        c[2] += 1
    tot = [sum(c[i] for c in per.values()) for i in range(3)]
    return {
        "per_kind": {k: c[0] / c[2] if c[2] else float("nan") for k, c in per.items()},
        "same_cluster_per_kind": {k: c[1] / c[2] if c[2] else float("nan") for k, c in per.items()},
        "overall": tot[0] / tot[2] if tot[2] else float("nan"),
        "same_cluster_overall": tot[1] / tot[2] if tot[2] else float("nan"),
        "pairs": tot[2],
    }


# ------------------------------------------------------------------------------------------------ report
def summarise(runs: list[dict], inp: dict, texts: dict, sample: int) -> dict:
    for r in runs:
        r["wall_s"] = sum(p["wall_s"] for p in r["phases"])
    best = min(runs, key=lambda r: r["wall_s"])
    removed = best.pop("removed")
    phases = [
        {**p, "peak_rss_mb": max(r["phases"][i]["peak_rss_mb"] for r in runs)}
        for i, p in enumerate(best["phases"])
    ]
    return {
        **{k: v for k, v in best.items() if k != "phases"},
        "cpu_s": sum(p["cpu_s"] for p in phases),
        "docs_per_s": best["records"] / best["wall_s"],
        "peak_rss_mb": max(p["peak_rss_mb"] for p in phases),
        "phases": phases,
        "removed": len(removed),
        "removed_by_reason": _count(r[2] for r in removed),
        "recall": recall(removed, inp["pairs"]),
        "precision": precision(removed, texts, sample),
        "all_wall_s": [r["wall_s"] for r in runs],
    }


def _count(items) -> dict:
    out: dict = {}
    for x in items:
        out[str(x)] = out.get(str(x), 0) + 1
    return out


def ratios(k: dict, d: dict) -> dict:
    out = {"docs_per_s": k["docs_per_s"] / d["docs_per_s"], "peak_rss": k["peak_rss_mb"] / d["peak_rss_mb"]}
    for pk, pd in zip(k["phases"], d["phases"], strict=True):
        out[f"peak_rss_{pk['phase']}_vs_{pd['phase']}"] = pk["peak_rss_mb"] / pd["peak_rss_mb"]
    return out


def _table(head: list[str], rows: list[list], fmts: list[str]) -> None:
    """Print rows under a header; the first column left aligned, the others right aligned."""
    cells = [head] + [[format(v, f) for v, f in zip(row, fmts, strict=True)] for row in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    for c in cells:
        print(
            "  ".join(
                x.ljust(w) if i < 2 else x.rjust(w) for i, (x, w) in enumerate(zip(c, widths, strict=True))
            )
        )


def print_report(report: dict) -> None:
    res = report["results"]
    print(
        f"input {report['input']}: {report['docs']:,} docs ({report['planted']:,} planted, "
        f"{report['per_kind']} per kind), {report['bytes'] / 1e6:.1f} MB of text"
    )
    print()
    _table(
        ["variant", "", "wall s", "cpu s", "docs/s", "peak MB", "kept", "removed"],
        [
            [n, "", r["wall_s"], r["cpu_s"], r["docs_per_s"], r["peak_rss_mb"], r["kept"], r["removed"]]
            for n, r in res.items()
        ],
        ["", "", ".1f", ".1f", ",.0f", ".0f", ",", ","],
    )
    print("\nper phase (base MB: RSS after imports; growth MB: peak - base, what the phase's work added)")
    rows = []
    for n, r in res.items():
        for p in r["phases"]:
            base, peak = p["rss_after_imports_mb"], p["peak_rss_mb"]
            rows.append(
                [n, p["phase"], p["wall_s"], p["cpu_s"], p["process_wall_s"], base, peak, peak - base]
            )
    _table(
        ["variant", "phase", "work s", "cpu s", "proc s", "base MB", "peak MB", "growth MB"],
        rows,
        ["", "", ".2f", ".2f", ".2f", ".0f", ".0f", ".0f"],
    )
    print("\nrecall: share of planted pairs whose copy or original was removed")
    print("        (same cluster: copy and original end with one kept document)")
    _table(
        ["variant", "", *KINDS, "overall", "same cluster"],
        [
            [
                n,
                "",
                *(r["recall"]["per_kind"][k] for k in KINDS),
                r["recall"]["overall"],
                r["recall"]["same_cluster_overall"],
            ]
            for n, r in res.items()
        ],
        ["", "", *[".3f"] * len(KINDS), ".3f", ".3f"],
    )
    print("\nprecision: a sample of removals against their survivors, on NFKC + lower case without")
    print(f"  P*/Z*/whitespace; lev = share with Levenshtein similarity 1 - dist/max(len) >= {LEV_MIN}")
    print("  (a reader's copy: the precision), 95% lo its Wilson bound; j3 = share with character 3-gram")
    print(f"  Jaccard >= {J3_MIN}; digits: pairs whose digit sequences differ")
    prec = {n: r["precision"] for n, r in res.items()}
    _table(
        ["variant", "", "sampled", "lev", "95% lo", "j3", "min lev", "mean j5", "digits"],
        [
            [
                n,
                "",
                p["sampled"],
                p["precision_lev"],
                p["precision_lev_wilson95_low"],
                p["precision_j3"],
                p["min_lev"],
                p["mean_j5"],
                p["digits_differ"],
            ]
            for n, p in prec.items()
        ],
        ["", "", ",", ".4f", ".4f", ".4f", ".3f", ".3f", ","],
    )
    for n, r in res.items():
        rs = r["precision"]["reported_similarity"]
        if rs["present"]:
            print(f"{n}: its own reject.similarity on the sample: min {rs['min']:.3f}, mean {rs['mean']:.3f}")
    if "kun" in res:
        print(f"\nkun dedup settings: {json.dumps(res['kun']['settings'])}")
    if "kun" in res and res["kun"].get("bucket_counts"):
        print(f"kun buckets markers (summed): {json.dumps(res['kun']['bucket_counts'])}")
    if "ratios_vs_datatrove" in report:
        rr = report["ratios_vs_datatrove"]
        print("\nkun / datatrove: " + ", ".join(f"{k} x{v:.2f}" for k, v in rr.items()))
        k = res["kun"]
        mem = [v for key, v in rr.items() if key.startswith(("peak_rss_signatures", "peak_rss_buckets"))]
        checks = {
            "recall >= 0.95 on every kind": min(k["recall"]["per_kind"].values()) >= 0.95,
            "precision (lev) >= 0.99": k["precision"]["precision_lev"] >= 0.99,
            "docs/s >= 2x datatrove": rr["docs_per_s"] >= 2,
            "peak RSS <= datatrove's": rr["peak_rss"] <= 1,
            "signatures and buckets peaks <= datatrove's": all(v <= 1 for v in mem),
        }
        report["targets"] = checks
        print("targets: " + "; ".join(f"{c}: {'yes' if ok else 'NO'}" for c, ok in checks.items()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--input", type=Path)
    p.add_argument("--limit", type=int)
    p.add_argument("--planted-per-kind", type=int, default=400)
    p.add_argument("--precision-sample", type=int, default=2000)
    p.add_argument("--shards", type=int, default=4)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--work", type=Path, default=REPO / "bench-out" / "dedup")
    p.add_argument("--json", type=Path)
    p.add_argument("--child", choices=VARIANTS)
    p.add_argument("--phase", type=int)
    p.add_argument("--input-json", type=Path)
    p.add_argument("--result", type=Path)
    args = p.parse_args(argv)
    if args.child and args.phase is not None:
        inp = json.loads(args.input_json.read_text())
        args.result.write_text(json.dumps(RUN_PHASE[args.child](inp, args.work, args.phase)))
        return 0
    if args.child:
        child(args.child, args.input_json, args.work, args.result)
        return 0
    if args.input is None:
        p.error("--input is required")
    if args.precision_sample < 1000:
        p.error("--precision-sample must be >= 1000")
    names = args.variants.split(",")
    if set(names) - set(VARIANTS):
        p.error(f"--variants: choose from {VARIANTS}")
    import shutil

    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    inp, texts = prepare(args.input, args.work, args.limit, args.planted_per_kind, args.shards)
    inp_json = args.work / "input.json"
    inp_json.write_text(json.dumps(inp))
    results = {}
    for name in names:
        runs = [run_variant(name, inp_json, args.work, k) for k in range(args.repeat)]
        results[name] = summarise(runs, inp, texts, args.precision_sample)
    report = {
        "input": str(args.input),
        "limit": args.limit,
        "docs": inp["docs"],
        "bytes": inp["bytes"],
        "planted": len(inp["pairs"]),
        "per_kind": args.planted_per_kind,
        "results": results,
    }
    if "kun" in results and "datatrove" in results:
        report["ratios_vs_datatrove"] = ratios(results["kun"], results["datatrove"])
    print_report(report)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
