"""Signed instructions: canonical bytes, Ed25519 signing and the gateway's checks.

Requests that move units (SubmitTransfer, SubmitTransfers, Retire, Surrender,
ExecuteMigration) or settle where they stand (ResolveUse, AbandonMigration) carry an
``InstructionSignature``. The signed bytes are
``DOMAIN + method + "\\n" + request`` where ``request`` is the deterministic protobuf
serialization of the request with only ``signature.signature`` cleared, so the key id,
nonce, timestamp and audience are signed with the rest; the method name keeps a signature
for one RPC from being replayed against another, and the audience (the deployment's
``jwt_audience``) one for a deployment from being replayed against another that shares
the party's key, each keeping nonces of its own.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import Message

from gateway.security.tokens import Principal
from registry_bridge.errors import FieldViolation, InvalidRequest, Unauthenticated
from registry_bridge.model import has_control_characters

DOMAIN = b"carbonlink.v1 signed instruction\n"
SIGNED_METHODS = frozenset(
    {
        "SubmitTransfer",
        "SubmitTransfers",
        "Retire",
        "Surrender",
        "ExecuteMigration",
        "ResolveUse",
        "AbandonMigration",
    }
)
"""RPCs whose requests must carry the instructing party's signature."""
# Matched whole (fullmatch): ``$`` also matches before a final newline.
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def canonical_bytes(full_method: str, request: Message) -> bytes:
    """The bytes a party signs for ``request`` sent to ``full_method``.

    Args:
        full_method: The gRPC method path, ``/carbonlink.v1.LinkageGateway/Retire``.
        request: The request, with ``signature.key_id``, ``nonce`` and ``timestamp`` set.

    Returns:
        ``DOMAIN + full_method + "\\n" + deterministic serialization`` with the signature
        bytes cleared.
    """
    copy = type(request)()
    copy.CopyFrom(request)
    signature: Any = getattr(copy, "signature")  # noqa: B009 -- every signed request has one
    signature.ClearField("signature")
    return DOMAIN + full_method.encode() + b"\n" + copy.SerializeToString(deterministic=True)


def sign_request(
    full_method: str,
    request: Message,
    key: ed25519.Ed25519PrivateKey,
    key_id: str,
    *,
    audience: str,
    now: datetime | None = None,
    nonce: str | None = None,
) -> None:
    """Sign ``request`` in place as the instructing party (clients call this).

    Args:
        full_method: The gRPC method path the request is sent to.
        request: A request with a ``signature`` field; it is overwritten.
        key: The party's Ed25519 private key.
        key_id: The key's id in the gateway's instruction-key registry.
        audience: The gateway deployment the instruction is for: its ``jwt_audience``,
            the ``aud`` of the party's token (``client.token_audience``).
        now: Signing time (default: now, UTC).
        nonce: A fresh single-use value (default: 32 random URL-safe characters).
    """
    signature: Any = getattr(request, "signature")  # noqa: B009
    signature.Clear()
    signature.key_id = key_id
    signature.audience = audience
    signature.nonce = nonce or secrets.token_urlsafe(24)
    signature.timestamp.FromDatetime(now or datetime.now(UTC))
    signature.signature = key.sign(canonical_bytes(full_method, request))


@dataclass(frozen=True)
class InstructionKey:
    """A party's public instruction-signing key."""

    key_id: str
    public_key: ed25519.Ed25519PublicKey
    subject: str
    """The token subject that owns the key: only that caller may sign with it."""


class InstructionKeys:
    """The instruction-key registry file (``{"keys": {id: {public_key, subject}}}``).

    Re-read when the file changes, so keys are added and revoked without a restart.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, InstructionKey] = {}
        self._reload()

    def _reload(self) -> None:
        try:
            stat = os.stat(self._path)
            document = json.loads(self._path.read_text(encoding="utf-8"))
            entries = document["keys"]
            keys = {}
            for key_id, entry in entries.items():
                raw = base64.b64decode(entry["public_key"], validate=True)
                keys[key_id] = InstructionKey(
                    key_id, ed25519.Ed25519PublicKey.from_public_bytes(raw), str(entry["subject"])
                )
        except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
            raise ValueError(f"instruction keys {self._path}: unreadable: {exc}") from exc
        self._keys = keys
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def get(self, key_id: str) -> InstructionKey | None:
        """The key of that id, re-reading the file if it changed; None if unknown.

        Raises:
            Unauthenticated: The file changed and cannot be read as a key registry: the
                keys read before it may be the ones it revokes, so none is trusted.
        """
        with self._lock:
            try:
                stat = os.stat(self._path)
            except OSError:
                return self._keys.get(key_id)  # briefly absent while it is replaced
            if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                try:
                    self._reload()
                except ValueError as exc:
                    raise Unauthenticated(
                        f"instruction keys unavailable ({self._path}): cannot be read"
                    ) from exc
            return self._keys.get(key_id)


class NonceStore(Protocol):
    """Remembers nonces per key until they could no longer pass the timestamp window."""

    def claim(self, key_id: str, nonce: str, now: datetime, forget_after: datetime) -> bool:
        """Record the nonce; False when it was seen before for that key."""
        ...


class InstructionVerifier:
    """The gateway's checks of a signed instruction."""

    def __init__(
        self,
        keys: InstructionKeys,
        nonces: NonceStore,
        window: timedelta,
        audience: str,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """A verifier of the instructions for the deployment of ``audience``.

        Args:
            keys: The parties' instruction-signing keys.
            nonces: Where the nonces seen are kept.
            window: How far a signature's timestamp may be from the gateway's clock.
            audience: The deployment instructions must be signed for: the gateway's
                ``jwt_audience``, which its tokens name too.
            clock: Now, in UTC.
        """
        self._keys = keys
        self._nonces = nonces
        self._window = window
        self._audience = audience
        self._clock = clock

    def verify(self, full_method: str, request: Message, principal: Principal) -> dict[str, str]:
        """Check the request's signature and claim its nonce.

        The nonce is claimed only once the signature verifies (so nobody can burn another
        party's nonces) and stays claimed whatever the RPC then answers: a signed
        instruction is single-use. A client retrying signs again with a new nonce; its
        request id keeps the retry idempotent.

        Args:
            full_method: The gRPC method path the request came to.
            request: The request.
            principal: The authenticated caller, who must own the key.

        Returns:
            What the provenance log keeps: key id, signature (base64), nonce, timestamp
            and the SHA-256 of the signed bytes.

        Raises:
            InvalidRequest: The signature fields are missing or malformed.
            Unauthenticated: Unknown key, a key of another subject, an instruction for
                another deployment, a timestamp outside the window, a nonce seen before,
                a signature that does not verify, or a key registry file that cannot be
                read.
        """
        signature: Any = getattr(request, "signature", None)
        if signature is None or not request.HasField("signature"):
            raise InvalidRequest.field("signature", "is required: sign the instruction")
        problems: list[FieldViolation] = []
        if not _KEY_ID.fullmatch(signature.key_id):
            problems.append(FieldViolation("signature.key_id", "must be 1-128 of [A-Za-z0-9._:-]"))
        if not _NONCE.fullmatch(signature.nonce):
            problems.append(FieldViolation("signature.nonce", "must be 16-128 of [A-Za-z0-9_-]"))
        if not signature.HasField("timestamp"):
            problems.append(FieldViolation("signature.timestamp", "is required"))
        if len(signature.signature) != 64:
            problems.append(FieldViolation("signature.signature", "must be 64 bytes (Ed25519)"))
        if (
            not signature.audience
            or len(signature.audience) > 256
            or has_control_characters(signature.audience)
        ):
            problems.append(
                FieldViolation(
                    "signature.audience",
                    f"must name the deployment the instruction is for, this gateway's "
                    f"{self._audience!r} (at most 256 characters, no control characters)",
                )
            )
        # A batch is signed as a whole; a signature inside it would be checked by nobody.
        for i, item in enumerate(getattr(request, "transfers", ())):
            if item.HasField("signature"):
                problems.append(
                    FieldViolation(f"transfers[{i}].signature", "must be unset: sign the batch")
                )
        if problems:
            message = "; ".join(f"{p.field}: {p.description}" for p in problems)
            raise InvalidRequest(message, problems)
        key = self._keys.get(signature.key_id)
        if key is None:
            raise Unauthenticated(f"instruction signed with an unknown key {signature.key_id!r}")
        if key.subject != principal.subject:
            raise Unauthenticated(
                f"instruction key {signature.key_id!r} does not belong to the caller, subject "
                f"{principal.subject!r} (the token's sub): sign with a key registered for it"
            )
        if signature.audience != self._audience:
            raise Unauthenticated(
                f"instruction signed for {signature.audience!r}, another deployment than "
                f"this gateway's {self._audience!r}"
            )
        now = self._clock()
        try:
            signed_at = signature.timestamp.ToDatetime(tzinfo=UTC)
        except (ValueError, OverflowError) as exc:
            raise InvalidRequest.field("signature.timestamp", "is not a valid time") from exc
        if abs(now - signed_at) > self._window:
            raise Unauthenticated(
                f"instruction timestamp {signed_at.isoformat()} is outside the "
                f"{int(self._window.total_seconds())} s window of the gateway's clock"
            )
        signed = canonical_bytes(full_method, request)
        try:
            key.public_key.verify(bytes(signature.signature), signed)
        except InvalidSignature as exc:
            raise Unauthenticated("instruction signature does not verify") from exc
        # Past the window a replay is refused by its timestamp, so the nonce can be dropped.
        if not self._nonces.claim(
            signature.key_id, signature.nonce, now, signed_at + 2 * self._window
        ):
            raise Unauthenticated("instruction nonce already used (replay refused)")
        return {
            "key_id": signature.key_id,
            "signature": base64.b64encode(bytes(signature.signature)).decode(),
            "nonce": signature.nonce,
            "timestamp": signed_at.isoformat(),
            "signed_sha256": hashlib.sha256(signed).hexdigest(),
        }
