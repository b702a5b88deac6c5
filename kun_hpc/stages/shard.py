"""``kun-hpc shard``: native corpus files -> ``<output>/<corpus>/part-XXXXX.jsonl.zst`` + manifest.

Map: one unit per input piece (a file, or a byte/line range of a big one) writes its own run of shards
and a marker with its counts into ``<output>/<corpus>/_work``; a record whose id the unit let through
already is quarantined as ``duplicate_id``. Finalize: ids repeated across units are quarantined too (the
first, in unit order, stays; kun_hpc/io/record_ids.py), parts are renamed to one global numbering in unit
order, quarantine files are collected, and ``manifest.json`` is written. A re-run skips units with a valid
marker, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import orjson
from omegaconf import DictConfig

from kun_hpc.config import config_hash
from kun_hpc.config.outputs import output_values
from kun_hpc.core.counts import Counts
from kun_hpc.core.errors import BadInputError
from kun_hpc.core.unit_log import UnitLog, counts_text
from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.io.markers import is_valid
from kun_hpc.io.quarantine import Bad, Quarantine, first_quarantined
from kun_hpc.io.readers import (
    Fields,
    FieldSurvey,
    InputPiece,
    expand_paths,
    fields_for,
    plan_pieces,
    read_piece,
)
from kun_hpc.io.record_ids import UnitIds, repeated_across
from kun_hpc.io.shards import (
    MANIFEST,
    RollingShardWriter,
    ShardInfo,
    input_info,
    read_manifest,
    read_shard,
    shard_name,
    write_manifest,
)
from kun_hpc.stages.steps import Array, Step
from kun_hpc.stages.summary import StepReport, failed_units_message

WORK = "_work"
QUARANTINE = "quarantine"


@dataclass(frozen=True)
class ShardUnit:
    """Everything one task needs to shard one input piece (picklable, executor-agnostic)."""

    unit: str
    corpus: str
    fmt: str
    fields: Fields
    piece: InputPiece
    work: str
    config_hash: str
    records_per_shard: int
    bytes_per_shard: int | None
    zstd_level: int
    max_record_bytes: int


def _marker(work: Path, unit: str) -> Path:
    return work / f"{unit}.done.json"


def _ids(work: Path, unit: str) -> Path:
    return work / f"{unit}.ids.npy"


def duplicate_id(source: str, record: dict, first: str) -> Bad:
    """The quarantine entry of a record whose id was let through already (at ``first``, a ``src``)."""
    position = record["src"].removeprefix(f"{source}:")
    return Bad(source, position, "duplicate_id", f"id {record['id']!r} already at {first}", record["text"])


def load_marker(work: Path, unit: str, cfg_hash: str) -> dict | None:
    """A unit's marker, if it exists and was written under the same config hash."""
    path = _marker(work, unit)
    if not path.exists():
        return None
    marker = orjson.loads(path.read_bytes())
    return marker if is_valid(marker, cfg_hash) else None


def shard_unit(u: ShardUnit) -> dict:
    """Read one input piece, write its shards and quarantine, and commit a marker. Idempotent."""
    work = Path(u.work)
    done = load_marker(work, u.unit, u.config_hash)
    if done is not None:
        return done
    out = work / u.unit
    log = UnitLog(f"shard-{u.corpus}-{u.unit}")  # unit names repeat across corpora
    piece = u.piece.path + (f" piece {u.piece.index + 1}/{u.piece.count}" if u.piece.count > 1 else "")
    log.start(f"shard corpus {u.corpus}, {piece} -> {out}, config {u.config_hash}, from the first record")
    shutil.rmtree(out, ignore_errors=True)  # leftovers of an interrupted attempt
    writer = RollingShardWriter(out, u.records_per_shard, u.bytes_per_shard, u.zstd_level)
    # the driver shows the first entries of each corpus (print_reports), whatever the executor
    quarantine = Quarantine(work / QUARANTINE / f"{u.unit}.jsonl.zst", echo_first=0)
    ids = UnitIds()
    survey = FieldSurvey()
    read = 0
    write, add, first_seen = writer.write, quarantine.add, ids.first_seen
    with log:
        try:
            for item in read_piece(u.piece, u.corpus, u.fmt, u.fields, u.max_record_bytes, survey):
                read += 1
                if type(item) is dict:
                    first = first_seen(item["id"], item["src"])
                    if first is None:
                        write(item)
                    else:
                        add(duplicate_id(u.piece.label, item, first))
                else:
                    add(item)
        except BaseException:
            log.records = read
            writer.abort()
            raise
    shards = writer.close()
    quarantine.close()
    ids.save(_ids(work, u.unit))
    counts = Counts(read, sum(s.records for s in shards), quarantined=quarantine.counts)
    counts.check(u.unit)  # would be a bug in a reader or writer, never bad input
    marker = {
        "unit": u.unit,
        "input": u.piece.label,
        "config_hash": u.config_hash,
        **counts.to_shard_marker(),
        "shards": [asdict(s) for s in shards],
        "fields": survey.to_dict(),
    }
    atomic_write_bytes(_marker(work, u.unit), orjson.dumps(marker))
    log.records = read
    log.end(f"{counts_text(counts)}, {len(shards)} shards")
    return marker


def plan_corpus(cfg: DictConfig, corpus: DictConfig) -> tuple[list[ShardUnit], list[dict]]:
    s = cfg.shard
    files = expand_paths(list(corpus.paths), corpus.format)
    pieces = plan_pieces(files, corpus.format, s.split_bytes)
    fields = fields_for(corpus.format, corpus.text_field, corpus.id_field, tuple(corpus.meta_fields))
    cfg_hash = shard_config_hash(cfg, corpus)
    work = Path(s.output) / corpus.name / WORK
    file_index = {p: i for i, p in enumerate(files)}
    units = [
        ShardUnit(
            unit=f"u{file_index[Path(p.path)]:05d}-{p.index:04d}",
            corpus=corpus.name,
            fmt=corpus.format,
            fields=fields,
            piece=p,
            work=str(work),
            config_hash=cfg_hash,
            records_per_shard=s.records_per_shard,
            bytes_per_shard=s.bytes_per_shard,
            zstd_level=s.zstd_level,
            max_record_bytes=s.max_record_bytes,
        )
        for p in pieces
    ]
    counts = Counter(p.path for p in pieces)
    inputs = [input_info(f, counts[str(f)]) for f in files]
    return units, inputs


def shard_config_hash(cfg: DictConfig, corpus: DictConfig) -> str:
    """What decides the records of a corpus's shards: the corpus and shard keys that change output
    (:mod:`kun_hpc.config.outputs`; not where they go, how they are compressed nor how failures are
    judged)."""
    return config_hash(
        {
            "layout": 2,  # 2: ids are checked for repeats (issue 12); a unit of layout 1 is redone
            "corpus": output_values(corpus, f"corpora.{corpus.name}"),
            "shard": output_values(cfg.shard, "shard"),
        }
    )


def finalize(
    out: Path, units: list[ShardUnit], markers: list[dict], inputs: list[dict], cfg_hash: str
) -> dict:
    """Quarantine ids repeated across units, give the units' parts one numbering in unit order, gather
    quarantine, write the manifest."""
    work = out / WORK
    quarantine_repeats_across(work, units, markers)
    shards: list[ShardInfo] = []
    for old in out.glob("part-*.jsonl.zst"):
        old.unlink()
    (out / QUARANTINE).mkdir(parents=True, exist_ok=True)
    for u, m in zip(units, markers, strict=True):
        for s in m["shards"]:
            info = ShardInfo(**s)
            info.name = shard_name(len(shards))
            (work / u.unit / s["name"]).replace(out / info.name)
            shards.append(info)
        for q in sorted((work / QUARANTINE).glob(f"{u.unit}*.jsonl.zst")):
            q.replace(out / QUARANTINE / q.name)
    total = sum((Counts.from_shard_marker(m) for m in markers), Counts())
    manifest = write_manifest(
        out,
        shards=shards,
        inputs=inputs,
        config_hash=cfg_hash,
        read=total.in_,
        quarantined=dict(total.quarantined),
        extra={
            "corpus": units[0].corpus if units else out.name,
            "fields": FieldSurvey.combined([m.get("fields", {}) for m in markers]).to_dict(),
        },
    )
    shutil.rmtree(work)
    return manifest


def quarantine_repeats_across(work: Path, units: list[ShardUnit], markers: list[dict]) -> None:
    """Quarantine, as ``duplicate_id``, every record whose id an earlier unit let through: the units' parts
    are rewritten without them and their markers updated. Hash matches (:func:`repeated_across`) are
    confirmed on the ids themselves, so a hash collision removes nothing."""
    arrays = [np.load(_ids(work, u.unit), mmap_mode="r") for u in units]
    flagged = repeated_across(arrays)
    if not any(len(f) for f in flagged):
        return
    candidates = np.unique(np.concatenate([a[f] for a, f in zip(arrays, flagged, strict=True) if len(f)]))
    seen: dict[str, tuple[int, int, str]] = {}  # candidate id -> (unit, record, src) that let it through
    for k, (u, m, hashes) in enumerate(zip(units, markers, arrays, strict=True)):
        hits = set(np.flatnonzero(np.isin(hashes, candidates)).tolist())
        if not hits:
            continue
        parts = [work / u.unit / s["name"] for s in m["shards"]]
        repeats: dict[int, str] = {}
        for i, rec in enumerate(r for part in parts for r in read_shard(part)):
            if i in hits:
                first = seen.setdefault(rec["id"], (k, i, rec["src"]))
                if first[:2] != (k, i):
                    repeats[i] = first[2]
        if repeats:
            _rewrite_without(work, u, m, parts, repeats)


def _rewrite_without(work: Path, u: ShardUnit, marker: dict, parts: list[Path], drop: dict[int, str]) -> None:
    """Rewrite a unit's parts without the records at ``drop`` (index -> first position), quarantining them;
    the marker is updated on disk."""
    fresh = work / f"{u.unit}.rewrite"
    shutil.rmtree(fresh, ignore_errors=True)
    fresh.mkdir()  # it stays empty when every record goes
    writer = RollingShardWriter(fresh, u.records_per_shard, u.bytes_per_shard, u.zstd_level)
    quarantine = Quarantine(work / QUARANTINE / f"{u.unit}.across-units.jsonl.zst", echo_first=0)
    for i, rec in enumerate(r for part in parts for r in read_shard(part)):
        if i in drop:
            quarantine.add(duplicate_id(u.piece.label, rec, drop[i]))
        else:
            writer.write(rec)
    shards = writer.close()
    quarantine.close()
    shutil.rmtree(work / u.unit)
    fresh.replace(work / u.unit)
    counts = Counts.from_shard_marker(marker) + Counts(quarantined=quarantine.counts)
    counts.out = sum(s.records for s in shards)
    counts.check(u.unit)
    marker.update(counts.to_shard_marker(), shards=[asdict(s) for s in shards])
    atomic_write_bytes(_marker(work, u.unit), orjson.dumps(marker))


def run_shard(cfg: DictConfig) -> Step:
    """Shard every configured corpus (a :mod:`~kun_hpc.stages.steps` step: one array per corpus); returns
    one report per corpus, with the first quarantine entries of each corpus sharded now. Raises
    :class:`BadInputError` as soon as a corpus yields no record (:func:`refuse_empty`)."""
    reports = []
    for index, corpus in enumerate(cfg.corpora):
        out = Path(cfg.shard.output) / corpus.name
        units, inputs = plan_corpus(cfg, corpus)
        cfg_hash = units[0].config_hash if units else shard_config_hash(cfg, corpus)
        if (out / MANIFEST).exists() and read_manifest(out).get("config_hash") == cfg_hash:
            manifest = read_manifest(out)
            refuse_empty(index, corpus, manifest, out)
            reports.append(StepReport.from_manifest(f"shard {corpus.name}", manifest, skipped=True))
            continue
        work = out / WORK
        todo = [u for u in units if load_marker(work, u.unit, cfg_hash) is None]
        outcomes = yield Array(shard_unit, todo, f"shard-{corpus.name}", "shard")
        failed = [o for o in outcomes if not o.ok]
        if failed:
            raise RuntimeError(failed_units_message(f"shard {corpus.name}", failed, len(units)))
        markers = [load_marker(work, u.unit, cfg_hash) for u in units]
        manifest = finalize(out, units, markers, inputs, cfg_hash)  # type: ignore[arg-type]
        refuse_empty(index, corpus, manifest, out)
        report = StepReport.from_manifest(f"shard {corpus.name}", manifest)
        report.first = [b.message() for b in first_quarantined(out / QUARANTINE, SHOWN)]
        report.quarantine = str(out / QUARANTINE)
        reports.append(report)
    return reports


SHOWN = 5  # quarantine entries of each corpus shown on the console


def empty_corpora(cfg: DictConfig) -> list[str]:
    """What :func:`refuse_empty` said of each sharded corpus that yielded no record (``kun-hpc status``
    repeats it: a run stopped at the shard step shows no unit, issue 16)."""
    said = []
    for index, corpus in enumerate(cfg.corpora):
        out = Path(cfg.shard.output) / corpus.name
        if not (out / MANIFEST).exists():
            continue
        try:
            refuse_empty(index, corpus, read_manifest(out), out)
        except BadInputError as e:
            said.append(str(e))
    return said


def refuse_empty(index: int, corpus: DictConfig, manifest: dict, out: Path) -> None:
    """Raise :class:`BadInputError` (exit code 3) when corpus ``index`` yielded no record (issue 16): the
    message names the corpus, what was quarantined and its first entries, the fields its records hold (of
    the first records of each piece, :class:`~kun_hpc.io.readers.FieldSurvey`) and the key to set."""
    if manifest["records"]:
        return
    read, quarantined = manifest["read"], manifest["quarantined"]
    files = f"{len(manifest['inputs'])} file" + ("s" if len(manifest["inputs"]) != 1 else "")
    if read:
        reasons = ", ".join(f"{k}={n:,}" for k, n in Counter(quarantined).most_common())
        what = f"all {read:,} input items of its {files} were quarantined ({reasons})"
    else:
        what = f"its {files} hold no input items"
    lines = [f"shard {corpus.name}: corpus corpora.{index} yields no records: {what}"]
    lines += [f"  quarantined: {b.message()}" for b in first_quarantined(out / QUARANTINE, 3)]
    survey = FieldSurvey.combined([manifest.get("fields", {})])
    if survey.objects:
        seen = ", ".join(f"{k} ({n})" for k, n in survey.keys.most_common(12))
        lines.append(f"  fields of {survey.objects} records (the first ones of each file): {seen}")
    lines.append(f"  {what_to_set(index, corpus, survey, Counter(quarantined), read)}")
    raise BadInputError("\n".join(lines))


def what_to_set(index: int, corpus: DictConfig, survey: FieldSurvey, quarantined: Counter, read: int) -> str:
    """The config key that makes a corpus that yielded nothing readable: the field its records were refused
    for (``survey.refused``), else what its main quarantine reason says of the files."""
    key, fmt = f"corpora.{index}", str(corpus.format)
    longest = survey.chars.most_common(1)[0][0] if survey.chars else None  # most text: the likely text field
    role = survey.refused.most_common(1)[0][0] if survey.refused else None
    if not read:
        return f"check {key}.paths: the files are empty"
    if role and fmt != "jsonl":
        native = fields_for(fmt)
        hint = f", {key}.text_field={longest}" if role == "text" and longest else ""
        return (
            f"the {fmt} format reads the text from {native.text!r} and the id from {native.id!r}: for files "
            f"of another layout set {key}.format (jsonl: JSON Lines, any {key}.text_field{hint})"
        )
    if role == "text":
        e_g = f", e.g. {key}.text_field={longest}" if longest and longest != corpus.text_field else ""
        return f"set {key}.text_field (now {corpus.text_field!r}) to the field that holds the text{e_g}"
    if role == "id":
        return (
            f"set {key}.id_field (now {corpus.id_field!r}) to a field that holds a string or an integer, "
            "or to null (ids from each text's hash)"
        )
    if role == "meta":
        kept = list(corpus.meta_fields)
        return f"drop the fields with numbers past 64 bits from {key}.meta_fields (now {kept})"
    reason = quarantined.most_common(1)[0][0]
    if reason == "record_too_large":
        return "raise shard.max_record_bytes, or split the records"
    if reason == "unsupported_encoding":
        return "convert the files to UTF-8 (the messages above say how)"
    if reason == "corrupt_stream":
        return f"the files are damaged: check {key}.paths"
    return f"these files are not {fmt} input: check {key}.format (now {fmt!r}) and {key}.paths"
