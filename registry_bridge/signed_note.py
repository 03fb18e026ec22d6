"""Signed checkpoints of the provenance log, in the signed-note form of transparency logs.

A checkpoint body is three lines: the log's origin, its tree size and the base64 root
hash.  A blank line follows, then one signature line per signer::

    carbonlink.example/provenance
    42
    qM2h...=

    — carbonlink.example/provenance AbCd...=

The signature line's base64 is the 4-byte key id followed by the Ed25519 signature of
the body (every byte up to and including the root line's newline).  The key id is the
first four bytes of SHA-256(name || 0x0A || 0x01 || public key), 0x01 naming Ed25519,
as in golang.org/x/mod/sumdb/note; a verifier key is written ``name+hexid+base64(0x01 ||
public key)`` in the same format, so the standard tooling reads ours.

Other statements of the log (a trace's list of events, see ``audit.TraceStatement``) are
signed notes of the same form whose body cannot be read as a checkpoint's: its second
line is not a tree size.

Pure: no database, no network.  The offline auditor uses it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from registry_bridge.errors import CarbonlinkError

ALG_ED25519 = b"\x01"
SIGNATURE_DASH = "\u2014"
"""The em dash that starts every signature line."""


class NoteError(CarbonlinkError):
    """A checkpoint or key is malformed, or its signature does not verify."""


@dataclass(frozen=True)
class Checkpoint:
    """A log's size and root hash, as signed."""

    origin: str
    size: int
    root: bytes

    def body(self) -> str:
        """The exact text that is signed."""
        return f"{self.origin}\n{self.size}\n{base64.b64encode(self.root).decode()}\n"


def _check_name(name: str) -> None:
    if not name or any(c.isspace() for c in name) or "+" in name:
        raise NoteError(f"key name {name!r} must be non-empty, without spaces or '+'")


def key_id(name: str, public_key: bytes) -> bytes:
    """The 4-byte id of a key: SHA-256(name || '\\n' || 0x01 || public key)[:4]."""
    return hashlib.sha256(name.encode() + b"\n" + ALG_ED25519 + public_key).digest()[:4]


@dataclass(frozen=True)
class Verifier:
    """A named Ed25519 public key that checks checkpoint signatures."""

    name: str
    public_key: bytes

    @property
    def key_id(self) -> bytes:
        """The key's 4-byte id."""
        return key_id(self.name, self.public_key)

    def encode(self) -> str:
        """The verifier key string ``name+hexid+base64(0x01 || key)``."""
        encoded = base64.b64encode(ALG_ED25519 + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{encoded}"


def parse_verifier_key(text: str) -> Verifier:
    """Read a verifier key ``name+hexid+base64(0x01 || key)``.

    Raises:
        NoteError: The key is malformed or its id does not match its name and key.
    """
    # Only the first two "+" separate: the base64 key may contain more.
    parts = text.strip().split("+", 2)
    if len(parts) != 3:
        raise NoteError("a verifier key is NAME+KEYID+KEY")
    name, hex_id, encoded = parts
    _check_name(name)
    try:
        raw = base64.b64decode(encoded, validate=True)
        wanted_id = bytes.fromhex(hex_id)
    except (binascii.Error, ValueError) as exc:
        raise NoteError(f"verifier key is not hex and base64: {exc}") from exc
    if len(raw) != 33 or raw[:1] != ALG_ED25519:
        raise NoteError("verifier key is not an Ed25519 key (0x01 followed by 32 bytes)")
    verifier = Verifier(name, raw[1:])
    if verifier.key_id != wanted_id:
        raise NoteError("verifier key id does not match its name and key")
    return verifier


class NoteSigner:
    """Signs checkpoints with one Ed25519 key under one name."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        _check_name(name)
        self.name = name
        self._key = private_key
        public = private_key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.verifier = Verifier(name, public)

    @classmethod
    def from_pem(cls, name: str, pem: bytes) -> NoteSigner:
        """A signer from an unencrypted PKCS#8 PEM Ed25519 private key.

        Raises:
            NoteError: The PEM is not an unencrypted Ed25519 private key.
        """
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise NoteError(f"not an unencrypted PEM private key: {exc}") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise NoteError(f"the key is {type(key).__name__}, not Ed25519")
        return cls(name, key)

    def derive_secret(self, purpose: str) -> bytes:
        """A 32-byte secret for ``purpose``, derived from the signing key.

        Every gateway holding the log's key derives the same one, so what one seals
        (a trace's page token) another opens; and none is ever a signature, which a
        verifier could mistake for a statement of the log.
        """
        raw = self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        return hmac.new(raw, b"carbonlink derived secret\n" + purpose.encode(), "sha256").digest()

    def sign(self, checkpoint: Checkpoint) -> str:
        """The signed note of ``checkpoint``."""
        return self.sign_body(checkpoint.body())

    def sign_body(self, body: str) -> str:
        """The signed note of ``body``: lines of text, each ending in a newline, none empty."""
        if not body.endswith("\n") or "\n\n" in body:
            raise NoteError("a note body is non-empty lines, each ending in a newline")
        signature = self._key.sign(body.encode())
        blob = base64.b64encode(self.verifier.key_id + signature).decode()
        return f"{body}\n{SIGNATURE_DASH} {self.name} {blob}\n"


def generate_private_key_pem() -> bytes:
    """A new Ed25519 private key as unencrypted PKCS#8 PEM (keep the file private)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def open_note(note: str, verifier: Verifier, what: str = "note") -> list[str]:
    """Verify a signed note against ``verifier`` and return its body's lines.

    Signature lines by other keys (witnesses) are allowed and ignored; at least one line
    must be by ``verifier`` and every line by it must verify.

    Raises:
        NoteError: The note is malformed, not signed by the key, or a signature is bad;
            the message calls it ``what``.
    """
    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise NoteError("a signed note needs a blank line between body and signatures")
    body += "\n"
    public = Ed25519PublicKey.from_public_bytes(verifier.public_key)
    matched = 0
    for line in signatures.splitlines():
        if not line:
            continue
        prefix = f"{SIGNATURE_DASH} "
        if not line.startswith(prefix):
            raise NoteError(f"signature line {line!r} does not start with an em dash")
        name, _, blob = line[len(prefix) :].partition(" ")
        try:
            raw = base64.b64decode(blob, validate=True)
        except binascii.Error as exc:
            raise NoteError(f"signature of {name!r} is not base64") from exc
        if name != verifier.name or raw[:4] != verifier.key_id:
            continue
        try:
            public.verify(raw[4:], body.encode())
        except InvalidSignature as exc:
            raise NoteError(f"the signature by {name} does not verify") from exc
        matched += 1
    if not matched:
        raise NoteError(f"the {what} is not signed by {verifier.name} ({verifier.key_id.hex()})")
    return body.split("\n")[:-1]


def open_checkpoint(note: str, verifier: Verifier) -> Checkpoint:
    """Verify a signed checkpoint against ``verifier`` and return what it states.

    Raises:
        NoteError: The note is malformed, not signed by the key, or a signature is bad.
    """
    lines = open_note(note, verifier, "checkpoint")
    if len(lines) < 3:
        raise NoteError("a checkpoint body has origin, size and root lines")
    origin, size_text, root_text = lines[:3]
    if not size_text.isdigit() or (size_text != "0" and size_text.startswith("0")):
        raise NoteError(f"tree size {size_text!r} is not a decimal number")
    try:
        root = base64.b64decode(root_text, validate=True)
    except binascii.Error as exc:
        raise NoteError(f"root hash {root_text!r} is not base64") from exc
    if len(root) != 32:
        raise NoteError(f"root hash is {len(root)} bytes, not 32")
    return Checkpoint(origin, int(size_text), root)
