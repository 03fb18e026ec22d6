"""The ``carbonlink`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from gateway import (
    cli_audit,
    cli_certs,
    cli_client,
    cli_migrate,
    cli_project,
    cli_registry,
    cli_rules,
    cli_serial,
    demo,
)
from gateway.config import ConfigError, load_config
from gateway.logging_setup import configure_logging
from gateway.server import GatewayServer
from gateway.stop_signals import StopSignals
from registry_bridge.errors import CarbonlinkError

_logger = structlog.get_logger(__name__)


def _serve(args: argparse.Namespace) -> int:
    flags = {
        "listen": args.listen,
        "metrics_listen": args.metrics_listen,
        "database_url": args.database_url,
        "log_level": args.log_level,
        "log_format": args.log_format,
        "registries": ",".join(args.registry) if args.registry else None,
        "insecure": True if args.insecure else None,
        **cli_certs.serve_flags(args.tls_dir),
    }
    try:
        config = load_config(
            file=args.config,
            flags=flags,
            flag_names={
                "registries": "--registry",
                **{name: "--tls-dir" for name in cli_certs.serve_flags(None)},
            },
        )
    except ConfigError as exc:
        print(f"carbonlink serve: configuration error: {exc}", file=sys.stderr)
        return 2
    configure_logging(config.log_level, config.log_format)
    try:
        server = GatewayServer(config)
    except ConfigError as exc:  # a setting only the server can judge (a registry's name)
        print(f"carbonlink serve: configuration error: {exc}", file=sys.stderr)
        return 2
    with StopSignals() as stop:
        try:
            server.start()
        except (CarbonlinkError, OSError) as exc:
            _logger.error("gateway_start_failed", error=str(exc))
            print(f"carbonlink serve: cannot start: {exc}", file=sys.stderr)
            return 1
        received = stop.wait()
        _logger.info("shutdown_requested", signal=received.name)
        abandoned = server.stop()
    if abandoned:
        # Python joins the handlers' threads at exit, so calls still waiting on a registry
        # would hold the process past the grace period its supervisor allows. Exiting now
        # is as safe as a crash: recovery finishes what they had not committed.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


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
    demo_parser.set_defaults(handler=demo.run)

    cli_serial.register(commands)
    cli_rules.register(commands)
    cli_registry.register(commands)
    cli_client.register(commands)
    cli_project.register(commands)
    cli_migrate.register(commands)
    cli_certs.register(commands)
    cli_audit.register(commands)
    __import__("gateway.cli_bench").cli_bench.register(commands)
    return parser


EXIT_BROKEN_PIPE = 141
"""As a shell reports a command killed by SIGPIPE (128 + 13)."""


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
    return code


if __name__ == "__main__":
    raise SystemExit(main())
