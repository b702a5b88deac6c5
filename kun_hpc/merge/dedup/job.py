"""What one dedup is (:class:`DedupJob`, made by :func:`make_job`), its settings, what its records are
compared by and how a shard's records are read (line indexes match across phases).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from kun_hpc.config.outputs import decides_output
from kun_hpc.io.quarantine import Bad
from kun_hpc.stages.chunks import input_items

REASONS = {"exact": "duplicate_exact", "near": "near_duplicate", "empty": "no_content"}


@dataclass(frozen=True)
class DedupJob:
    """One dedup over a set of shards (picklable; every unit of its phases gets it)."""

    name: str  # phase prefix and reject stage name: "dedup-raw", "merge-dedup-instruction", ...
    key: str  # text | instruction | pair
    inputs: tuple[str, ...]  # input shards, in a fixed order (the order breaks the last survivor ties)
    outputs: tuple[str, ...]  # kept records of each input
    rejected: tuple[str, ...]
    quarantine: tuple[str, ...]
    work: str  # signatures, pairs, removal lists
    settings: dict  # the dedup section as plain values
    run_dir: str

    def sig_dir(self, s: int) -> Path:
        return Path(self.work) / "signatures" / f"{s:05d}"


def key_text(record: dict, key: str) -> str | None:
    """What a record is compared by; None when it has no such field (it is then ``no_content``)."""
    if key == "pair":
        ins, out = record.get("instruction"), record.get("answer", record.get("output"))
        return None if not isinstance(ins, str) or not isinstance(out, str) else f"{ins}\n\x00\n{out}"
    value = record.get(key)
    return value if isinstance(value, str) else None


def shard_records(path: str) -> Iterator[tuple[int, dict | Bad, bytes]]:
    """(line index, record or Bad, raw line) of a shard; indexes match across phases."""
    for i, item in enumerate(input_items(path)):
        if type(item) is Bad:
            yield i, item, b""
            continue
        where, line = item
        try:
            yield i, orjson.loads(line), line
        except orjson.JSONDecodeError as e:
            yield i, Bad(Path(path).name, where, "invalid_json", str(e), line), line


def settings_of(section: Any, zstd_level: int = 3) -> dict:
    """The dedup section as plain values (what the phases need and what their hash covers)."""
    from omegaconf import OmegaConf

    st = OmegaConf.to_container(section, resolve=True) if not isinstance(section, dict) else dict(section)
    st.pop("raw", None)
    return {**st, "zstd_level": zstd_level}


def output_settings(settings: dict) -> dict:
    """The settings (:func:`settings_of`) that decide which records a dedup keeps: without the zstd level
    of its files nor the keys :mod:`kun_hpc.config.outputs` declares not to change output (issue 16)."""
    return {k: v for k, v in settings.items() if k != "zstd_level" and decides_output(f"dedup.{k}")}


def make_job(
    name: str, key: str, inputs: list[Path], in_root: Path, out_root: Path, settings: dict, run_dir: str
) -> DedupJob:
    """A dedup of ``inputs`` (under ``in_root``) into ``out_root``, keeping their relative paths; rejected
    and quarantined records under ``out_root/rejected`` and ``out_root/quarantine``, work files under
    ``out_root/_work``."""
    rel = [p.relative_to(in_root) for p in inputs]
    return DedupJob(
        name=name,
        key=key,
        inputs=tuple(str(p) for p in inputs),
        outputs=tuple(str(out_root / r) for r in rel),
        rejected=tuple(str(out_root / "rejected" / r) for r in rel),
        quarantine=tuple(str(out_root / "quarantine" / r) for r in rel),
        work=str(out_root / "_work"),
        settings=settings,
        run_dir=run_dir,
    )
