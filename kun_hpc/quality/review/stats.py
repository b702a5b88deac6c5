"""The statistics of agreement: Cohen's kappa, the confusion table's ratios, stratum weights, bootstrap
intervals and the lowest threshold reaching a target precision."""

from __future__ import annotations

from collections import Counter

import numpy as np

from kun_hpc.quality.review.common import LEVEL, RESAMPLES


def cohen_kappa(tp: float, fp: float, fn: float, tn: float) -> float | None:
    """Cohen's kappa of a 2x2 table (judge 好/差 by human 好/差, counts or weights): ``(p_o - p_e) / (1 -
    p_e)``, ``p_o`` the share of agreement, ``p_e`` the agreement expected by chance from the two margins
    (Cohen 1960, "A coefficient of agreement for nominal scales"). None when undefined (``p_e`` = 1: both
    raters gave one same verdict to every record, or no records)."""
    n = tp + fp + fn + tn
    if n <= 0:
        return None
    p_o = (tp + tn) / n
    p_e = ((tp + fp) * (tp + fn) + (fn + tn) * (fp + tn)) / (n * n)
    return None if p_e >= 1 - 1e-12 else (p_o - p_e) / (1 - p_e)


def agreement_stats(judge: np.ndarray, human: np.ndarray, weight: np.ndarray | None = None) -> dict:
    """The judge against the humans, 好 the positive class. ``judge``, ``human``: bool arrays (True = 好)
    of one shape; ``weight``: what each row stands for (default 1). Returns the table ``tp`` (judge 好,
    human 好), ``fp`` (judge 好, human 差), ``fn`` (judge 差, human 好), ``tn``, and ``precision``
    (tp / (tp + fp)), ``recall`` (tp / (tp + fn)), ``accuracy`` and ``kappa`` (:func:`cohen_kappa`); a ratio
    with nothing to divide by is None."""
    w = np.ones(len(judge)) if weight is None else np.asarray(weight, dtype=float)
    j, h = np.asarray(judge, dtype=bool), np.asarray(human, dtype=bool)
    tp, fp = float(w[j & h].sum()), float(w[j & ~h].sum())
    fn, tn = float(w[~j & h].sum()), float(w[~j & ~h].sum())

    def ratio(a: float, b: float) -> float | None:
        return a / b if b > 0 else None

    return {
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn),
        "accuracy": ratio(tp + tn, tp + fp + fn + tn), "kappa": cohen_kappa(tp, fp, fn, tn),
    }  # fmt: skip


def stratum_weights(strata: list[str], sizes: list[int | None]) -> np.ndarray | None:
    """``N_h / m_h`` per row (``N_h``: the stratum's records in the stage, ``m_h``: its rows here), so each
    stratum stands for its share of the stage; None (unweighted) when any row lacks its stratum or size."""
    if not strata or any(not s for s in strata) or any(n is None for n in sizes):
        return None
    m = Counter(strata)
    return np.array([n / m[s] for s, n in zip(strata, sizes, strict=True)], dtype=float)


def bootstrap_intervals(
    judge: np.ndarray,
    human: np.ndarray,
    weight: np.ndarray | None = None,
    strata: list[str] | None = None,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> dict:
    """Percentile bootstrap intervals of :func:`cohen_kappa` and of the precision of 好 (Efron & Tibshirani,
    *An Introduction to the Bootstrap*, 1993, ch. 13): ``resamples`` resamples of the rows with
    replacement, within each stratum when ``strata`` are given (the sample was drawn per stratum), from
    ``numpy.random.default_rng(seed)``; each interval is the ``(1 - level) / 2`` and ``(1 + level) / 2``
    quantiles of the resampled values. Resamples where a statistic is undefined are left out and counted.
    Returns ``kappa`` and ``precision``, each ``{"low", "high", "undefined"}`` (``low``, ``high`` None
    when every resample is undefined), and ``resamples``, ``seed``, ``level``, ``method``."""
    j, h = np.asarray(judge, dtype=bool), np.asarray(human, dtype=bool)
    w = np.ones(len(j)) if weight is None else np.asarray(weight, dtype=float)
    rng = np.random.default_rng(seed)
    labels = np.asarray(strata) if strata is not None else np.zeros(len(j), dtype=int)
    groups = [np.flatnonzero(labels == s) for s in np.unique(labels)]
    # each resample draws every stratum's rows with replacement, as many as it has: (resamples, rows)
    idx = np.concatenate(
        [g[rng.integers(0, len(g), (resamples, len(g)))] for g in groups] or [np.zeros((resamples, 0), int)],
        axis=1,
    )
    jj, hh, ww = j[idx], h[idx], w[idx]
    tp, fp = (ww * (jj & hh)).sum(1), (ww * (jj & ~hh)).sum(1)
    fn, tn = (ww * (~jj & hh)).sum(1), (ww * (~jj & ~hh)).sum(1)
    kappas = np.array(
        [k if (k := cohen_kappa(*c)) is not None else np.nan for c in zip(tp, fp, fn, tn, strict=True)]
    )
    kept = tp + fp
    precisions = np.divide(tp, kept, out=np.full(len(kept), np.nan), where=kept > 0)

    def interval(values: np.ndarray) -> dict:
        ok = values[~np.isnan(values)]
        lo, hi = (None, None) if not len(ok) else (
            float(q) for q in np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
        )  # fmt: skip
        return {"low": lo, "high": hi, "undefined": int(len(values) - len(ok))}

    method = "percentile, stratified" if strata is not None else "percentile"
    return {"kappa": interval(kappas), "precision": interval(precisions), "resamples": resamples,
            "seed": seed, "level": level, "method": method}  # fmt: skip


def lowest_threshold(
    scores: np.ndarray, human: np.ndarray, target: float, weight: np.ndarray | None = None
) -> dict | None:
    """The lowest threshold ``t`` among the scores whose precision -- the (weighted) share of human 好 among
    the records scoring ``>= t``, as the calibrated Point keeps ``score >= point.threshold`` -- reaches
    ``target``. Returns ``threshold``, ``precision``, ``recall`` (human 好 kept at ``t`` / all human 好),
    ``kept`` (share of the records kept at ``t``) and ``n`` (rows scoring ``>= t``); None when no threshold
    reaches the target."""
    s = np.asarray(scores, dtype=float)
    h = np.asarray(human, dtype=bool)
    w = np.ones(len(s)) if weight is None else np.asarray(weight, dtype=float)
    if not len(s):
        return None
    order = np.argsort(-s, kind="stable")
    s, h, w = s[order], h[order], w[order]
    kept_w, good_w = np.cumsum(w), np.cumsum(w * h)
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # the last row of each run of equal scores
    precision = good_w[last] / kept_w[last]
    hits = np.flatnonzero(precision >= target - 1e-12)
    if not len(hits):
        return None
    k = last[hits[-1]]  # scores descend: the last hit is the lowest threshold
    total_good = good_w[-1]
    return {
        "threshold": float(s[k]), "precision": float(precision[hits[-1]]),
        "recall": float(good_w[k] / total_good) if total_good > 0 else None,
        "kept": float(kept_w[k] / kept_w[-1]), "n": int(k + 1),
    }  # fmt: skip
