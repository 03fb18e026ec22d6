"""``carbonlink certs init DIR``, ``carbonlink certs token DIR --role ROLE`` and
``carbonlink certs key DIR --subject SUBJECT``.

``init`` writes a development PKI (see ``gateway.security.layout``); ``token`` signs a
bearer token with a role's development key, as an identity provider would, and prints
it (or writes it 0600 with ``--out``) for ``--token-file``; ``key`` gives a subject of
its own an instruction-signing key, as ``init`` gives each role's.  Parsing loads no
cryptography: each handler imports the key and token code when it runs.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from gateway import cli_paths
from gateway.security.layout import DEV_AUDIENCE, DEV_ISSUER, ROLES, TlsLayout


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``certs init``, ``certs token`` and ``certs key`` to the ``carbonlink`` parser."""
    certs = subparsers.add_parser("certs", help="development certificates, keys and tokens")
    commands = certs.add_subparsers(dest="certs_command", required=True, metavar="COMMAND")
    init = commands.add_parser(
        "init", help="create a development CA, certificates, token and signing keys"
    )
    init.add_argument(
        "dir", type=cli_paths.directory, help="directory to write (created if missing)"
    )
    init.set_defaults(handler=_init)

    token = commands.add_parser("token", help="sign a development bearer token for a role")
    token.add_argument("dir", type=Path, help="a directory made by `certs init`")
    token.add_argument(
        "--role",
        required=True,
        choices=ROLES,
        help="the holder's role, which decides the calls it may make",
    )
    token.add_argument(
        "--subject",
        help="the token's sub (default: the role's name). Request ids are scoped per subject, "
        "and an instruction is signed with a key of the token's subject: give a subject of "
        "its own a key with `certs key DIR --subject SUBJECT`",
    )
    token.add_argument(
        "--account",
        action="append",
        default=[],
        metavar="REGISTRY:ACCOUNT",
        help="an account the holder may move units out of (repeatable)",
    )
    token.add_argument(
        "--entity", action="append", default=[], help="a covered entity id (repeatable)"
    )
    token.add_argument(
        "--registry",
        action="append",
        default=[],
        metavar="REGISTRY",
        help="a registry a registry-role token stands for: it records the covered entities "
        "of that registry's jurisdiction (repeatable)",
    )
    token.add_argument(
        "--ttl",
        type=_lifetime,
        default=3600,
        help="lifetime in seconds, 1 or more (default 3600; a gateway refuses a token "
        "living longer than its jwt_max_lifetime_seconds, a day by default)",
    )
    token.add_argument(
        "--bind-certificate",
        type=Path,
        metavar="PEM",
        help="bind the token to this client certificate (RFC 8705 cnf x5t#S256): it is then "
        "good only on connections made with it",
    )
    token.add_argument("--out", type=Path, help="write the token here (0600) instead of stdout")
    token.set_defaults(handler=_token)

    key = commands.add_parser(
        "key",
        help="create an instruction-signing key for a subject of its own",
        description="Create an Ed25519 instruction-signing key for SUBJECT (the sub of "
        "tokens made with `certs token --subject SUBJECT`) at DIR/signing/SUBJECT.key, and "
        "register it in DIR/signing/keys.json as SUBJECT-1, which a running gateway re-reads. "
        "Sign that subject's instructions with --signing-key DIR/signing/SUBJECT.key.",
    )
    key.add_argument("dir", type=cli_paths.directory, help="a directory made by `certs init`")
    key.add_argument(
        "--subject", required=True, type=_subject, help="the tokens' sub, e.g. steel-works"
    )
    key.set_defaults(handler=_key)


def _init(args: argparse.Namespace) -> int:
    from adapters.registry import REGISTRIES
    from gateway.security.certs import init_dev_pki

    try:
        layout = init_dev_pki(args.dir, REGISTRIES)
    except OSError as exc:
        print(f"carbonlink certs init: cannot write {args.dir}: {exc}", file=sys.stderr)
        return 2
    print(f"development PKI written to {layout.root}")
    print(f"  serve with: carbonlink serve --tls-dir {layout.root}")
    print(f"  tokens:     carbonlink certs token {layout.root} --role exchange_operator")
    print(f"  log key:    carbonlink audit key --signing-key {layout.log_signing_key}")
    return 0


def _token(args: argparse.Namespace) -> int:
    from gateway.security.certs import load_private_key
    from gateway.security.tokens import certificate_thumbprint, mint_token

    layout = TlsLayout(args.dir)
    try:
        key = load_private_key(layout.jwt_key(args.role))
    except (OSError, ValueError) as exc:
        print(f"carbonlink certs token: cannot read the {args.role} key: {exc}", file=sys.stderr)
        return 2
    thumbprint = None
    if args.bind_certificate is not None:
        try:
            thumbprint = certificate_thumbprint(args.bind_certificate.read_bytes())
        except (OSError, ValueError) as exc:
            print(
                f"carbonlink certs token: cannot read the certificate "
                f"{args.bind_certificate}: {exc}",
                file=sys.stderr,
            )
            return 2
    token = mint_token(
        key,
        f"{args.role}-1",
        subject=args.subject or args.role,
        roles=[args.role],
        issuer=DEV_ISSUER,
        audience=DEV_AUDIENCE,
        accounts=args.account,
        entities=args.entity,
        registries=args.registry,
        ttl_seconds=args.ttl,
        certificate_thumbprint=thumbprint,
    )
    if args.out is None:
        print(token)
        return 0
    try:
        fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(token + "\n")
    except OSError as exc:
        print(f"carbonlink certs token: cannot write {args.out}: {exc}", file=sys.stderr)
        return 2
    return 0


def _lifetime(text: str) -> int:
    """A token's lifetime: a token born expired would be refused by every gateway."""
    try:
        seconds = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of seconds") from exc
    if seconds < 1:
        raise argparse.ArgumentTypeError(f"{seconds} is not a lifetime: 1 second or more")
    return seconds


_SUBJECT = re.compile(r"[A-Za-z0-9._-]{1,100}")
"""A subject that names a key file and, with ``-1``, a valid key id."""


def _subject(text: str) -> str:
    if not _SUBJECT.fullmatch(text) or text.startswith("."):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a subject: 1-100 of [A-Za-z0-9._-], not starting with '.'"
        )
    return text


def _key(args: argparse.Namespace) -> int:
    from gateway.security.certs import add_instruction_key

    try:
        key_id, path = add_instruction_key(TlsLayout(args.dir), args.subject)
    except (OSError, ValueError) as exc:
        print(f"carbonlink certs key: {exc}; nothing written", file=sys.stderr)
        return 2
    print(f"instruction key {key_id} of subject {args.subject!r} written to {path}")
    print(f"  sign with: --signing-key {path}")
    return 0


def serve_flags(tls_dir: Path | None) -> dict[str, str | None]:
    """The gateway settings a ``--tls-dir`` stands for (all None without one)."""
    names = (
        "tls_cert_file",
        "tls_key_file",
        "tls_ca_file",
        "jwks_file",
        "instruction_keys_file",
        "log_signing_key_file",
    )
    if tls_dir is None:
        return dict.fromkeys(names)
    layout = TlsLayout(tls_dir)
    paths = (
        layout.gateway_cert,
        layout.gateway_key,
        layout.ca_cert,
        layout.jwks,
        layout.instruction_keys,
        layout.log_signing_key,
    )
    return {name: str(path) for name, path in zip(names, paths, strict=True)}
