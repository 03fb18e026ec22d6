"""Auditor commands: ``carbonlink trace``, ``audit verify|key|keygen``, ``reconcile`` and
``reconciliations``.

``trace`` asks a running gateway (``--target``) for the history of some units, page by
page, and, with ``--json`` or ``--out``, writes one audit bundle of every page, as JSON
lines, each page as it comes.  ``audit verify`` checks such a bundle with no database and
no network, a line at a time as it reads it: the checkpoint's signature under the log
key the auditor trusts, every inclusion proof, and the history's shape
(``registry_bridge.audit``).

This module is their parser: it loads neither gRPC, the generated messages nor
cryptography.  Each handler imports what runs it when it runs: ``gateway.audit_offline``
(verify, key, keygen) or ``gateway.audit_client`` (the commands that ask a gateway).
"""

from __future__ import annotations

import argparse

from adapters.serials import REGISTRY_IDS
from gateway import addresses, client_security
from gateway.blocks import parse_block
from gateway.cli_client import page_size, timeout_seconds

_DEFAULT_TARGET = "127.0.0.1:50051"


def _trace(args: argparse.Namespace) -> int:
    from gateway import audit_client  # gRPC and the messages: for running it only

    return audit_client.trace(args)


def _verify(args: argparse.Namespace) -> int:
    from gateway import audit_offline  # the bundle and note code, no gRPC: for running it only

    return audit_offline.verify(args)


def _consistency(args: argparse.Namespace) -> int:
    from gateway import audit_client  # gRPC and the messages: for running it only

    return audit_client.consistency(args)


def _key(args: argparse.Namespace) -> int:
    from gateway import audit_offline  # the note code, no gRPC: for running it only

    return audit_offline.key(args)


def _keygen(args: argparse.Namespace) -> int:
    from gateway import audit_offline  # the note code, no gRPC: for running it only

    return audit_offline.keygen(args)


def _reconcile(args: argparse.Namespace) -> int:
    from gateway import audit_client  # gRPC and the messages: for running it only

    return audit_client.reconcile(args)


def _reconciliations(args: argparse.Namespace) -> int:
    from gateway import audit_client  # gRPC and the messages: for running it only

    return audit_client.reconciliations(args)


def _log_key_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--log-key",
        required=True,
        metavar="KEY",
        help="the log's verifier key (NAME+ID+KEY), or a file holding it; get it out of band",
    )


def _gateway_arguments(parser: argparse.ArgumentParser, timeout: float) -> None:
    """Where the gateway is, how long to wait for it, and how to reach it securely."""
    parser.add_argument(
        "--target", type=addresses.target, default=_DEFAULT_TARGET, help="gateway HOST:PORT"
    )
    parser.add_argument(
        "--timeout",
        type=timeout_seconds,
        default=timeout,
        help=f"seconds to wait (default {timeout:g})",
    )
    client_security.add_arguments(parser)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``trace``, ``audit verify|key|keygen``, ``reconcile`` and ``reconciliations``.

    Args:
        subparsers: The top-level CLI's subparsers.
    """
    trace = subparsers.add_parser(
        "trace",
        help="the proven history of units, from any registry's serial",
        description=(
            "Ask the gateway for every event of the units of SERIAL (in registry R's format, "
            "origin or mirror) or of --block, each with an inclusion proof."
        ),
    )
    trace.add_argument("--registry", metavar="R", help=f"registry id: {', '.join(REGISTRY_IDS)}")
    trace.add_argument("serial", nargs="?", metavar="SERIAL", help="the serial, as R writes it")
    trace.add_argument(
        "--block",
        type=parse_block,
        help="a canonical block instead, PROGRAM[/SERIES]:START-END (e.g. a mirror's)",
    )
    trace.add_argument(
        "--json", action="store_true", help="print the audit bundle (JSON lines) as it is read"
    )
    trace.add_argument(
        "--out", help="write the audit bundle (JSON lines) to this file, a page at a time"
    )
    trace.add_argument(
        "--page-size",
        type=page_size,
        metavar="N",
        help="events per page asked of the gateway (default its own, 200; at most 1000); "
        "every page is read and the bundle holds them all",
    )
    _gateway_arguments(trace, timeout=60.0)
    trace.set_defaults(handler=_trace, client="auditor")

    audit = subparsers.add_parser("audit", help="verify provenance offline")
    commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = commands.add_parser(
        "verify",
        help="verify an audit bundle offline (no database, no network)",
        description=(
            "Check the checkpoint signature under KEY, every inclusion proof, and that the "
            "history is well formed, a line at a time as the bundle is read (bundles of one "
            "JSON document, written before, are read whole). Exits 1 at the first failure, "
            "with the reason and the event it is in."
        ),
    )
    verify.add_argument("bundle", help="the bundle written by carbonlink trace --out or --json")
    _log_key_argument(verify)
    verify.set_defaults(handler=_verify)
    consistency = commands.add_parser(
        "consistency",
        help="check that the log still extends a checkpoint you kept",
        description=(
            "Fetch the gateway's latest checkpoint and a consistency proof from CHECKPOINT "
            "(a signed note, or an audit bundle holding one) to it, and verify both "
            "signatures under KEY and the proof: any rewrite of the log since CHECKPOINT "
            "fails. Exits 1 with the reason."
        ),
    )
    consistency.add_argument("checkpoint", help="a checkpoint kept earlier, or a bundle")
    _log_key_argument(consistency)
    consistency.add_argument("--save", help="write the latest checkpoint here, to keep")
    _gateway_arguments(consistency, timeout=60.0)
    consistency.set_defaults(handler=_consistency, client="auditor")
    key = commands.add_parser("key", help="print the verifier key of a log signing key")
    key.add_argument("--signing-key", required=True, help="the PEM file of the signing key")
    key.add_argument(
        "--origin", default="carbonlink.local/provenance", help="the log origin (key name)"
    )
    key.set_defaults(handler=_key)
    keygen = commands.add_parser("keygen", help="write a new Ed25519 log signing key (PEM)")
    keygen.add_argument("out", help="file to create (refuses to overwrite)")
    keygen.set_defaults(handler=_keygen)

    reconcile = subparsers.add_parser(
        "reconcile",
        help="ITL-style reconciliation of the gateway with each registry",
        description="Totals per program and status, then unit blocks, then the trail of "
        "any block that differs. A registry that cannot be read is named, with why, and "
        "the others are reconciled all the same. The run is recorded and its number "
        "printed (see `carbonlink reconciliations`); one runs at a time over the gateways "
        "sharing the database, so while another is under way this one is refused with "
        "RESOURCE_EXHAUSTED. Auditors and regulators only. Exits 1 when a registry "
        "disagrees or cannot be read, or the gateway refuses.",
    )
    reconcile.add_argument(
        "--registry", action="append", help="only this registry (repeatable; default all)"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    _gateway_arguments(reconcile, timeout=120.0)
    reconcile.set_defaults(handler=_reconcile, client="auditor")

    runs = subparsers.add_parser(
        "reconciliations",
        help="the reconciliations run so far, newest first",
        description="Every reconciliation recorded by the gateways sharing the database, "
        "asked for or scheduled: who asked, which gateway ran it, when, and what it found "
        "(a scheduled run marks the differences the run before it found too as "
        "persisting). Auditors and regulators only.",
    )
    runs.add_argument(
        "--trigger", choices=("request", "schedule"), help="only runs asked for, or scheduled"
    )
    runs.add_argument(
        "--limit",
        type=page_size,
        default=20,
        help="at most this many, newest first (default 20; the gateway answers at most 1000)",
    )
    runs.add_argument(
        "--page-token", default="", help="the token the previous page ended with (same filters)"
    )
    runs.add_argument("--json", action="store_true", help="print the runs as JSON")
    _gateway_arguments(runs, timeout=30.0)
    runs.set_defaults(handler=_reconciliations, client="auditor")
