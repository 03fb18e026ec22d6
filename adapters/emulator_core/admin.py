"""The back office every emulated registry serves next to its native API: its accounts.

A registry puts units only into an account it has opened (``Store.open_account``).  The
``registries.emulator.v1.EmulatorAdmin`` service opens one and lists them, the same at
every emulator: opening an account is the same act at every registry, whatever the
registry's native vocabulary.  :func:`open_accounts` is its client, for the CLI
(``carbonlink registry open-account``), the demo, the bench and test fixtures, which open
the accounts they send units to.
"""

from __future__ import annotations

from collections.abc import Iterable

import grpc

from adapters._pb.registries.emulator.v1 import emulator_admin_pb2 as pb
from adapters._pb.registries.emulator.v1 import emulator_admin_pb2_grpc as pb_grpc
from adapters.client_core import from_rfc3339, invoke, to_rfc3339
from adapters.emulator_core.rejections import native_rules
from adapters.emulator_core.store import Account, Store
from adapters.registry import registry_channel

ADMIN_REGISTRY_ID = "emulator-admin"
"""Names the admin service in the errors of its client (it is not a registry)."""


def _account_to_native(account: Account) -> pb.Account:
    return pb.Account(
        account=account.account, holder=account.holder, opened_at=to_rfc3339(account.opened_at)
    )


class EmulatorAdminServicer(pb_grpc.EmulatorAdminServicer):
    """The emulator's back office, over its store."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def OpenAccount(
        self, request: pb.OpenAccountRequest, context: grpc.ServicerContext
    ) -> pb.OpenAccountResponse:
        """Open an account, idempotently; a bad name is refused INVALID_ARGUMENT."""
        with native_rules(context):
            opened = self._store.open_account(request.account, request.holder)
            return pb.OpenAccountResponse(
                account=_account_to_native(opened), already_open=not opened.newly_opened
            )

    def ListAccounts(
        self, request: pb.ListAccountsRequest, context: grpc.ServicerContext
    ) -> pb.ListAccountsResponse:
        """Every open account, by name."""
        with native_rules(context):
            return pb.ListAccountsResponse(
                accounts=[_account_to_native(a) for a in self._store.accounts()]
            )


def add_admin_servicer(server: grpc.Server, store: Store) -> None:
    """Serve the back office of ``store`` on ``server``."""
    pb_grpc.add_EmulatorAdminServicer_to_server(EmulatorAdminServicer(store), server)


def _account_from_native(native: pb.Account, newly_opened: bool = False) -> Account:
    opened_at = from_rfc3339(native.opened_at)
    if opened_at is None:
        raise ValueError(f"account {native.account!r} came back without its opening time")
    return Account(native.account, native.holder, opened_at, newly_opened)


def open_accounts(
    target: str,
    accounts: Iterable[str],
    holder: str = "",
    *,
    credentials: grpc.ChannelCredentials | None = None,
    timeout_s: float = 5.0,
) -> list[Account]:
    """Open ``accounts`` at the emulator at ``target`` (each idempotently), in order.

    Args:
        target: The emulator's ``HOST:PORT``.
        accounts: The accounts to open.
        holder: Their holder, '' when not said.
        credentials: TLS credentials (a client certificate the emulator trusts);
            ``None`` for a plaintext emulator.
        timeout_s: Each call's deadline, in seconds.

    Returns:
        Each account as the emulator answered it (``newly_opened`` unless it was open).

    Raises:
        RegistryRejected: The emulator refused an account (``INVALID_ACCOUNT``, the
            message naming the field); the accounts before it are open.
        RegistryUnavailable: The emulator could not be reached or failed.
    """
    with registry_channel(target, credentials) as channel:
        stub = pb_grpc.EmulatorAdminStub(channel)
        opened = []
        for account in accounts:
            reply = invoke(
                ADMIN_REGISTRY_ID,
                stub.OpenAccount,
                pb.OpenAccountRequest(account=account, holder=holder),
                timeout_s,
            )
            opened.append(_account_from_native(reply.account, not reply.already_open))
        return opened


def list_accounts(
    target: str, *, credentials: grpc.ChannelCredentials | None = None, timeout_s: float = 5.0
) -> list[Account]:
    """Every account open at the emulator at ``target``, by name.

    Raises:
        RegistryRejected: The emulator refused the call.
        RegistryUnavailable: The emulator could not be reached or failed.
    """
    with registry_channel(target, credentials) as channel:
        reply = invoke(
            ADMIN_REGISTRY_ID,
            pb_grpc.EmulatorAdminStub(channel).ListAccounts,
            pb.ListAccountsRequest(),
            timeout_s,
        )
    return [_account_from_native(a) for a in reply.accounts]
