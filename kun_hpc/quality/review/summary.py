"""The agreement in words and tables: the command's summary, whether the review is stale, and the report's
"Human agreement" section."""

from __future__ import annotations

from pathlib import Path

import orjson
from omegaconf import DictConfig

from kun_hpc.quality.review.common import AGREEMENT_NAME, REVIEW_DIR, SET, ReviewError
from kun_hpc.quality.review.sample import stage_state
from kun_hpc.quality.section import QualityContext, Section, Table


def _num(v: float | None, digits: int = 3) -> str:
    """``v`` with ``digits`` decimals, "n/a" for None; a value that rounds to zero is "0.00", never
    "-0.00"."""
    if v is None:
        return "n/a"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def _interval(ci: list, level: float, digits: int = 3, word: str = "interval", sep: str = " to ") -> str:
    return "n/a" if ci[0] is None else f"{level:.0%} {word} {_num(ci[0], digits)}{sep}{_num(ci[1], digits)}"


def kappa_says_nothing(result: dict) -> bool:
    """Whether kappa is meaningless for ``result``: a ``dataset`` review (every record was kept), or the
    stage made one decision on every compared row (kappa is then 0 or undefined by construction)."""
    c = result["confusion"]
    return result["stage"] == "dataset" or c["tp"] + c["fp"] == 0 or c["fn"] + c["tn"] == 0


def threshold_sentence(result: dict) -> str | None:
    """The suggested ``point.threshold`` override, or why there is none; None without scored rows."""
    if not result["scored"]:
        return None
    t, target = result["threshold"], result["target_precision"]
    if t is None:
        return (
            f"No threshold reaches a precision of {target:g} on the {result['scored']} scored rows: keep "
            "more records judged, or accept a lower target (--target-precision)."
        )
    stage_note = ""
    if result["stage"] != "point":
        stage_note = (
            " (these rows passed the run's threshold already: only the point stage's review, which holds "
            "rejected records too, can suggest a lower one)"
        )
    return (
        f"Lowest threshold with precision >= {target:g}: `point.threshold={t['threshold']:g}` (precision "
        f"{_num(t['precision'])}, keeps {t['kept']:.1%} of the records and {_num(t['recall'])} of the "
        f"humans' 好; {t['n']} reviewed rows at or above it; the run used {result['point_threshold']:g})"
        f"{stage_note}."
    )


def summary_lines(result: dict) -> list[str]:
    """The agreement in short Markdown lines (the report's and the command's summary). At ``dataset`` it
    leads with the precision of 好 and its interval, and leaves kappa out (see :func:`kappa_says_nothing`)."""
    b, level = result["bootstrap"], result["bootstrap"]["level"]
    export = result["export"]
    weighted = (
        "estimates for the stage's whole output (each stratum weighed by its records / its reviewed rows)"
        if result["weighted"]
        else "unweighted (the rows are taken as a uniform sample)"
    )
    precision = f"{_num(result['precision'])} ({_interval(result['precision_ci'], level)})"
    lines = [
        f"{result['n']} of {result['rows']} reviewed rows compared ({result['stage']} stage; "
        f"{Path(result['file']).name}, {result['created']}; export of {export['created']}, review set "
        f"{export[SET]}).",
    ]
    if result["stage"] == "dataset":
        lines.append(
            f"Precision of 【好】 (the share of the dataset's records people call good) {precision}; "
            f"{weighted}. Every record of the dataset was kept: recall, accuracy and kappa say nothing here."
        )
    else:
        lines.append(
            f"Precision of 【好】 {precision}, recall {_num(result['recall'])}, accuracy "
            f"{_num(result['accuracy'])}, Cohen's kappa {_num(result['kappa'])} "
            f"({_interval(result['kappa_ci'], level)}); {weighted}."
        )
    undefined = ", ".join(f"{v} with {k} undefined" for k, v in b["undefined"].items() if v)
    lines.append(
        f"Intervals: {b['method']} bootstrap, {b['resamples']} resamples, seed {b['seed']}"
        + (f" ({undefined})" if undefined else "")
        + "."
    )
    if result["not_compared"]:
        ex = result["examples"]
        lines.append(
            "Not compared: "
            + ", ".join(f"{k} {v} (e.g. {ex[k][0]})" for k, v in result["not_compared"].items())
            + "."
        )
    if result["not_in_file"]:
        lines.append(f"The file lacks {result['not_in_file']} of the export's {export['n']} rows.")
    if result["strata_not_compared"]:
        lines.append(
            f"No compared row in the strata {', '.join(result['strata_not_compared'])}: the estimates leave "
            "their records out."
        )
    if result["n"] and result["stage"] != "dataset" and kappa_says_nothing(result):
        lines.append(
            "The stage made one decision on every compared row: only its precision (or its miss rate) "
            "says something; kappa is 0 or undefined by construction."
        )
    sentence = threshold_sentence(result)
    if sentence:
        lines.append(sentence)
    return lines


def confusion_table(result: dict) -> Table:
    """Judge 好 / 差 by human 好 / 差: reviewed rows, and the records they stand for when weighted."""
    c, est = result["confusion"], result["confusion_records"]

    def cell(k: str) -> str:
        return f"{c[k]:,}" + (f" (≈{est[k]:,.0f} records)" if est else "")

    return Table(
        ["", "human 好", "human 差"],
        [["judge 好 (kept)", cell("tp"), cell("fp")], ["judge 差 (rejected)", cell("fn"), cell("tn")]],
        "Confusion matrix (reviewed rows)",
    )


def reason_table(result: dict) -> Table:
    rows = [[k, f"{v['n']:,}", f"{v['human_good']:,}", f"{v['human_good'] / v['n']:.0%}"]
            for k, v in result["by_reason"].items()]  # fmt: skip
    return Table(
        ["stage's decision", "reviewed", "human 好", "share"], rows, "Humans' 好 by the stage's decision"
    )


def staleness(cfg: DictConfig, result: dict) -> str | None:
    """None when the stage (or merged dataset) a review was exported from is as the export found it
    (:func:`stage_state`: same fingerprint); else what changed since, in words."""
    then = result["export"]["state"]
    stage = then["stage"]
    try:
        now = stage_state(cfg, stage)
    except ReviewError as e:
        return str(e)
    if now["fingerprint"] == then["fingerprint"]:
        return None
    what = "the merged dataset" if stage == "dataset" else f"the {stage} stage's output"
    counts = (
        f"{then['records']:,} records then and now, not the same"
        if now["records"] == then["records"]
        else f"{then['records']:,} records then, {now['records']:,} now"
    )
    return f"{what} changed since the export of {result['export']['created']} ({counts})"


def section(ctx: QualityContext) -> Section | None:
    """The "Human agreement" section: ``<run>/review/agreement.json`` (written by ``kun-hpc review
    import``) as the confusion matrix, the humans' 好 by the stage's decision, precision / recall / kappa
    with their intervals and the suggested threshold; None when no review was imported. When the stage the
    review was exported from changed since (:func:`staleness`), the section and the card line say the
    agreement was reviewed on an earlier state of the dataset (``data["current"]`` False)."""
    path = ctx.run_dir / REVIEW_DIR / AGREEMENT_NAME
    if not path.is_file():
        return None
    result = orjson.loads(path.read_bytes())
    data = {**result, "file": Path(result["file"]).name}  # no local paths in the report
    if "export" not in result:
        line = (
            f"`review/{AGREEMENT_NAME}` was written by an earlier kun-hpc and does not record what it was "
            "reviewed on: run `kun-hpc review import` again to show it."
        )
        return Section("human_agreement", "Human agreement", {**data, "current": None}, [line])
    stale = staleness(ctx.cfg, result)
    data |= {"current": stale is None, "stale": stale}
    level = result["bootstrap"]["level"]
    precision = f"precision of 【好】 {_num(result['precision'], 2)}"
    if result["precision_ci"][0] is not None:
        precision += f" ({_interval(result['precision_ci'], level, 2, 'CI', '–')})"
    if kappa_says_nothing(result):
        body = precision + (" (the share of the dataset's records people call good)"
                            if result["stage"] == "dataset" else "")  # fmt: skip
    else:
        kappa = f"Cohen's kappa {_num(result['kappa'], 2)}"
        if result["kappa_ci"][0] is not None:
            kappa += f" ({_interval(result['kappa_ci'], level, 2, 'CI', '–')})"
        body = f"{kappa}, {precision}"
    head = f"Human agreement ({result['stage']} stage, n = {result['n']})"
    lines = summary_lines(result)
    if stale:
        head += f", reviewed on an earlier state of the dataset ({stale})"
        lines.insert(
            0,
            f"**Reviewed on an earlier state of the dataset**: {stale}. The numbers below describe the "
            "records as they were then, not the dataset as it is now: export and review again "
            "(`kun-hpc review export`).",
        )
    return Section(
        "human_agreement", "Human agreement", data, lines,
        [confusion_table(result), reason_table(result)], card=[f"{head}: {body}."],
    )  # fmt: skip
