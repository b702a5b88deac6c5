"""Writing a merge's report: ``report.json`` (everything as data), ``report.md`` and ``report.html`` with
their PNG plots in ``<merge>/report/``, their copy in ``<dataset>/report/``, and the dataset card."""

from __future__ import annotations

import html
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import orjson
from omegaconf import DictConfig

from kun_hpc.io.atomic import atomic_write_bytes
from kun_hpc.quality import report as quality
from kun_hpc.quality.section import QualityContext
from kun_hpc.report.card import write_card
from kun_hpc.report.funnel import dataset_counts, dedup_rows, funnel, marker_steps
from kun_hpc.report.parts import draw_plots, report_parts
from kun_hpc.report.render import STYLE, inline_html, part_html, part_md, toc
from kun_hpc.report.samples import step_samples

if TYPE_CHECKING:
    from kun_hpc.merge.assemble import MergeResult


def write_report(cfg: DictConfig, result: MergeResult) -> dict:
    """Write ``report.json``, ``report.md``, ``report.html`` and their PNG plots into ``result.report``,
    copy md, html and PNG into ``<dataset>/report/``, and write the dataset card with the quality summary
    (:func:`write_card`). Returns the report as data (what ``report.json`` holds)."""
    folder = result.report
    folder.mkdir(parents=True, exist_ok=True)
    steps = marker_steps(cfg, result)
    rows = funnel(cfg, result, steps)
    ds = dataset_counts(result)
    ctx = QualityContext(cfg, folder, Path(result.dataset), ds["kind"], result.assemble, result.dedup, rows)
    sections = quality.sections(ctx)
    own_plots = draw_plots(folder, cfg, rows, ds)
    dedup = dedup_rows(cfg, result)
    n = int(cfg.merge.quality.samples_per_reason)
    samples = {s.name: step_samples(s, n) for s in steps}
    report = {"run": str(cfg.run.dir), "dataset": ds, "funnel": rows, "dedup": dedup,
              "missing": result.inputs.missing, "plots": own_plots,
              "quality": {s.key: s.data for s in sections}, "samples": samples}  # fmt: skip
    atomic_write_bytes(folder / "report.json", orjson.dumps(report, option=orjson.OPT_INDENT_2))

    parts = report_parts(cfg, rows, dedup, own_plots, sections, steps, samples)
    head = [f"Dataset: {ds['rows']:,} records ({ds['kind']}) in {ds['shards']} shards."]
    if result.inputs.missing:
        head.append(f"**Partial merge** (allow_partial): {len(result.inputs.missing)} units missing: "
                    + ", ".join(result.inputs.missing))  # fmt: skip
    title = f"Merge report: {cfg.run.name}"
    md = [f"# {title}", "", *(p for line in head for p in (line, ""))]
    md += [line for p in parts for line in part_md(p)]
    atomic_write_bytes(folder / "report.md", ("\n".join(md).rstrip() + "\n").encode())
    body = [f"<h1>{html.escape(title)}</h1>", *(f"<p>{inline_html(x)}</p>" for x in head), toc(parts)]
    body += [part_html(p, folder) for p in parts]
    head_html = f'<meta charset="utf-8"><title>{html.escape(title)}</title><style>{STYLE}</style>'
    page = f'<!doctype html>\n<html lang="zh"><head>{head_html}</head><body>\n' + "\n".join(body)
    page += "\n</body></html>\n"
    atomic_write_bytes(folder / "report.html", page.encode())

    copy = Path(result.dataset) / "report"
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir(parents=True)
    for name in ["report.md", "report.html", *own_plots, *(p for s in sections for p in s.plots)]:
        shutil.copyfile(folder / name, copy / name)
    write_card(cfg, result, sections)
    return report
