"""``carbonlink serve``: run the gateway until SIGTERM or SIGINT.

The whole server stack (SQLAlchemy, the bridge, the servicer, metrics) loads with this
module, and ``gateway.cli`` imports it only when ``serve`` runs: every other command,
and ``--help``, starts without it.
"""

from __future__ import annotations

import argparse
import os
import sys

import structlog

from gateway import cli_certs
from gateway.config import ConfigError, load_config
from gateway.logging_setup import configure_logging
from gateway.server import GatewayServer
from gateway.stop_signals import StopSignals
from registry_bridge.errors import CarbonlinkError

_logger = structlog.get_logger(__name__)


def serve(args: argparse.Namespace) -> int:
    """Serve with the configuration of ``args`` (file, then flags) until stopped."""
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
