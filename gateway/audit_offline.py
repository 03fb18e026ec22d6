"""What the offline auditor commands do once parsed: ``carbonlink audit verify|key|keygen``
(their parser is ``gateway.cli_audit``), and what the gateway's clients share with them.

``audit verify`` checks an audit bundle with no database and no network, a line at a time
as it reads it: the checkpoint's signature under the log key the auditor trusts, every
inclusion proof, and the history's shape (``registry_bridge.audit``).  Nothing here loads
gRPC or the generated messages.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TextIO

from registry_bridge.audit import AuditFailure, verify_lines
from registry_bridge.model import BlockId
from registry_bridge.signed_note import NoteError, NoteSigner, Verifier, parse_verifier_key

EXIT_OK = 0
EXIT_FAILED = 1
"""The bundle does not verify, the units are unknown, or the registries disagree."""
EXIT_USAGE = 2


def write_atomically(path: Path, chunks: Iterable[str]) -> None:
    """Replace ``path`` with the text of ``chunks`` whole or not at all: an auditor saves
    the latest checkpoint over the one kept, and a crash half-way through must leave the
    kept one, not a torn file; a bundle is written as its pages come, and a page the
    gateway refuses leaves no part of it.

    Raises:
        OSError: It could not be written; ``path`` is as it was.
        Exception: Whatever producing ``chunks`` raised; ``path`` is as it was.
    """
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            # mkstemp makes the file 0600: keep the mode of the file replaced, else 0644.
            os.fchmod(out.fileno(), path.stat().st_mode & 0o777 if path.exists() else 0o644)
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_log_key(text: str) -> Verifier:
    """A verifier key given as the key itself or as a file holding it.

    Raises:
        NoteError: Neither a key nor a readable file with one.
    """
    candidate = Path(text)
    if "+" not in text or candidate.is_file():
        try:
            text = candidate.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise NoteError(f"{text!r} is neither a verifier key nor a readable file") from exc
    return parse_verifier_key(text)


def verify(args: argparse.Namespace, out: TextIO | None = None) -> int:
    stdout = sys.stdout if out is None else out
    try:
        trusted = read_log_key(args.log_key)
    except NoteError as exc:
        print(f"carbonlink audit verify: --log-key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        # Read a line at a time as it is verified: a bundle of any length fits.
        with Path(args.bundle).open(encoding="utf-8") as lines:
            report = verify_lines(lines, trusted)
    except (OSError, UnicodeDecodeError) as exc:
        print(f"carbonlink audit verify: cannot read {args.bundle}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AuditFailure as exc:
        print(f"carbonlink audit verify: FAILED: {exc}", file=sys.stderr)
        return EXIT_FAILED
    kinds = ", ".join(f"{k} {n}" for k, n in sorted(report.kinds.items()))
    print(
        f"OK: {report.events} events verified against the checkpoint of size "
        f"{report.tree_size} signed by {trusted.name} ({kinds}); the gateway signed them "
        f"as every event of {describe(report.query)} at that size",
        file=stdout,
    )
    for block, beneficiary in report.retirements:
        print(
            f"  retired {block.quantity} units ({describe(block)}) for {beneficiary}", file=stdout
        )
    for block, registry, account, status in report.final:
        print(
            f"  at size {report.tree_size}: {describe(block)} {status} at {registry}/{account}",
            file=stdout,
        )
    return EXIT_OK


def describe(block: BlockId) -> str:
    series = f"/{block.serial_series}" if block.serial_series else ""
    return f"{block.program.value}{series}:{block.serial_start}-{block.serial_end}"


def kept_checkpoint(path: Path) -> str:
    """The signed checkpoint note in ``path``: a note as written, or an audit bundle's.

    Raises:
        OSError: The file cannot be read.
        NoteError: It is not UTF-8 text, or neither a note nor a bundle.
    """
    try:
        with path.open(encoding="utf-8") as lines:
            first = lines.readline()
            # A bundle of lines has its checkpoint in its first; a note, or a bundle of
            # one document, is read whole.
            document = _json_or_none(first)
            if not isinstance(document, dict):
                text = first + lines.read()
                document = _json_or_none(text)
                if document is None:
                    return text
    except UnicodeDecodeError as exc:
        raise NoteError(
            f"{path} is not UTF-8 text: neither a signed checkpoint nor a bundle"
        ) from exc
    checkpoint = document.get("checkpoint") if isinstance(document, dict) else None
    if isinstance(checkpoint, str):
        return checkpoint
    raise NoteError(f"{path} is neither a signed checkpoint nor an audit bundle")


def _json_or_none(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def key(args: argparse.Namespace) -> int:
    try:
        signer = NoteSigner.from_pem(args.origin, Path(args.signing_key).read_bytes())
    except (OSError, NoteError) as exc:
        print(f"carbonlink audit key: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(signer.verifier.encode())
    return EXIT_OK


def keygen(args: argparse.Namespace) -> int:
    from gateway.log_keys import write_new_key  # the gateway's configuration: keygen's only

    try:
        write_new_key(Path(args.out))
    except OSError as exc:
        print(f"carbonlink audit keygen: {exc}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote a new Ed25519 log signing key to {args.out} (keep it private)")
    return EXIT_OK
