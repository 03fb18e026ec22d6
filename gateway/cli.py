"""The ``carbonlink`` command line.

Building the parser and running a client or offline command (``transfer``, ``trace``,
``audit verify``, ``serial parse``...) loads no server code: an auditor's or a script's
command starts in a fraction of the time the server stack takes to import.  The
commands that need that stack import it in their handler, in one place each: ``serve``
(``cli_serve``), ``demo``, ``emulate`` and ``registry import`` (``cli_registry``) and
``bench`` (``cli_bench``).  Parsing alone (``--help``, a usage error) loads no gRPC,
generated messages, cryptography or rules engine either: the ``cli_*`` modules only
parse, and each handler imports what runs the command (``client_commands``,
``audit_client``, ``audit_offline``, the engine) when it runs.
``tests/unit/gateway/test_cli_imports.py`` holds them to it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gateway import (
    cli_audit,
    cli_bench,
    cli_certs,
    cli_client,
    cli_migrate,
    cli_project,
    cli_registry,
    cli_rules,
    cli_serial,
)


def _serve(args: argparse.Namespace) -> int:
    from gateway import cli_serve  # the server stack: for this command only

    return cli_serve.serve(args)


def _demo(args: argparse.Namespace) -> int:
    from gateway import demo  # the server, the emulators and every journey's client

    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(
        prog="carbonlink",
        description="Cross-border linkage gateway for carbon markets.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", type=Path, help="YAML configuration file")
    serve.add_argument("--listen", help="HOST:PORT to serve on (default 127.0.0.1:50051)")
    serve.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http(s)://HOST:PORT/metrics (default: none)",
    )
    serve.add_argument(
        "--database-url",
        help="SQLAlchemy URL: sqlite:///PATH (default) or postgresql+psycopg://...",
    )
    serve.add_argument("--log-level", help="debug, info, warning or error")
    serve.add_argument("--log-format", help="json or console")
    serve.add_argument(
        "--registry",
        action="append",
        metavar="ID=HOST:PORT",
        help="wire a registry's native API (repeatable)",
    )
    serve.add_argument(
        "--tls-dir",
        type=Path,
        help="TLS, token and signing files from `carbonlink certs init DIR`",
    )
    serve.add_argument(
        "--insecure",
        action="store_true",
        help="LOCAL DEVELOPMENT ONLY: no TLS, tokens or signatures (logged loudly)",
    )
    serve.set_defaults(handler=_serve)

    demo_parser = commands.add_parser("demo", help="run the user journeys end to end")
    demo_parser.add_argument(
        "--workdir", type=Path, help="keep the demo's databases here (default: a temp dir)"
    )
    demo_parser.set_defaults(handler=_demo)

    cli_serial.register(commands)
    cli_rules.register(commands)
    cli_registry.register(commands)
    cli_client.register(commands)
    cli_project.register(commands)
    cli_migrate.register(commands)
    cli_certs.register(commands)
    cli_audit.register(commands)
    cli_bench.register(commands)
    return parser


EXIT_BROKEN_PIPE = 141
"""As a shell reports a command killed by SIGPIPE (128 + 13)."""
EXIT_INTERRUPTED = 130
"""As a shell reports a command stopped by SIGINT (128 + 2): Ctrl-C."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``carbonlink`` command."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.handler(args)
    except BrokenPipeError:
        # The reader went away (``carbonlink trace ... | head``): not an error of ours.
        # Python would report the pipe again while flushing stdout at exit, so stdout
        # is pointed at /dev/null first.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:
        # Ctrl-C is the user's choice, not a fault of ours: one line, not a traceback
        # through gRPC's completion queue.  A command whose request may have reached the
        # gateway has said by now how to ask after it (``client_commands.call``).
        print("carbonlink: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":
    raise SystemExit(main())
