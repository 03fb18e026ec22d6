"""``carbonlink bench``: measure the gateway against the limits of its own stack.

The harness (``bench``) is imported only when the command runs: it pulls in the
PostgreSQL driver and pymerkle, which no other command needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bench.common import BENCHES, FULL, MODES


def register(subparsers: Any) -> None:
    """Add the ``bench`` subcommand to the ``carbonlink`` parser."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench", help="run the benchmarks; print a table, write JSON"
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="smaller sizes: finishes in about a minute"
    )
    size.add_argument(
        "--smoke", action="store_true", help="tiny sizes, seconds: checks the harness runs"
    )
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument(
        "--database",
        choices=("sqlite", "postgresql", "both"),
        default="both",
        help="where storage-bound figures run (both: PostgreSQL too when it answers)",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        help="run only this benchmark (repeatable; default: all)",
    )
    parser.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from bench.runner import main

    sizes = MODES["smoke"] if args.smoke else MODES["quick"] if args.quick else FULL
    try:
        main(sizes, args.database, args.json, tuple(args.only or BENCHES), sys.stdout)
    except RuntimeError as exc:
        print(f"carbonlink bench: {exc}", file=sys.stderr)
        return 1
    return 0
