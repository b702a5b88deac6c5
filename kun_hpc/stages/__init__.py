"""Pipeline stages: each reads the shards of the step before and writes its own, with markers."""
