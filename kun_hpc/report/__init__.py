"""The funnel report and the dataset card of a merge.

The funnel reads only what the steps committed: shard manifests, the raw dedup's, the stages', the
merge-decontaminate and the merge dedups' markers (counted by :func:`kun_hpc.cluster.funnel.funnel_row`, the
same counting ``kun-hpc status`` prints), and the assemble markers for the dataset itself. The quality
measures (:func:`kun_hpc.quality.report.sections`) are rendered generically, whatever they are.

``report/``: ``report.json`` holds everything as data; ``report.md`` and ``report.html`` show it to a person,
with PNG plots (:mod:`kun_hpc.quality.plots`) beside ``report.md`` and embedded in ``report.html`` (data:
URIs), so the HTML file alone works wherever it is copied. Both show a few sample records per step and per
reject reason, read from the first lines of the shards that hold them.

``dataset/``: the card (``README.md``, Hugging Face dataset card) and a copy of the report (md, html, PNG) in
``dataset/report/``, so every link of the card stays inside the dataset folder. Neither the card nor the md
and html reports show a local absolute path (:func:`strip_local_paths`); ``report.json`` keeps them.
docs/report.md describes every part.

The parts: :mod:`~kun_hpc.report.funnel` (the steps and their funnel rows, the dataset's counts, the dedup
numbers), :mod:`~kun_hpc.report.samples` (sample records per step and reason), :mod:`~kun_hpc.report.parts`
(the report's blocks in order, and its own plots), :mod:`~kun_hpc.report.render` (a block to Markdown and to
HTML), :mod:`~kun_hpc.report.card` (the dataset card), :mod:`~kun_hpc.report.paths` (``strip_local_paths``)
and :mod:`~kun_hpc.report.write` (:func:`write_report`: writes all of it).
"""

from kun_hpc.report.card import size_category, write_card
from kun_hpc.report.funnel import Step, dataset_counts, funnel, keep_percent, marker_steps
from kun_hpc.report.paths import strip_local_paths
from kun_hpc.report.samples import sample_row, step_samples
from kun_hpc.report.write import write_report

__all__ = [
    "Step",
    "dataset_counts",
    "funnel",
    "keep_percent",
    "marker_steps",
    "sample_row",
    "size_category",
    "step_samples",
    "strip_local_paths",
    "write_card",
    "write_report",
]
