"""Phase 4, apply: each shard's kept records to its output shard (with ``dup_count``/``dup_corpora``),
removed and empty ones to its rejected file, unreadable lines to quarantine.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import zstandard

from kun_hpc.core.counts import Counts
from kun_hpc.io.quarantine import Bad
from kun_hpc.io.shards import FilteredShard
from kun_hpc.merge.dedup.job import REASONS, DedupJob, shard_records
from kun_hpc.merge.dedup.storage import load_meta


def _no_content_detail(key: str, missing: bool) -> str:
    if missing:
        return f"the record has no {key} to compare"
    return f"its {key} is only punctuation and whitespace: no content left to compare or keep"


def apply_unit(args: tuple[DedupJob, list[int]]) -> dict:
    """Each shard of the group: kept records to its output, removed ones to its rejected file."""
    job, shards = args
    reports, total = [], Counts()
    for s in shards:
        body = orjson.loads(
            zstandard.decompress((Path(job.work) / "remove" / f"{s:05d}.json.zst").read_bytes())
        )
        rem, absorb = body["remove"], body["absorb"]
        empty = {str(i): missing for i, missing in load_meta(job.sig_dir(s))["no_content"]}
        level = int(job.settings.get("zstd_level", 3))
        counts = Counts()
        with FilteredShard(job.outputs[s], job.rejected[s], job.quarantine[s], level) as files:
            out, rej, bad = files.kept, files.rejected, files.quarantine
            for i, rec, line in shard_records(job.inputs[s]):
                counts.in_ += 1
                i = str(i)
                if type(rec) is Bad:
                    counts.quarantined[rec.reason] += 1
                    bad.write(rec.to_dict())
                elif i in empty:
                    counts.rejected[REASONS["empty"]] += 1
                    detail = _no_content_detail(job.key, empty[i])
                    rej.write(
                        {**rec, "reject": {"stage": job.name, "reason": REASONS["empty"], "detail": detail}}
                    )
                elif i in rem:
                    reason, survivor, sim = rem[i]
                    counts.rejected[reason] += 1
                    what = "copy" if reason == REASONS["exact"] else f"near copy (n-gram Jaccard {sim:.2f})"
                    detail = f"{what} of {survivor} (by {job.key})"
                    reject = {"stage": job.name, "reason": reason, "detail": detail, "survivor": survivor,
                              "similarity": sim}  # fmt: skip
                    rej.write({**rec, "reject": reject})
                else:
                    counts.out += 1
                    if i in absorb:
                        count, corpora = absorb[i]
                        rec["dup_count"] = int(rec.get("dup_count") or 0) + count
                        rec["dup_corpora"] = sorted(set(rec.get("dup_corpora") or []) | set(corpora))
                        out.write(rec)
                    else:
                        out.write_line(line if line.endswith(b"\n") else line + b"\n")
            info = files.close()
        counts.check(job.outputs[s])
        reports.append(
            {
                "input": job.inputs[s],
                "output": job.outputs[s],
                "sha256": info.sha256,
                "bytes": info.bytes,
                **counts.to_dict(),
            }
        )
        total += counts
    return {"stage": job.name, **total.to_dict(), "shards": reports}
