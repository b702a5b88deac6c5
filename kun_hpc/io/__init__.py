"""Getting text in and out: native corpus readers, zstd JSONL shards, quarantine, atomic writes."""
