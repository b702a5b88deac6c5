"""Small real stages for exercising the grid and executors (importable by Slurm jobs from the repo root)."""

from __future__ import annotations

import time
from pathlib import Path

import xxhash

from kun_hpc.core.records import Rejected
from kun_hpc.stages.base import Stage


class Tag(Stage):
    """Keeps records with an even text length and adds the text length; rejects the others."""

    name = "tag"

    def process(self, batch):
        out = []
        for r in batch:
            n = len(r["text"])
            out.append({**r, "chars": n} if n % 2 == 0 else Rejected(r, "odd_length", f"{n} chars"))
        return out


class Upper(Stage):
    """Adds a field. Options: ``sleep_s`` per batch; ``fail_on_corpus``: raise on that corpus's records
    unless the file ``heal_file`` exists (so a test can make a re-run succeed)."""

    name = "upper"

    def process(self, batch):
        time.sleep(float(self.options.get("sleep_s", 0)))
        fail_on = self.options.get("fail_on_corpus")
        healed = Path(self.options.get("heal_file", "")).is_file()
        out = []
        for r in batch:
            if r["corpus"] == fail_on and not healed:
                raise RuntimeError(f"planned failure on {r['id']}")
            out.append({**r, "first_char": r["text"][:1]})
        return out


class Synth(Stage):
    """A stand-in for label + point + answer: the instruction asks about the text's first ``chars``
    characters (so texts opening alike collapse onto one instruction), the answer is the text, the score
    comes from the id."""

    name = "synth"
    makes_pairs = True

    def process(self, batch):
        n = int(self.options.get("chars", 8))
        if self.options.get("reject_all"):  # nothing reaches the merge (a judge that rejects everything)
            return [Rejected(r, "synth_rejected") for r in batch]
        return [
            {
                **r,
                "instruction": f"请介绍：{r['text'][:n]}",
                "answer": r["text"],
                "score": xxhash.xxh64_intdigest(r["id"].encode()) % 1000 / 1000,
            }
            for r in batch
        ]


class Boom(Stage):
    """Fails every unit with ``ValueError("boom 42")`` (how a failure is shown, issue 16)."""

    name = "boom"

    def process(self, batch):
        raise ValueError("boom 42")
