"""The client side: mutual-TLS channels carrying a bearer token, and instruction signing.

Used by the CLI client commands, the demo and the tests; any gRPC client in any
language does the same: TLS with a client certificate of the gateway's CA, an
``authorization: Bearer <JWT>`` header on every call, and an Ed25519 signature over the
canonical bytes of each instruction (``instructions.canonical_bytes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc
import jwt
from cryptography.hazmat.primitives.asymmetric import ed25519
from google.protobuf.message import Message

from gateway.handlers import SERVICE_PREFIX
from gateway.security.certs import instruction_key_id, load_private_key
from gateway.security.instructions import sign_request
from gateway.security.layout import TlsLayout
from gateway.security.tls import channel_credentials


def secure_channel(target: str, ca: Path, cert: Path, key: Path, token: str | None) -> grpc.Channel:
    """A mutual-TLS channel to ``target`` that sends ``token`` as a bearer on every call.

    Raises:
        OSError: A certificate or key file cannot be read.
    """
    credentials = channel_credentials(ca, cert, key)
    if token is not None:
        credentials = grpc.composite_channel_credentials(
            credentials, grpc.access_token_call_credentials(token)
        )
    return grpc.secure_channel(target, credentials)


def role_channel(target: str, layout: TlsLayout, role: str, token: str | None) -> grpc.Channel:
    """A mutual-TLS channel with the client certificate of ``role`` from a ``certs init`` dir."""
    return secure_channel(
        target, layout.ca_cert, layout.client_cert(role), layout.client_key(role), token
    )


def token_audience(token: str) -> str:
    """The one audience (``aud``) a bearer token names: the gateway deployment it is for,
    which the party's instructions are signed for too.

    The token is read, not verified: it is the party's own, and the gateway verifies it.

    Raises:
        ValueError: The token is not a JWT, or names no audience or several.
    """
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise ValueError(f"the bearer token is not a JWT: {exc}") from exc
    audience = claims.get("aud")
    if isinstance(audience, list) and len(audience) == 1:
        audience = audience[0]
    if not isinstance(audience, str) or not audience:
        raise ValueError("the bearer token names no single audience (aud) to sign for")
    return audience


@dataclass(frozen=True)
class InstructionSigner:
    """Signs requests as one party, for one gateway deployment."""

    key: ed25519.Ed25519PrivateKey
    key_id: str
    audience: str
    """The deployment's ``jwt_audience``: an instruction is good at that deployment only."""

    @staticmethod
    def from_file(path: Path, audience: str, key_id: str | None = None) -> InstructionSigner:
        """Load a party's PEM key; the key id defaults to the ``certs init`` one of its name.

        Raises:
            ValueError: The file holds no Ed25519 private key.
            OSError: The file cannot be read.
        """
        key = load_private_key(path)
        if not isinstance(key, ed25519.Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return InstructionSigner(key, key_id or instruction_key_id(path.stem), audience)

    def sign(self, method: str, request: Message) -> Message:
        """Sign ``request`` in place for the gateway RPC ``method`` (``Retire``...); returns it."""
        sign_request(
            SERVICE_PREFIX + method, request, self.key, self.key_id, audience=self.audience
        )
        return request
