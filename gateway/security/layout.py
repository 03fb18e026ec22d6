"""Where ``carbonlink certs init DIR`` puts each file, so every consumer finds it by name.

One class answers every path: the gateway (``--tls-dir``), the emulators
(``carbonlink emulate --tls-dir``), the CLI clients and the demo all read the same layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROLES: tuple[str, ...] = (
    "exchange_operator",
    "issuer",
    "covered_entity",
    "auditor",
    "regulator",
    "registry",
)
"""Every role a bearer token can carry (DESIGN.md, Security)."""

DEV_ISSUER = "https://idp.carbonlink.local"
"""The ``iss`` of development tokens (``carbonlink certs token``)."""
DEV_AUDIENCE = "carbonlink-gateway"
"""The ``aud`` the gateway expects by default."""


@dataclass(frozen=True)
class TlsLayout:
    """Paths of the development PKI under one directory."""

    root: Path

    @property
    def ca_cert(self) -> Path:
        """The development CA's certificate (PEM): trusted by every party."""
        return self.root / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """The development CA's private key: only ``certs init`` uses it."""
        return self.root / "ca.key"

    @property
    def gateway_cert(self) -> Path:
        """The gateway's certificate: server auth to clients, client auth to registries."""
        return self.root / "gateway.crt"

    @property
    def gateway_key(self) -> Path:
        """The gateway's TLS private key."""
        return self.root / "gateway.key"

    def registry_cert(self, registry_id: str) -> Path:
        """A registry emulator's server certificate."""
        return self.root / "registries" / f"{registry_id}.crt"

    def registry_key(self, registry_id: str) -> Path:
        """A registry emulator's TLS private key."""
        return self.root / "registries" / f"{registry_id}.key"

    def client_cert(self, role: str) -> Path:
        """The TLS client certificate of one role's client."""
        return self.root / "clients" / f"{role}.crt"

    def client_key(self, role: str) -> Path:
        """The TLS client key of one role's client."""
        return self.root / "clients" / f"{role}.key"

    def jwt_key(self, role: str) -> Path:
        """The private key (ES256, PEM) that signs one role's development tokens."""
        return self.root / "jwt" / f"{role}.key"

    @property
    def jwks(self) -> Path:
        """The JSON Web Key Set of every token-signing public key (the gateway reads it)."""
        return self.root / "jwt" / "jwks.json"

    def instruction_key(self, party: str) -> Path:
        """A party's Ed25519 instruction-signing private key (PEM, PKCS#8)."""
        return self.root / "signing" / f"{party}.key"

    @property
    def instruction_keys(self) -> Path:
        """The registry of instruction-signing public keys (key id -> key, subject)."""
        return self.root / "signing" / "keys.json"

    @property
    def log_signing_key(self) -> Path:
        """The Ed25519 key that signs the provenance log's checkpoints (PEM, PKCS#8)."""
        return self.root / "log" / "signing.key"

    @property
    def gateway_config(self) -> Path:
        """A gateway config fragment naming the files above (``serve --config``)."""
        return self.root / "gateway.yaml"
