"""The ``kun-hpc`` command: ``kun-hpc COMMAND [CONFIG.yaml] [key=value ...]``.

Every command takes an optional YAML preset from ``configs/`` and ``key=value`` overrides, saves the
resolved config and its hash in the run directory, and runs on the configured executor.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from kun_hpc import config as config_mod
from kun_hpc.cluster.executors import make_executor
from kun_hpc.stages.summary import BadInputError, check_bad_fraction, print_reports

COMMANDS = {
    "shard": "native corpus files -> zstd JSONL shards with a manifest",
    "reshard": "N shards -> M shards, routed by record id (deterministic)",
}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kun-hpc", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    for name, help_ in COMMANDS.items():
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument(
            "args",
            nargs="*",
            metavar="[CONFIG.yaml] key=value",
            help="a config preset, then overrides such as executor.kind=inline",
        )
    return p


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First argument is the preset when it is not a key=value override."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


def main(argv: list[str] | None = None) -> int:
    ns = _parser().parse_args(argv)
    preset, overrides = split_args(ns.args)
    try:
        cfg = config_mod.load(preset, overrides)
    except config_mod.ConfigError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 2
    run_dir = Path(cfg.run.dir)
    digest = config_mod.save_resolved(cfg, run_dir)
    print(f"kun-hpc {ns.command}: run dir {run_dir} (config {digest})", file=sys.stderr)
    executor = make_executor(cfg)
    log_dir = run_dir / "logs" / ns.command
    try:
        if ns.command == "shard":
            from kun_hpc.stages.shard import run_shard

            reports = run_shard(cfg, executor, log_dir)
        else:
            from kun_hpc.stages.reshard import run_reshard

            reports = run_reshard(cfg, executor, log_dir)
    except (FileNotFoundError, RuntimeError) as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 1
    print_reports(reports)
    try:
        check_bad_fraction(reports, cfg.shard.max_bad_fraction)
    except BadInputError as e:
        print(f"kun-hpc: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
