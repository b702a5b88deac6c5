"""Cluster-wide merge: exact and near-duplicate removal across all shards of all corpora (``dedup``), the
final dataset (``assemble``) and the funnel report (``report``). See docs/merge.md."""
