"""The bottom layer: small types and helpers every other layer may import (records, counts, errors, console,
hashing); it imports nothing of kun_hpc's above it."""
