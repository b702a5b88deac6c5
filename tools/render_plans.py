"""Render `kun-hpc plan` for every corpus x cluster profile into docs/configs.md (between the PLANS markers).

    python tools/render_plans.py            # rewrite the doc
    python tools/render_plans.py --check    # exit 1 when the doc is not current

Each plan is what `kun-hpc plan` prints for a config that includes ``profiles/<profile>.yaml`` and
``corpora/<corpus>.yaml``, before any sharding (so from ``expected_records``), with placeholder models and
paths and Slurm's default MaxArraySize (1001), away from any cluster.
"""

from __future__ import annotations

import io
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kun_hpc import config  # noqa: E402
from kun_hpc.cluster.plan import plan, print_plan  # noqa: E402
from tools import doc_block  # noqa: E402

DOC = REPO / "docs" / "configs.md"
BEGIN, END = "<!-- PLANS BEGIN (tools/render_plans.py) -->", "<!-- PLANS END -->"
PROFILES = ("a100-34b", "a100-6b", "cpu")
CORPORA = ("wudao", "wanjuan", "skypile")
PLACEHOLDERS = [
    "corpora.0.paths=[your-copy]",
    *(f"{s}.engine.model=your-{s}-model" for s in ("label", "point", "answer")),
    "executor.slurm.max_array_size=1001",
]


def write_preset(profile: str, corpus: str, folder: Path) -> Path:
    """A config of a profile and a corpus, as a user's would be."""
    preset = folder / f"{profile}-{corpus}.yaml"
    configs = REPO / "configs"
    layers = [f"'{configs / 'profiles' / profile}.yaml'", f"'{configs / 'corpora' / corpus}.yaml'"]
    preset.write_text(f"include: [{', '.join(layers)}]\n")
    return preset


def render_one(profile: str, corpus: str, tmp: Path) -> str:
    from rich.console import Console

    preset = write_preset(profile, corpus, tmp)
    cfg = config.load(preset, [*PLACEHOLDERS, f"run.dir={tmp / 'run'}"])
    out = io.StringIO()
    print_plan(plan(cfg), Console(file=out, width=150, color_system=None, legacy_windows=False))
    return out.getvalue()


def render() -> str:
    parts = []
    with tempfile.TemporaryDirectory() as d:
        for corpus in CORPORA:
            for profile in PROFILES:
                parts.append(
                    f"### {corpus} on {profile}\n\n"
                    f"`include: [profiles/{profile}.yaml, corpora/{corpus}.yaml]`\n\n"
                    f"```\n{render_one(profile, corpus, Path(d)).rstrip()}\n```\n"
                )
    return "\n".join(parts)


def updated(doc: str) -> str:
    return doc_block.replace_block(doc, BEGIN, END, render())


if __name__ == "__main__":
    sys.exit(doc_block.main(DOC, updated, "tools/render_plans.py", __doc__.splitlines()[0]))
