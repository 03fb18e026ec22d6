"""Security options shared by the CLI's client commands.

``--tls-dir DIR`` (a ``carbonlink certs init`` directory: its CA and the client
certificate of ``--client ROLE``), ``--token-file FILE`` (the bearer JWT),
``--signing-key FILE`` (the party's Ed25519 key, for instructions) or ``--insecure``
(plaintext, no token: only against a gateway started with ``--insecure``).  Adding the
options loads neither gRPC nor cryptography: opening a channel and signing import them.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from gateway.security.layout import ROLES, TlsLayout

if TYPE_CHECKING:
    import grpc
    from google.protobuf.message import Message


class ClientSetupError(Exception):
    """The security options are incomplete or their files unreadable."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the security options to a client command."""
    parser.add_argument("--tls-dir", type=Path, help="directory made by `carbonlink certs init`")
    parser.add_argument(
        "--client",
        default="exchange_operator",
        choices=ROLES,
        help="whose client certificate of --tls-dir to present (default %(default)s)",
    )
    parser.add_argument("--token-file", type=Path, help="file holding the bearer JWT")
    parser.add_argument(
        "--signing-key", type=Path, help="the instructing party's Ed25519 key (PEM)"
    )
    parser.add_argument("--key-id", help="the signing key's id (default: NAME-1 of its file)")
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="LOCAL DEVELOPMENT ONLY: plaintext, no token, unsigned instructions",
    )


def open_channel(args: argparse.Namespace) -> grpc.Channel:
    """The channel the options describe.

    Raises:
        ClientSetupError: Neither --insecure nor --tls-dir with --token-file, or a file
            cannot be read.
    """
    import grpc

    from gateway.security.client import role_channel

    if args.insecure:
        return grpc.insecure_channel(args.target)
    if args.tls_dir is None or args.token_file is None:
        raise ClientSetupError(
            "give --tls-dir and --token-file (or --insecure against a development gateway)"
        )
    try:
        token = args.token_file.read_text(encoding="utf-8").strip()
        return role_channel(args.target, TlsLayout(args.tls_dir), args.client, token)
    except (OSError, UnicodeDecodeError) as exc:
        raise ClientSetupError(f"cannot read the TLS or token files: {exc}") from exc


def sign(args: argparse.Namespace, method: str, request: Message) -> None:
    """Sign an instruction with ``--signing-key`` for the deployment ``--token-file``'s
    token is for (nothing under --insecure without a key or a token).

    Raises:
        ClientSetupError: No key given on a secure connection, or the key is unreadable.
    """
    from gateway.security.client import InstructionSigner, token_audience

    if args.insecure and (args.signing_key is None or args.token_file is None):
        return  # nothing checks a signature, and no token names the deployment to sign for
    if args.signing_key is None:
        raise ClientSetupError(f"{method} is an instruction: give --signing-key")
    if args.token_file is None:
        raise ClientSetupError(f"{method} is signed for the deployment of --token-file's token")
    try:
        audience = token_audience(args.token_file.read_text(encoding="utf-8").strip())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ClientSetupError(f"cannot tell the deployment to sign for: {exc}") from exc
    try:
        InstructionSigner.from_file(args.signing_key, audience, args.key_id).sign(method, request)
    except (OSError, ValueError) as exc:
        raise ClientSetupError(f"cannot use the signing key: {exc}") from exc
