"""The registry emulator commands of ``carbonlink``.

``carbonlink emulate <registry> --listen HOST:PORT --data DIR [--faults FILE] [--tls-dir DIR]``
serves an emulated registry's native API until SIGTERM or SIGINT;
``carbonlink registry import <registry> FILE --data DIR`` loads a registry export into
that registry's emulator store.  ``register`` adds both to the main parser; each handler
is the ``handler`` default of its namespace and returns the process exit code.

The emulators (their gRPC servers, stores and export readers), the registry table and
TLS are imported by the handler of the command that runs them, not with this module:
``gateway.cli`` builds its parser, for every command, from this module's ``register``,
which names the registries by their serial codecs' ids (the same ids, a test holds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from adapters.serial_errors import RegistryFormatError
from adapters.serials import REGISTRY_IDS
from gateway.security.layout import TlsLayout
from gateway.stop_signals import StopSignals


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulate`` and ``registry import`` to the ``carbonlink`` parser."""
    emulate = subparsers.add_parser("emulate", help="serve an emulated registry's native API")
    emulate.add_argument("registry", choices=sorted(REGISTRY_IDS), help="the registry")
    emulate.add_argument("--listen", required=True, metavar="HOST:PORT", help="address to serve on")
    emulate.add_argument("--data", required=True, type=Path, help="directory of the store")
    emulate.add_argument("--faults", type=Path, help="YAML fault-injection settings")
    emulate.add_argument(
        "--tls-dir",
        type=Path,
        help="serve mutual TLS with the certificates of `carbonlink certs init DIR` "
        "(clients need a certificate of that CA); without it: plaintext, for local tests",
    )
    emulate.set_defaults(handler=handle_emulate)

    registry = subparsers.add_parser("registry", help="work with emulated registry data")
    commands = registry.add_subparsers(dest="registry_command", required=True, metavar="COMMAND")
    imp = commands.add_parser(
        "import",
        help="load a registry export into an emulator store",
        description="Load a registry's public export (Verra's VCU export, Gold Standard's "
        "issuances and retirements) into the emulator store at --data, every row issued "
        "into the account IMPORTED (exports name no holder), the retired rows then retired. "
        "The gateway learns of the units when it next reads the registry.",
    )
    imp.add_argument("registry", choices=sorted(REGISTRY_IDS), help="the registry")
    imp.add_argument("file", type=Path, help="the export (CSV)")
    imp.add_argument("--data", required=True, type=Path, help="directory of the store")
    imp.set_defaults(handler=handle_import)


def handle_emulate(args: argparse.Namespace) -> int:
    """Serve the emulator until SIGTERM or SIGINT."""
    # structlog (with asyncio) is a tenth of a second that parsing any command would pay:
    # imported, like the emulator that logs through it, by this command alone.
    import structlog

    from adapters.emulator_core import FaultConfig, start_emulator
    from adapters.registry import REGISTRIES
    from gateway.security.tls import server_credentials

    faults = None
    if args.faults is not None:
        try:
            faults = FaultConfig.from_yaml(args.faults)
        except (OSError, ValueError) as exc:
            print(f"carbonlink emulate: bad fault settings: {exc}", file=sys.stderr)
            return 2

    spec = REGISTRIES[args.registry].emulator()
    credentials = None
    if args.tls_dir is not None:
        layout = TlsLayout(args.tls_dir)
        try:
            credentials = server_credentials(
                layout.registry_cert(args.registry),
                layout.registry_key(args.registry),
                layout.ca_cert,
            )
        except OSError as exc:
            print(f"carbonlink emulate: bad --tls-dir: {exc}", file=sys.stderr)
            return 2
    with StopSignals() as stop:
        try:
            running = start_emulator(spec, args.listen, args.data, faults, credentials=credentials)
        except OSError as exc:
            print(f"carbonlink emulate: cannot serve: {exc}", file=sys.stderr)
            return 1
        try:
            print(f"emulating {args.registry} on {running.target}", flush=True)
            stop.wait()
        finally:
            running.stop()
            structlog.get_logger(__name__).info("emulator_stopped", registry=args.registry)
    return 0


def handle_import(args: argparse.Namespace) -> int:
    """Import an export file; on a bad row report its line and import nothing."""
    from adapters.emulator_core.importer import (
        IMPORT_ACCOUNT,
        ImportRowRejected,
        import_rows,
        read_export,
    )
    from adapters.registry import REGISTRIES

    source = str(args.file)
    try:
        rows = read_export(args.registry, args.file)
    except RegistryFormatError as exc:
        print(f"carbonlink registry import: {exc}; nothing imported", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"carbonlink registry import: {exc}", file=sys.stderr)
        return 2
    try:
        store = REGISTRIES[args.registry].emulator().open_store(args.data)
    except OSError as exc:
        print(f"carbonlink registry import: --data: {exc}; nothing imported", file=sys.stderr)
        return 2
    try:
        report = import_rows(store, rows, source)
    except ImportRowRejected as exc:
        print(f"carbonlink registry import: {exc}; nothing imported", file=sys.stderr)
        return 1
    finally:
        store.close()
    # Exports name no holder: say where the units are, the account a transfer takes them
    # from (--from REGISTRY:IMPORTED).
    print(
        f"imported {report.imported} of {report.rows} rows into {args.registry} account "
        f"{IMPORT_ACCOUNT} ({report.already_present} already present)"
    )
    return 0
