"""Exact and near-duplicate removal across every shard of every corpus, as four global phases (issue 13).

::

    signatures (array, per shard group)  the dedup key of each record (kun_hpc/merge/normalize.py), its
                                          xxh3-128 (exact) and MinHash LSH band keys (near), per shard in
                                          ``partitions`` files by key % partitions; the keys themselves
    buckets    (array, per partition)    partition t of every shard: equal keys -> candidate pairs, each
                                          checked against the true n-gram Jaccard of the two keys
    clusters   (one task)                components of the verified pairs; survivors; removal lists
    apply      (array, per shard group)  kept records -> output shard (with ``dup_count``/``dup_corpora``),
                                          removed -> rejected (reason, survivor, similarity)

**Candidates.** A record's shingles are the character ``ngram``-grams of its key without separators. Its
``permutations`` MinHash values are cut into ``bands`` bands when it has fewer than ``long_shingles``
distinct shingles (short texts: a poem, an instruction), into ``long_bands`` bands when it has more, and
into both when it is within reach of the boundary (at least ``threshold * long_shingles``: two texts of
Jaccard ``>= threshold`` have shingle counts within that ratio, so every such pair shares a banding). Exact
duplicates share their xxh3-128 key; a record whose key occurred shortly before in its shard (a table of
``RECENT_KEYS`` recent keys) adds no band keys: its exact key joins it to the first one, whose similar
records are its own. LSH is generous on purpose: every candidate is verified.

**Verification.** A candidate pair is a near duplicate only when the exact Jaccard similarity of the two
shingle sets is at least ``threshold``, and the numbers, words and symbols of the two keys
(:func:`~kun_hpc.merge.normalize.tokens`) are the same -- for two long texts, alike to a ``difflib`` ratio
of at least ``token_threshold`` -- so ``3+5`` and ``3-5`` differ however alike the rest is. Equal keys
are exact duplicates. The buckets markers count the checks (a pair sharing keys in several partitions is
checked in each) and the two kinds of rejection; the clusters marker the distinct verified pairs.

**Survivors.** Records with equal keys form classes; classes are taken in ``dedup.keep`` order of their
best record (highest ``score``, else longest, else smallest id, then input order). A class is kept when no
verified pair links it to a class kept before; otherwise all its records are removed as ``near_duplicate``
of the most similar kept class's best record. A class without such a pair is checked against the first
``INDIRECT_CHECKS`` kept classes of its cluster (a big bucket pairs its records only as a star and a chain).
The other records of a kept class are ``duplicate_exact`` of its best. So every removed record is itself
similar to its survivor (no chains: a ~ b ~ c does not remove c for a when c is not similar to a). Nothing
depends on how the work was cut into tasks (tested).

Records whose key is empty (an instruction that is only punctuation, ``。``) or missing are rejected as
``no_content``. Memory per task: a signature task holds one batch, then one partition of one shard; a
bucket task one slice of the key space and its verified pairs; the cluster task the verified pairs and the
records in them; an apply task one shard's lists (docs/merge.md has the figures).

**Parts** (each phase's unit function is named ``kun_hpc.merge.dedup.<module>:<function>``)::

    job.py         DedupJob, make_job, settings_of (output_settings: what the hash covers); what a record
                   is compared by; a shard's records
    phases.py      the four phases as units (dedup_phases); the sums of their markers (dedup_stats)
    storage.py     the work files: entry partitions, fixed-width and string columns, meta, pair files
    signatures.py  phase 1: keys, exact hashes and band keys of every record
    verify.py      a candidate pair's check: stored keys, shingle sets, Jaccard and tokens
    buckets.py     phase 2: candidate pairs of shared keys, verified
    clusters.py    phase 3: components, survivors, removal lists
    apply.py       phase 4: kept records out, removed ones rejected
"""

from __future__ import annotations

from kun_hpc.merge.dedup.apply import apply_unit
from kun_hpc.merge.dedup.buckets import bucket_unit
from kun_hpc.merge.dedup.clusters import cluster_unit
from kun_hpc.merge.dedup.job import DedupJob, key_text, make_job, output_settings, settings_of
from kun_hpc.merge.dedup.phases import dedup_phases, dedup_stats
from kun_hpc.merge.dedup.signatures import signature_unit

# the unit functions stay importable here: units pickled before the split (a queued Slurm array) name them
# ``kun_hpc.merge.dedup:<function>``
__all__ = [
    "DedupJob",
    "apply_unit",
    "bucket_unit",
    "cluster_unit",
    "dedup_phases",
    "dedup_stats",
    "key_text",
    "make_job",
    "output_settings",
    "settings_of",
    "signature_unit",
]
