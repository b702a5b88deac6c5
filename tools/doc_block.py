"""A generated block inside a hand-written doc, between two marker comments, and the ``--check`` command line
that keeps it current (used by tools/render_config_reference.py and tools/render_plans.py)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path


def replace_block(doc: str, begin: str, end: str, body: str) -> str:
    """``doc`` with what lies between ``begin`` and ``end`` replaced by ``body``."""
    head, _, rest = doc.partition(begin)
    _, _, tail = rest.partition(end)
    return f"{head}{begin}\n{body}{end}{tail}"


def main(doc_path: Path, updated: Callable[[str], str], tool: str, description: str) -> int:
    """Write the updated doc, or with ``--check`` exit 1 when it is not current."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--check", action="store_true", help=f"exit 1 when {doc_path.name} is not current")
    args = ap.parse_args()
    doc = doc_path.read_text()
    new = updated(doc)
    if args.check:
        if new != doc:
            print(f"{doc_path} is not current: run python {tool}", file=sys.stderr)
            return 1
        return 0
    doc_path.write_text(new)
    print(f"wrote {doc_path}")
    return 0
