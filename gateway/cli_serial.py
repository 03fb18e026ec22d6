"""The ``carbonlink serial`` command: parse a registry serial into its canonical block.

``gateway.cli`` calls :func:`register` with its subparsers; the handler is stored as the
``handler`` default of the parsed namespace and returns the process exit code.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TextIO

from adapters.serial_errors import RegistryFormatError
from adapters.serials import REGISTRY_IDS, block_to_json, parse_serial

EXIT_OK = 0
EXIT_INVALID = 2
"""Exit code for a malformed serial or an unknown registry (argparse's usage-error code)."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``serial parse --registry R SERIAL [--json]`` to the CLI.

    Args:
        subparsers: The top-level CLI's subparsers.
    """
    serial = subparsers.add_parser("serial", help="work with registry serial numbers")
    commands = serial.add_subparsers(dest="serial_command", required=True)
    parse = commands.add_parser(
        "parse",
        help="parse a registry serial into its canonical unit block",
        description="Parse SERIAL with the codec of registry R and print the canonical block.",
    )
    parse.add_argument(
        "--registry",
        required=True,
        metavar="R",
        help=f"registry id: {', '.join(REGISTRY_IDS)}",
    )
    parse.add_argument(
        "serial", metavar="SERIAL", help="the serial number, as the registry writes it"
    )
    parse.add_argument("--json", action="store_true", help="print the block as a JSON object")
    parse.set_defaults(handler=handle_parse)


def handle_parse(
    args: argparse.Namespace, *, stdout: TextIO | None = None, stderr: TextIO | None = None
) -> int:
    """Parse ``args.serial`` with the codec of ``args.registry`` and print the block.

    Args:
        args: Namespace with ``registry``, ``serial`` and ``json``.
        stdout: Where the block goes (default ``sys.stdout``).
        stderr: Where the reason for a failure goes (default ``sys.stderr``).

    Returns:
        ``EXIT_OK``, or ``EXIT_INVALID`` when the registry is unknown or the serial is
        malformed.
    """
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        block = parse_serial(args.registry, args.serial)
    except RegistryFormatError as exc:
        print(f"carbonlink serial parse: {exc}", file=err)
        return EXIT_INVALID
    view = block_to_json(block)
    if args.json:
        print(json.dumps(view, indent=2, ensure_ascii=False), file=out)
    else:
        width = max(len(key) for key in view)
        for key, value in view.items():
            shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            print(f"{key:<{width}}  {shown}", file=out)
    return EXIT_OK
