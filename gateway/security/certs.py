"""``carbonlink certs init``: a development PKI, token keys and instruction-signing keys.

Everything is real (X.509 v3 with ECDSA P-256, ES256 token keys, Ed25519 instruction
keys); only the trust is local: one self-signed CA per directory. TLS keys are ECDSA
P-256 rather than Ed25519 because every gRPC/BoringSSL client and server negotiates it.
Private keys are written 0600 and never printed.
"""

from __future__ import annotations

import base64
import ipaddress
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from jwt.algorithms import ECAlgorithm

from gateway.security.layout import DEV_AUDIENCE, DEV_ISSUER, ROLES, TlsLayout

_VALIDITY = timedelta(days=365)
_HOSTS = ("localhost", "127.0.0.1")
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class _Issuer:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _write_key(path: Path, key: PrivateKey) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Create 0600 from the start: a key must never be readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(pem)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "carbonlink development"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _new_ca(now: datetime) -> _Issuer:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name("carbonlink development CA")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _Issuer(cert, key)


def issue_certificate(
    issuer_cert: x509.Certificate,
    issuer_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    server: bool,
    client: bool,
    now: datetime | None = None,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Issue a leaf certificate (ECDSA P-256) signed by a CA.

    Args:
        issuer_cert: The CA certificate.
        issuer_key: The CA's private key.
        common_name: The subject CN (a role, a registry id, ``gateway``).
        server: Whether the leaf serves TLS (SAN localhost and 127.0.0.1, serverAuth).
        client: Whether the leaf authenticates as a TLS client (clientAuth).
        now: Issue time (default: now).

    Returns:
        The certificate and its private key.
    """
    now = now or datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    names: list[x509.GeneralName] = [x509.DNSName(common_name)]
    if server:
        names = [x509.DNSName(_HOSTS[0]), x509.IPAddress(ipaddress.ip_address(_HOSTS[1]))]
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )
    return cert, key


def jwk_of(key: ec.EllipticCurvePrivateKey, kid: str) -> dict[str, str]:
    """The public JWK (ES256) of a token-signing key, with its key id."""
    jwk: dict[str, str] = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    return {**jwk, "kid": kid, "use": "sig", "alg": "ES256"}


def instruction_key_entry(key: ed25519.Ed25519PrivateKey, subject: str) -> dict[str, str]:
    """A public entry of the instruction-key registry: the raw Ed25519 key and its owner."""
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"public_key": base64.b64encode(raw).decode(), "subject": subject}


def instruction_key_id(party: str) -> str:
    """The key id of a party's development instruction-signing key."""
    return f"{party}-1"


def init_dev_pki(directory: Path, registries: Iterable[str]) -> TlsLayout:
    """Create the development PKI and keys under ``directory`` (see :class:`TlsLayout`).

    Creates a CA; server certificates for the gateway and each registry emulator (SAN
    localhost and 127.0.0.1; the gateway's also authenticates it to the registries);
    per role a client certificate, a token-signing key and an instruction-signing key;
    the JWKS and the instruction-key registry; the log's checkpoint-signing key, kept if
    it exists (auditors pin its verifier key: a new one would disown every checkpoint
    signed before); and ``gateway.yaml`` naming the files.

    Args:
        directory: Where to write; created if missing. Existing files are replaced.
        registries: Registry ids that get an emulator certificate.

    Returns:
        The layout of the written files.
    """
    layout = TlsLayout(directory)
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    ca = _new_ca(now)
    _write_cert(layout.ca_cert, ca.cert)
    _write_key(layout.ca_key, ca.key)

    cert, key = issue_certificate(ca.cert, ca.key, "gateway", server=True, client=True, now=now)
    _write_cert(layout.gateway_cert, cert)
    _write_key(layout.gateway_key, key)
    for registry_id in registries:
        cert, key = issue_certificate(ca.cert, ca.key, registry_id, server=True, client=False)
        _write_cert(layout.registry_cert(registry_id), cert)
        _write_key(layout.registry_key(registry_id), key)

    jwks: list[dict[str, str]] = []
    instruction_keys: dict[str, dict[str, str]] = {}
    for role in ROLES:
        cert, key = issue_certificate(ca.cert, ca.key, role, server=False, client=True, now=now)
        _write_cert(layout.client_cert(role), cert)
        _write_key(layout.client_key(role), key)
        token_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(layout.jwt_key(role), token_key)
        jwks.append(jwk_of(token_key, f"{role}-1"))
        signing_key = ed25519.Ed25519PrivateKey.generate()
        _write_key(layout.instruction_key(role), signing_key)
        instruction_keys[instruction_key_id(role)] = instruction_key_entry(signing_key, role)
    if not layout.log_signing_key.exists():
        _write_key(layout.log_signing_key, ed25519.Ed25519PrivateKey.generate())
    layout.jwks.write_text(json.dumps({"keys": jwks}, indent=2) + "\n", encoding="utf-8")
    _write_instruction_keys(layout, instruction_keys)
    layout.gateway_config.write_text(
        "\n".join(
            [
                "# Written by `carbonlink certs init`: the gateway's TLS, token and signing files.",
                f"tls_cert_file: {json.dumps(str(layout.gateway_cert))}",
                f"tls_key_file: {json.dumps(str(layout.gateway_key))}",
                f"tls_ca_file: {json.dumps(str(layout.ca_cert))}",
                f"jwks_file: {json.dumps(str(layout.jwks))}",
                f"jwt_issuer: {json.dumps(str(DEV_ISSUER))}",
                f"jwt_audience: {json.dumps(str(DEV_AUDIENCE))}",
                f"instruction_keys_file: {json.dumps(str(layout.instruction_keys))}",
                f"log_signing_key_file: {json.dumps(str(layout.log_signing_key))}",
                "",
            ]
        ),
        encoding="utf-8",
    )
    return layout


def _write_instruction_keys(layout: TlsLayout, keys: dict[str, dict[str, str]]) -> None:
    """Replace the instruction-key registry at once: a gateway re-reading it meanwhile
    finds the old file or the new one, never half of one."""
    staged = layout.instruction_keys.with_suffix(".json.new")
    staged.write_text(json.dumps({"keys": keys}, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    staged.replace(layout.instruction_keys)


def add_instruction_key(layout: TlsLayout, subject: str) -> tuple[str, Path]:
    """Create an instruction-signing key for ``subject`` (a token's ``sub``) in a
    ``certs init`` directory, and register it for that subject.

    Returns:
        The key's id (``SUBJECT-1``, what ``--signing-key`` derives from the file's name)
        and the private key's path.

    Raises:
        FileExistsError: The subject has a key already (a role's own, say).
        OSError: The directory cannot be read or written.
        ValueError: The registry file is not one ``certs init`` wrote.
    """
    key_id = instruction_key_id(subject)
    path = layout.instruction_key(subject)
    keys = json.loads(layout.instruction_keys.read_text(encoding="utf-8")).get("keys")
    if not isinstance(keys, dict):
        raise ValueError(f"{layout.instruction_keys} holds no instruction keys")
    if key_id in keys or path.exists():
        raise FileExistsError(f"subject {subject!r} has an instruction key already ({path})")
    key = ed25519.Ed25519PrivateKey.generate()
    _write_key(path, key)
    keys[key_id] = instruction_key_entry(key, subject)
    try:
        _write_instruction_keys(layout, keys)
    except OSError:
        path.unlink()  # a key no registry names would only mislead
        raise
    return key_id, path


def load_private_key(path: Path) -> PrivateKey:
    """A PEM private key (unencrypted PKCS#8), EC or Ed25519.

    Raises:
        ValueError: The file holds no key of a supported kind.
    """
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey):
        raise ValueError(f"{path}: not an EC or Ed25519 private key")
    return key
