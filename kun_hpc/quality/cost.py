"""Yield and cost of a run (issue 14, item 7): what each step spent, what came out, and what was wasted.

**Task-hours** of a step: the ``timings.seconds`` of its tasks' completion markers (stage units:
:func:`kun_hpc.stages.runner.run_unit`; global phases: :func:`kun_hpc.cluster.phases.run_phase_unit`) summed,
/ 3600. A marker times the task's last attempt only (a unit resumed after a requeue counts from its restart),
so the figures are lower bounds; ``kun-hpc shard`` keeps no timings (its unit markers go when the manifest
is written) and neither does the merge driver job.

**GPU-hours**: each task's hours x the GPUs it asked for -- ``executor.stage_resources.<stage or phase>
.gpus_per_task`` over ``executor.slurm.gpus_per_task`` (:func:`kun_hpc.cluster.slurm.resources_for`) when
its marker names a Slurm job; a task the local or inline executor ran asked for none (0). With no GPU asked
for anywhere, pairs per GPU-hour is "n/a (0 GPUs configured)", never a guess.

**Waste**: model calls spent on records that a later step dropped for a reason an earlier step knows or
could know (:data:`WASTE`). A record dropped at stage S for such a reason, knowable once stage E ran, cost
one call of every LLM stage after E and before S (S itself decides before calling its model). It should be
zero.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from kun_hpc.cluster.funnel import stage_markers
from kun_hpc.cluster.phases import phase_markers
from kun_hpc.cluster.slurm import resources_for
from kun_hpc.io.layout import stage_key
from kun_hpc.merge.raw import PHASE as RAW_PHASE
from kun_hpc.quality.section import QualityContext, Section, Table
from kun_hpc.stages.answer import configured as answer_budgeted
from kun_hpc.stages.llm import LLMStage
from kun_hpc.stages.registry import stage_class

DECONTAMINATE = "merge-decontaminate"
ASSEMBLE = "merge-assemble"


# ------------------------------------------------------------------------------------------------- cost
def task_gpus(cfg: DictConfig, marker: dict) -> int:
    """GPUs the task behind a completion marker asked for: its stage's or phase's ``gpus_per_task``
    (:func:`~kun_hpc.cluster.slurm.resources_for`) when the marker names a Slurm job, else 0 (the local and
    inline executors ask for none)."""
    if not marker.get("job"):
        return 0
    return int(resources_for(cfg, marker.get("phase") or marker["stage"]).get("gpus_per_task") or 0)


def step_cost(cfg: DictConfig, step: str, markers: Sequence[dict] | None, funnel: dict | None) -> dict:
    """One row of the cost table: ``{"step", "tasks", "task_hours", "gpus_per_task", "gpu_hours", "in",
    "out"}``; hours from the markers' ``timings.seconds`` (None when the step keeps no markers), records from
    the step's funnel row (None without one)."""
    row: dict = {"step": step, "tasks": None, "task_hours": None, "gpus_per_task": [], "gpu_hours": None}
    if markers is not None:
        gpus = [task_gpus(cfg, m) for m in markers]
        seconds = [float(m["timings"]["seconds"]) for m in markers]
        row |= {
            "tasks": len(markers),
            "task_hours": sum(seconds) / 3600,
            "gpus_per_task": sorted(set(gpus)),
            "gpu_hours": sum(s * g for s, g in zip(seconds, gpus, strict=True)) / 3600,
        }
    return row | {"in": funnel["in"] if funnel else None, "out": funnel["out"] if funnel else None}


def step_markers(ctx: QualityContext) -> list[tuple[str, list[dict] | None, str]]:
    """(step, its tasks' markers or None when it keeps none, its funnel step) in run order: shard, the raw
    dedup, each pipeline stage (the grid's units, as the funnel counts them), decontamination, each final
    dedup pass, assembly."""
    cfg, run_dir = ctx.cfg, ctx.run_dir
    steps: list[tuple[str, list[dict] | None, str]] = [("shard", None, "shard")]
    if cfg.dedup.raw:
        steps.append((RAW_PHASE, phase_markers(run_dir, RAW_PHASE), RAW_PHASE))
    for stage, markers, _ in stage_markers(cfg):
        steps.append((stage, markers, stage))
    if cfg.merge.decontaminate.benchmarks:
        steps.append((DECONTAMINATE, phase_markers(run_dir, DECONTAMINATE), DECONTAMINATE))
    for key, _ in ctx.dedup:
        name = f"merge-dedup-{key}"
        steps.append((name, phase_markers(run_dir, name), name))
    steps.append((ASSEMBLE, list(ctx.assemble), "dataset"))
    return steps


def per_hour(n: int, hours: float | None) -> float | None:
    """``n`` per hour; None when no hours were spent (or none recorded)."""
    return n / hours if hours else None


def totals(rows: Sequence[dict], records: int) -> dict:
    """Sums over the steps that keep markers, and the yield: ``{"tasks", "task_hours", "gpu_hours",
    "gpus_configured" (whether any task asked for a GPU), "records", "per_gpu_hour", "per_task_hour"}`` (per
    hour: None when no such hours)."""
    timed = [r for r in rows if r["task_hours"] is not None]
    task_h = sum(r["task_hours"] for r in timed)
    gpu_h = sum(r["gpu_hours"] for r in timed)
    return {
        "tasks": sum(r["tasks"] for r in timed),
        "task_hours": task_h,
        "gpu_hours": gpu_h,
        "gpus_configured": any(g for r in timed for g in r["gpus_per_task"]),
        "records": records,
        "per_gpu_hour": per_hour(records, gpu_h),
        "per_task_hour": per_hour(records, task_h),
    }


def summary_line(t: dict, unit: str = "pairs") -> str:
    """The one-line yield (the card's and ``kun-hpc status``'s): final ``unit`` per GPU-hour and per
    task-hour."""
    n = f"{t['records']:,} {unit}"
    if t["per_gpu_hour"] is not None:
        gpu = f"{fmt(t['per_gpu_hour'])} ({n} / {fmt(t['gpu_hours'])} GPU-hours)"
    else:
        gpu = "n/a (no GPU-hours recorded)" if t["gpus_configured"] else "n/a (0 GPUs configured)"
    task = "n/a (no task-hours recorded)"
    if t["per_task_hour"] is not None:
        task = f"{fmt(t['per_task_hour'])} ({n} / {fmt(t['task_hours'])} task-hours)"
    return f"final {unit} per GPU-hour: {gpu}; per task-hour: {task}"


def fmt(x: float | None) -> str:
    """A count, rate or number of hours as shown: thousands separators from 100 up, 3 significant digits
    below (a tiny run's hours: ``1.2e-05``)."""
    if x is None:
        return "n/a"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    return f"{x:.3g}" if x == 0 or abs(x) >= 0.001 else f"{x:.2g}"


# ------------------------------------------------------------------------------------------------ waste
@dataclass(frozen=True)
class WasteRule:
    """Records dropped at ``stage`` for ``reason`` (``instruction_*``: every reason with that prefix) are
    known once ``known_at`` ran: ``check`` says what there knows it, ``enabled(cfg)`` whether that check is on
    in this config (off: the waste is the config's choice, and the check to turn on)."""

    stage: str
    reason: str
    known_at: str
    check: str
    enabled: Callable[[DictConfig], bool]

    def matches(self, reason: str) -> bool:
        if self.reason.endswith("*"):
            return reason.startswith(self.reason[:-1])
        return reason == self.reason


# Every reason a later stage drops a record for that an earlier stage knows, from kun_hpc/stages/*.py. The
# model's own verdicts (verdict_*, score_below_threshold, output_too_long, empty_output, invalid_utf8) and the
# answer rules need the output of the stage that drops them, so they are no waste by this definition.
WASTE: tuple[WasteRule, ...] = (
    WasteRule(
        "rules",
        "instruction_*",
        "label",
        "Label runs rules.instruction_rules on each new instruction (label.apply_rules); the instruction "
        "does not change after Label",
        lambda cfg: bool(cfg.label.apply_rules),
    ),
    WasteRule(
        "answer",
        "prompt_too_long",
        "label",
        "Label checks the Answer prompt budget (answer_prompt_too_long) when the config names the "
        "Answer model and answer.max_prompt_tokens; the filter cuts units to fit it",
        answer_budgeted,
    ),
    WasteRule(
        "answer",
        "damaged_text",
        "label",
        "the filter rejects damaged text (damaged_text), Label cleans what it writes, Point rejects a "
        "damaged instruction before its call",
        lambda cfg: True,
    ),
    WasteRule(
        "answer",
        "missing_field",
        "label",
        "text and instruction both exist once Label kept a record",
        lambda cfg: True,
    ),
)


def llm_stages(cfg: DictConfig) -> list[str]:
    """The pipeline's stages that call a model (LLM stages: one call per record they send it), by key."""
    return [stage_key(s) for s in cfg.pipeline.stages if issubclass(stage_class(s), LLMStage)]


def calls_between(cfg: DictConfig, after: str, before: str) -> list[str]:
    """The LLM stages strictly after stage ``after`` and before stage ``before`` in ``pipeline.stages``."""
    order = [stage_key(s) for s in cfg.pipeline.stages]
    llm = set(llm_stages(cfg))
    return [s for s in order[order.index(after) + 1 : order.index(before)] if s in llm]


def waste(cfg: DictConfig, funnel: Sequence[dict]) -> list[dict]:
    """One row per :data:`WASTE` rule whose two stages are in the pipeline: ``{"stage", "reason",
    "known_at", "check", "check_on", "records" (dropped at the stage for a matching reason, from its funnel
    row: the markers' rejected counts), "by_reason", "calls_per_record", "wasted_on" (the LLM stages whose
    calls went to them), "calls"}``."""
    order = [stage_key(s) for s in cfg.pipeline.stages]
    rows = {r["step"]: r for r in funnel}
    out = []
    for rule in WASTE:
        if rule.stage not in order or rule.known_at not in order:
            continue
        rejected = rows.get(rule.stage, {}).get("rejected", {})
        by_reason = {k: v for k, v in sorted(rejected.items()) if rule.matches(k)}
        wasted_on = calls_between(cfg, rule.known_at, rule.stage)
        records = sum(by_reason.values())
        out.append(
            {
                "stage": rule.stage,
                "reason": rule.reason,
                "known_at": rule.known_at,
                "check": rule.check,
                "check_on": rule.enabled(cfg),
                "records": records,
                "by_reason": by_reason,
                "calls_per_record": len(wasted_on),
                "wasted_on": wasted_on,
                "calls": records * len(wasted_on),
            }
        )
    return out


def removed_duplicates(cfg: DictConfig, dedup: Sequence[tuple[str, list[dict]]]) -> dict | None:
    """Model calls after Label spent on instructions the final dedup by instruction removed (exact and near
    duplicates): no stage before the merge dedups instructions, so this is not counted as waste, but it is
    what a dedup right after Label would save. None without Label or without that dedup pass."""
    order = [stage_key(s) for s in cfg.pipeline.stages]
    markers = next((m for k, m in dedup if k == "instruction"), None)
    if "label" not in order or markers is None:
        return None
    records = sum(m["rejected"].get(r, 0) for m in markers for r in ("duplicate_exact", "near_duplicate"))
    after = [s for s in llm_stages(cfg) if order.index(s) > order.index("label")]
    return {
        "records": records,
        "calls_per_record": len(after),
        "wasted_on": after,
        "calls": records * len(after),
    }


# ---------------------------------------------------------------------------------------------- section
def _hours(h: float | None) -> str:
    return "not recorded" if h is None else fmt(h)


def section(ctx: QualityContext) -> Section:
    """The "Yield and cost" section: the per-step table (tasks, task-hours, GPUs per task, GPU-hours, records
    in and out), the yield (``data["totals"]``, ``data["summary"]``: the line ``kun-hpc status`` prints) and
    the waste table (``data["waste"]``, shown even when all zero)."""
    cfg = ctx.cfg
    funnel = {r["step"]: r for r in ctx.funnel}
    rows = [step_cost(cfg, step, markers, funnel.get(f)) for step, markers, f in step_markers(ctx)]
    unit = "pairs" if ctx.kind == "pairs" else "records"
    t = totals(rows, sum(m["rows"] for m in ctx.assemble))
    summary = summary_line(t, unit)
    wasted = waste(cfg, ctx.funnel)
    dup = removed_duplicates(cfg, ctx.dedup)
    wasted_calls = sum(w["calls"] for w in wasted)
    data = {
        "steps": rows,
        "totals": t,
        "summary": summary,
        "waste": wasted,
        "waste_calls": wasted_calls,
        "removed_duplicates": dup,
    }

    def cell(x: int | None) -> str:
        return "-" if x is None else f"{x:,}"

    table = Table(
        ["step", "tasks", "task-hours", "GPUs per task", "GPU-hours", "records in", "records out"],
        [
            [
                r["step"],
                cell(r["tasks"]),
                _hours(r["task_hours"]),
                "/".join(map(str, r["gpus_per_task"])) or "-",
                _hours(r["gpu_hours"]),
                cell(r["in"]),
                cell(r["out"]),
            ]
            for r in rows
        ]
        + [
            [
                "total",
                f"{t['tasks']:,}",
                fmt(t["task_hours"]),
                "",
                fmt(t["gpu_hours"]),
                "",
                f"{t['records']:,}",
            ]
        ],
        "Cost per step",
    )
    waste_table = Table(
        ["dropped at", "reason", "known at", "how", "check on", "records", "calls each", "wasted calls"],
        [
            [
                w["stage"],
                ", ".join(f"{k}={v:,}" for k, v in w["by_reason"].items()) or w["reason"],
                w["known_at"],
                w["check"],
                "yes" if w["check_on"] else "no",
                f"{w['records']:,}",
                f"{w['calls_per_record']} ({', '.join(w['wasted_on']) or 'none'})",
                f"{w['calls']:,}",
            ]
            for w in wasted
        ],
        "Waste: model calls on records dropped later for a reason known earlier (should be 0)",
    )
    waste_line = (
        f"Waste: {wasted_calls:,} model calls. A record dropped for a reason an earlier stage knows cost a "
        "call of every LLM stage between the two (its own stage decides before calling its model)."
        if wasted
        else "Waste: no rule of the waste table applies to this pipeline (each needs Label and a later one)."
    )
    lines = [
        summary[0].upper() + summary[1:] + ".",
        "Task-hours: the seconds each task's completion marker records (its last attempt), summed; the shard "
        "step keeps no timings. GPU-hours: each task's hours x the GPUs it asked Slurm for "
        "(executor.stage_resources.<step>.gpus_per_task over executor.slurm.gpus_per_task); a task of the "
        "local or inline executor asks for none.",
        waste_line,
    ]
    if dup is not None:
        lines.append(
            f"Not counted as waste: the final dedup removed {dup['records']:,} duplicate instructions after "
            f"{dup['calls']:,} model calls of {', '.join(dup['wasted_on']) or 'no stage'} after Label; no "
            "stage dedups instructions before the merge."
        )
    card = [
        f"Yield: {summary}; "
        + (
            f"wasted model calls (records dropped for a reason an earlier stage knew): {wasted_calls:,}."
            if wasted
            else "no waste rule applies to this pipeline (each needs Label and a later LLM stage)."
        )
    ]
    return Section(
        "cost", "Yield and cost", data, lines, [table, waste_table] if wasted else [table], [], card
    )
