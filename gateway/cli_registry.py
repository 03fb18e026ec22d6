"""The registry emulator commands of ``carbonlink``.

``carbonlink emulate <registry> --listen HOST:PORT --data DIR [--faults FILE] [--tls-dir DIR]``
serves an emulated registry's native API until SIGTERM or SIGINT;
``carbonlink registry import <registry> FILE --data DIR`` loads a registry export into
that registry's emulator store; ``carbonlink registry open-account --target HOST:PORT
ACCOUNT...`` opens accounts at a running emulator (``registry accounts`` lists them).
``register`` adds them to the main parser; each handler is the ``handler`` default of its
namespace and returns the process exit code.

The emulators (their gRPC servers, stores and export readers), the registry table and
TLS are imported by the handler of the command that runs them, not with this module:
``gateway.cli`` builds its parser, for every command, from this module's ``register``,
which names the registries by their serial codecs' ids (the same ids, a test holds).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from adapters.serial_errors import RegistryFormatError
from adapters.serials import REGISTRY_IDS
from gateway import addresses, cli_paths
from gateway.security.layout import TlsLayout
from gateway.stop_signals import StopSignals


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``emulate`` and the ``registry`` commands to the ``carbonlink`` parser."""
    emulate = subparsers.add_parser("emulate", help="serve an emulated registry's native API")
    emulate.add_argument("registry", choices=sorted(REGISTRY_IDS), help="the registry")
    emulate.add_argument(
        "--listen",
        required=True,
        type=addresses.listen,
        metavar="HOST:PORT",
        help="address to serve on (port 0: any free one, printed)",
    )
    emulate.add_argument(
        "--data", required=True, type=cli_paths.directory, help="directory of the store"
    )
    emulate.add_argument("--faults", type=Path, help="YAML fault-injection settings")
    emulate.add_argument(
        "--tls-dir",
        type=Path,
        help="serve mutual TLS with the certificates of `carbonlink certs init DIR` "
        "(clients need a certificate of that CA); without it: plaintext, for local tests",
    )
    emulate.add_argument(
        "--open-account",
        action="append",
        default=[],
        metavar="ACCOUNT",
        help="an account open from the start (repeatable), besides those the store holds: "
        "the registry puts units only into accounts it has opened",
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
    imp.add_argument(
        "--data", required=True, type=cli_paths.directory, help="directory of the store"
    )
    imp.set_defaults(handler=handle_import)

    opening = commands.add_parser(
        "open-account",
        help="open accounts at a running emulated registry",
        description="Open accounts at the emulated registry serving at --target, through "
        "its back office (the EmulatorAdmin service every emulator serves).  A registry "
        "puts units only into an account it has opened: a transfer to any other is "
        "refused at its destination (ACCOUNT_NOT_OPEN) and rolled back.  Opening an "
        "open account changes nothing.",
    )
    opening.add_argument("accounts", nargs="+", metavar="ACCOUNT", help="the accounts to open")
    opening.add_argument("--holder", default="", help="who holds them (optional)")
    _add_target(opening)
    opening.set_defaults(handler=handle_open_account)

    listing = commands.add_parser(
        "accounts", help="list the accounts open at a running emulated registry"
    )
    _add_target(listing)
    listing.set_defaults(handler=handle_accounts)


def _add_target(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        required=True,
        type=addresses.target,
        metavar="HOST:PORT",
        help="the emulator's address",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        help="call with the registry operator's client certificate of "
        "`carbonlink certs init DIR` (an emulator served with --tls-dir); without it: "
        "plaintext",
    )


def _admin_credentials(args: argparse.Namespace, command: str) -> tuple[Any, int]:
    """The channel credentials ``--tls-dir`` names (``None`` without it), or an exit code."""
    if args.tls_dir is None:
        return None, 0
    from gateway.security.tls import channel_credentials

    layout = TlsLayout(args.tls_dir)
    try:
        return channel_credentials(
            layout.ca_cert, layout.client_cert("registry"), layout.client_key("registry")
        ), 0
    except OSError as exc:
        print(f"carbonlink registry {command}: bad --tls-dir: {exc}", file=sys.stderr)
        return None, 2


def handle_emulate(args: argparse.Namespace) -> int:
    """Serve the emulator until SIGTERM or SIGINT."""
    # structlog (with asyncio) is a tenth of a second that parsing any command would pay:
    # imported, like the emulator that logs through it, by this command alone.
    import structlog

    from adapters.emulator_core import FaultConfig, Rejection, start_emulator
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
            running = start_emulator(
                spec,
                args.listen,
                args.data,
                faults,
                credentials=credentials,
                accounts=args.open_account,
            )
        except Rejection as exc:
            print(f"carbonlink emulate: bad --open-account: {exc.message}", file=sys.stderr)
            return 2
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


def handle_open_account(args: argparse.Namespace) -> int:
    """Open each account named; a bad name is refused (exit 2), naming the field."""
    from adapters.emulator_core.admin import open_accounts
    from adapters.emulator_core.store import INVALID_ACCOUNT
    from registry_bridge.errors import RegistryRejected, RegistryUnavailable

    credentials, code = _admin_credentials(args, "open-account")
    if code:
        return code
    try:
        opened = open_accounts(args.target, args.accounts, args.holder, credentials=credentials)
    except RegistryRejected as exc:
        # The message is the emulator's, which starts with the field it refused.
        print(f"carbonlink registry open-account: {_refusal(exc)}", file=sys.stderr)
        return 2 if exc.code == INVALID_ACCOUNT else 1
    except RegistryUnavailable as exc:
        print(
            f"carbonlink registry open-account: cannot open accounts at {args.target}: {exc}",
            file=sys.stderr,
        )
        return 1
    for account in opened:
        holder = f" (holder {account.holder})" if account.holder else ""
        if account.newly_opened:
            print(f"opened account {account.account}{holder} at {args.target}")
        else:
            print(f"account {account.account}{holder} was already open at {args.target}")
    return 0


def handle_accounts(args: argparse.Namespace) -> int:
    """List the open accounts, one a line."""
    from adapters.emulator_core.admin import list_accounts
    from registry_bridge.errors import RegistryRejected, RegistryUnavailable

    credentials, code = _admin_credentials(args, "accounts")
    if code:
        return code
    try:
        accounts = list_accounts(args.target, credentials=credentials)
    except (RegistryRejected, RegistryUnavailable) as exc:
        print(
            f"carbonlink registry accounts: cannot list the accounts at {args.target}: {exc}",
            file=sys.stderr,
        )
        return 1
    for account in accounts:
        print(account.account)
    return 0


def _refusal(error: Exception) -> str:
    """The emulator's own words of a refusal (its message, without our prefix)."""
    text = str(error)
    return text.split("): ", 1)[1] if "): " in text else text
