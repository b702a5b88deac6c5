"""Human agreement (issue 14, item 6): does the judge agree with people?

``kun-hpc review export RUN [--stage point|answer|dataset]`` writes a review set of ``-n`` records of one
stage: ``point`` (the judge: what it kept, verdict 好, and what it rejected: ``verdict_bad``,
``verdict_both``, ``verdict_unparseable``, ``score_below_threshold``, ...), ``answer`` (the Answer stage's
outputs and rejections) or ``dataset`` (the merged dataset: kept records only). A person marks each record
好 or 差 in ``review.csv`` (a spreadsheet) or in Label Studio (``label_studio_tasks.json`` +
``label_studio_config.xml``); ``kun-hpc review import RUN FILE`` reads the filled file back and measures the
stage's decision against the people's: confusion matrix, precision and recall of 【好】, accuracy, Cohen's
kappa, bootstrap intervals for kappa and precision and, when records carry a calibrated score, the lowest
``point.threshold`` that reaches a target precision. The result goes to ``<run>/review/agreement.json``;
:func:`section` puts it in the merge report and the dataset card.

The sample is stratified: a stratum is a corpus and the stage's decision (``kept``, or the reject reason),
so rare outcomes (a judge's unparseable answers) are reviewed as often as common ones. ``-n`` is shared
equally among the strata, a stratum smaller than its share gives the rest to the others (water-filling).
The export keeps the stage's side of each drawn record (its decision, score, reason, stratum and the
stratum's size ``N_h``) in its own record, ``export.json``, keyed by record id, with the state of the stage
it drew from; the reviewer's files carry only the ids and the texts to judge (the CSV also the stage's
columns, to hide while reviewing), so the review is blind. The import joins the filled file to
``export.json`` by id, refuses a file of another export, and weighs a reviewed row by ``N_h / m_h``
(``m_h``: the stratum's reviewed rows), so precision, recall, accuracy and kappa estimate the stage's whole
output, not the over-sampled rare strata (stratified sampling with a combined ratio estimate: Cochran,
*Sampling Techniques*, 3rd ed., 1977, ch. 5 and 6). The confusion matrix shows the reviewed rows as
counted, beside the records they stand for. :func:`section` compares the state the export drew from with
the run as it is now and says so when the agreement describes an earlier state.

The parts: :mod:`.common` (the shared constants, :class:`ReviewError`, the run's config), :mod:`.sample`
(the stage's records, their strata and the stratified draw), :mod:`.files` (the reviewer's CSV and Label
Studio files), :mod:`.export` (``review export``), :mod:`.read` (reading a filled file and joining it to
``export.json``), :mod:`.stats` (kappa, precision, bootstrap intervals, the threshold), :mod:`.agreement`
(``review import``), :mod:`.summary` (the summary lines, staleness and the report section) and
:mod:`.cli` (the command). Here: the names the command line, the report and the tests use.
"""

from __future__ import annotations

from kun_hpc.quality.review.agreement import import_review
from kun_hpc.quality.review.cli import add_parser, main
from kun_hpc.quality.review.common import ReviewError, run_config
from kun_hpc.quality.review.export import export_review
from kun_hpc.quality.review.files import csv_bytes, csv_columns, label_studio_config
from kun_hpc.quality.review.read import verdict_label
from kun_hpc.quality.review.sample import allocate, draw, stage_lines
from kun_hpc.quality.review.stats import agreement_stats, bootstrap_intervals, cohen_kappa, lowest_threshold
from kun_hpc.quality.review.summary import _num, section, summary_lines

__all__ = [
    "ReviewError", "_num", "add_parser", "agreement_stats", "allocate", "bootstrap_intervals", "cohen_kappa",
    "csv_bytes", "csv_columns", "draw", "export_review", "import_review", "label_studio_config",
    "lowest_threshold", "main", "run_config", "section", "stage_lines", "summary_lines", "verdict_label",
]  # fmt: skip
