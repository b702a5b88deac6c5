"""Decontamination against benchmarks (issue 14, item 5): records sharing a character n-gram with a
benchmark question or answer are rejected as ``contaminated`` before the final dedup.

::

    merge.decontaminate.benchmarks (CSV: C-Eval / CMMLU layout, JSONL: merge.decontaminate.jsonl_fields)
      --build_index (submitting process, once per benchmark content)--> <merge.output>/decontaminate/_index/
    last stage's shards --merge-decontaminate (array, per shard group)--> <merge.output>/decontaminate/
      kept records at the input's relative path; rejected/ (reason contaminated), quarantine/ beside

The texts, the n-gram index and the phase are explained in their modules.

**Parts** (the phase's unit function is named ``kun_hpc.merge.decontaminate.phase:decontaminate_unit``)::

    benchmarks.py  the benchmark files named (files, folders, globs) and the rows of each: C-Eval / CMMLU
                   CSV, JSONL with ``jsonl_fields``; BenchmarkError for files that cannot be used
    index.py       the character n-gram index: build_index (built once, reused while its fingerprint
                   holds), NgramIndex (a text's first benchmark n-gram), index_dir
    phase.py       the ``merge-decontaminate`` phase (decontaminate_phase) and its per-shard-group unit
"""

from __future__ import annotations

from kun_hpc.merge.decontaminate.benchmarks import (
    BenchmarkError,
    FileReport,
    Row,
    benchmark_files,
    read_benchmark,
)
from kun_hpc.merge.decontaminate.index import Hit, NgramIndex, build_index, index_dir
from kun_hpc.merge.decontaminate.phase import (
    PHASE,
    REASON,
    DecontaminateTask,
    decontaminate_phase,
    decontaminate_unit,
    record_fields,
)

# the unit function and its task stay importable here: units pickled before the split (a queued Slurm array)
# name them ``kun_hpc.merge.decontaminate:<name>``
__all__ = [
    "PHASE",
    "REASON",
    "BenchmarkError",
    "DecontaminateTask",
    "FileReport",
    "Hit",
    "NgramIndex",
    "Row",
    "benchmark_files",
    "build_index",
    "decontaminate_phase",
    "decontaminate_unit",
    "index_dir",
    "read_benchmark",
    "record_fields",
]
