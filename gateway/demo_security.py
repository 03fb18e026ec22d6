"""Security for ``carbonlink demo``: its own PKI, and a channel per party.

The demo runs with security on, as production does: ``certs init`` writes a PKI in the
demo's work directory; the emulators serve mutual TLS; the gateway requires client
certificates, bearer tokens and signed instructions; and each journey speaks through a
channel of its party's role that carries a token of that role (naming the accounts the
party may move units out of) and signs every instruction with the party's Ed25519 key.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import grpc

from adapters.registry import REGISTRIES
from gateway.security.certs import init_dev_pki, load_private_key
from gateway.security.client import InstructionSigner, role_channel
from gateway.security.instructions import SIGNED_METHODS, sign_request
from gateway.security.layout import DEV_AUDIENCE, DEV_ISSUER, TlsLayout
from gateway.security.tls import channel_credentials, server_credentials
from gateway.security.tokens import mint_token


def layout(workdir: Path) -> TlsLayout:
    """The demo's PKI under ``workdir/tls``, created on first use."""
    tls = TlsLayout(workdir / "tls")
    if not tls.instruction_keys.is_file():
        init_dev_pki(tls.root, REGISTRIES)
    return tls


def emulator_credentials(workdir: Path, registry_id: str) -> grpc.ServerCredentials:
    """Mutual-TLS server credentials of a registry emulator."""
    tls = layout(workdir)
    return server_credentials(
        tls.registry_cert(registry_id), tls.registry_key(registry_id), tls.ca_cert
    )


def registry_credentials(workdir: Path) -> grpc.ChannelCredentials:
    """Credentials the demo uses to seed registries directly (as the registry operator)."""
    tls = layout(workdir)
    return channel_credentials(tls.ca_cert, tls.client_cert("registry"), tls.client_key("registry"))


def gateway_settings(workdir: Path) -> dict[str, Any]:
    """The GatewayConfig fields that turn security on with the demo's PKI."""
    tls = layout(workdir)
    return {
        "tls_cert_file": str(tls.gateway_cert),
        "tls_key_file": str(tls.gateway_key),
        "tls_ca_file": str(tls.ca_cert),
        "jwks_file": str(tls.jwks),
        "jwt_issuer": DEV_ISSUER,
        "jwt_audience": DEV_AUDIENCE,
        "instruction_keys_file": str(tls.instruction_keys),
    }


class _SigningInterceptor(grpc.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    # NOTE(carbonlink): grpc ships no type stubs here, so its base class is Any.
    """Signs every instruction the channel sends with the party's key (fresh nonce)."""

    def __init__(self, signer: InstructionSigner) -> None:
        self._signer = signer

    def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = str(client_call_details.method)
        if method.rsplit("/", 1)[-1] in SIGNED_METHODS:
            sign_request(
                method,
                request,
                self._signer.key,
                self._signer.key_id,
                audience=self._signer.audience,
            )
        return continuation(client_call_details, request)


def channel(
    workdir: Path,
    target: str,
    role: str,
    *,
    accounts: Sequence[str] = (),
    entities: Sequence[str] = (),
) -> grpc.Channel:
    """A channel to the gateway as the demo party of ``role``.

    Mutual TLS with the role's client certificate, a one-hour bearer token of the role
    naming ``accounts`` (``registry:account``) and ``entities``, and every instruction
    signed with the role's instruction key.
    """
    tls = layout(workdir)
    key = load_private_key(tls.jwt_key(role))
    token = mint_token(
        key,
        f"{role}-1",
        subject=role,
        roles=[role],
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        accounts=accounts,
        entities=entities,
    )
    signer = InstructionSigner.from_file(tls.instruction_key(role), DEV_AUDIENCE)
    return grpc.intercept_channel(
        role_channel(target, tls, role, token), _SigningInterceptor(signer)
    )
