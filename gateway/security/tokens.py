"""Bearer JWTs: verification with pinned algorithms, keys from a JWKS file with rotation.

The algorithm of a token is decided by the key its ``kid`` names in the gateway's JWKS
(ES256 for a P-256 key, EdDSA for an Ed25519 key), never by the token's own header: a
token that says ``alg: none``, or HS256 with the public key as its secret, is refused
because that algorithm is not the key's.  Issuer, audience, expiry, not-before and
issued-at are checked with a small leeway for clock skew; the times on the verifier's own
clock, not PyJWT's.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

from gateway.security.layout import ROLES
from registry_bridge.errors import Unauthenticated
from registry_bridge.model import has_control_characters

PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
MAX_TOKEN_BYTES = 8192
"""Longest bearer token read: a cap on work done for an unauthenticated caller."""
_KID_MISS_RELOAD_SECONDS = 1.0


@dataclass(frozen=True)
class Principal:
    """The authenticated caller of one RPC, from its token's claims."""

    subject: str
    """``sub``: the client identity (rate limits and instruction keys are per subject)."""
    roles: frozenset[str]
    """Roles granted, each one of ``layout.ROLES``."""
    accounts: frozenset[str]
    """``registry:account`` the caller may move units out of."""
    entities: frozenset[str]
    """Covered entity ids the caller acts for (migrations)."""
    certificate_thumbprint: str | None = None
    """``cnf.x5t#S256`` (RFC 8705): the client certificate the token is bound to, as the
    base64url SHA-256 of its DER; None for a token bound to none."""
    registries: frozenset[str] = frozenset()
    """Registry ids a ``registry`` token stands for: the registries whose covered entities
    it maintains (a scheme's registry has its jurisdiction's id, ``shenzhen``)."""


_THUMBPRINT = re.compile(r"[A-Za-z0-9_-]{43}")
"""A SHA-256 digest in unpadded base64url."""


def certificate_thumbprint(pem: bytes) -> str:
    """``x5t#S256`` of a PEM certificate (RFC 8705 §3.1): base64url SHA-256 of its DER.

    Raises:
        ValueError: ``pem`` is not a PEM certificate.
    """
    der = x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).rstrip(b"=").decode()


def _bound_certificate(claims: Mapping[str, Any]) -> str | None:
    if "cnf" not in claims:
        return None
    confirmation = claims["cnf"]
    thumbprint = confirmation.get("x5t#S256") if isinstance(confirmation, dict) else None
    if not isinstance(thumbprint, str) or not _THUMBPRINT.fullmatch(thumbprint):
        raise Unauthenticated(
            "bearer token claim 'cnf' must carry 'x5t#S256', a certificate's SHA-256 in "
            "base64url (RFC 8705)"
        )
    return thumbprint


class JwksFile:
    """Token-verification keys of a JWKS file, reloaded when the file changes or a kid misses.

    Rotation: publish the new key in the file alongside the old one, start signing with
    it, then remove the old one; the gateway picks each change up on the next call.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._keys: dict[str, tuple[PublicKey, str]] = {}
        self._last_forced = 0.0
        self._reload()

    def _reload(self) -> None:
        try:
            stat = os.stat(self._path)
            document = json.loads(self._path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise Unauthenticated(f"token keys unavailable ({self._path})") from exc
        listed = document.get("keys") if isinstance(document, dict) else None
        if not isinstance(listed, list):
            # Iterating null or a number would be a TypeError, every caller an INTERNAL.
            raise Unauthenticated(f"token keys unavailable ({self._path}: 'keys' is not a list)")
        keys: dict[str, tuple[PublicKey, str]] = {}
        for jwk in listed:
            if not isinstance(jwk, dict) or not isinstance(jwk.get("kid"), str):
                continue
            parsed = _public_key(jwk)
            if parsed is not None:
                keys[jwk["kid"]] = parsed
        self._keys = keys
        self._stamp = (stat.st_mtime_ns, stat.st_size)

    def key(self, kid: str) -> tuple[PublicKey, str]:
        """The public key and its one algorithm for ``kid``.

        Raises:
            Unauthenticated: No key has that id, even after re-reading the file.
        """
        with self._lock:
            try:
                stat = os.stat(self._path)
                if (stat.st_mtime_ns, stat.st_size) != self._stamp:
                    self._reload()
            except OSError:
                pass  # keep the keys last read: a file being replaced is briefly absent
            found = self._keys.get(kid)
            now = time.monotonic()
            # A kid miss may be a key published a moment ago; re-read, at most once a second
            # so that a flood of made-up kids cannot turn into a flood of file reads.
            if found is None and now - self._last_forced >= _KID_MISS_RELOAD_SECONDS:
                self._last_forced = now
                self._reload()
                found = self._keys.get(kid)
        if found is None:
            raise Unauthenticated("token signed by an unknown key")
        return found


def _public_key(jwk: Mapping[str, Any]) -> tuple[PublicKey, str] | None:
    """A JWK's public key and the one algorithm it is used with; None for other kinds."""
    text = json.dumps(dict(jwk))
    try:
        if jwk.get("kty") == "EC" and jwk.get("crv") == "P-256":
            key = ECAlgorithm.from_jwk(text)
            if isinstance(key, ec.EllipticCurvePublicKey):
                return key, "ES256"
        if jwk.get("kty") == "OKP" and jwk.get("crv") == "Ed25519":
            okp = OKPAlgorithm.from_jwk(text)
            if isinstance(okp, ed25519.Ed25519PublicKey):
                return okp, "EdDSA"
    except (jwt.InvalidKeyError, ValueError, TypeError):
        return None
    return None


def _strings(claims: Mapping[str, Any], name: str, limit: int = 256) -> frozenset[str]:
    value = claims.get(name, [])
    if not isinstance(value, list) or len(value) > limit:
        raise Unauthenticated(f"token claim {name!r} must be a list of at most {limit} strings")
    if not all(isinstance(v, str) and 0 < len(v) <= 256 for v in value):
        raise Unauthenticated(f"token claim {name!r} must hold non-empty strings")
    return frozenset(value)


def _is_seconds(value: object) -> bool:
    """Whether a time claim is a number of seconds: an int or a float, not a bool, and
    finite as a float (JSON's integers have no bound, and one past a float's range is no
    time at all; comparing and showing it failed with an OverflowError)."""
    if not isinstance(value, int | float) or isinstance(value, bool):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


class TokenVerifier:
    """Checks bearer tokens against the JWKS, issuer and audience of the configuration."""

    def __init__(
        self,
        keys: JwksFile,
        issuer: str,
        audience: str,
        leeway_seconds: float,
        clock: Callable[[], float] = time.time,
        *,
        max_lifetime_seconds: float,
    ) -> None:
        """A verifier of the configured issuer, audience and maximum lifetime.

        Args:
            keys: The token-verification keys.
            issuer: The one ``iss`` accepted.
            audience: The ``aud`` a token must name.
            leeway_seconds: Clock skew allowed on ``exp``, ``nbf`` and ``iat``.
            clock: Seconds since the epoch now: what ``exp``, ``nbf`` and ``iat`` are
                checked against.
            max_lifetime_seconds: Longest ``exp - iat`` accepted.
        """
        self._keys = keys
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._clock = clock
        self._max_lifetime = max_lifetime_seconds

    def verify(self, token: str) -> Principal:
        """The principal of a valid token.

        Raises:
            Unauthenticated: The token is malformed, signed by an unknown key or with an
                algorithm other than its key's, expired, not yet valid, or for another
                issuer or audience. The message never repeats the token.
        """
        if len(token) > MAX_TOKEN_BYTES:
            raise Unauthenticated("bearer token too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed bearer token") from exc
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise Unauthenticated("bearer token has no key id (kid)")
        key, algorithm = self._keys.key(kid)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp", "nbf", "iat", "iss", "aud", "sub"],
                    # Checked below on the verifier's clock: PyJWT reads the system's own.
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("bearer token is for another audience") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("bearer token from an untrusted issuer") from exc
        except jwt.InvalidAlgorithmError as exc:
            raise Unauthenticated(f"bearer token algorithm is not {algorithm}") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid bearer token: {type(exc).__name__}") from exc
        self._check_times(claims)
        subject = claims.get("sub")
        # The subject is stored as the caller of its request ids and bound to log lines: a
        # NUL fails every PostgreSQL query it reaches, a newline forges a log line.
        if (
            not isinstance(subject, str)
            or not 0 < len(subject) <= 128
            or has_control_characters(subject)
        ):
            raise Unauthenticated(
                "bearer token subject must be 1 to 128 characters, no control characters"
            )
        roles = _strings(claims, "roles", limit=len(ROLES))
        unknown = roles - set(ROLES)
        if unknown or not roles:
            raise Unauthenticated("bearer token roles must be known roles, at least one")
        return Principal(
            subject,
            roles,
            _strings(claims, "accounts"),
            _strings(claims, "entities"),
            _bound_certificate(claims),
            _strings(claims, "registries"),
        )

    def _check_times(self, claims: Mapping[str, Any]) -> None:
        """Refuse a token not valid now on the verifier's clock, or living too long.

        In PyJWT's order: not yet issued (``iat``) or valid (``nbf``), then expired
        (``exp``); after the signature, issuer and audience, which PyJWT checks.

        Raises:
            Unauthenticated: A time claim is not a number, the token is not yet valid or
                has expired (each beyond the leeway), or it lives longer than the maximum.
        """
        expires, not_before, issued = claims["exp"], claims["nbf"], claims["iat"]
        # Numbers only: PyJWT took any value int() takes ("123" too).
        if not all(_is_seconds(v) for v in (expires, issued)):
            raise Unauthenticated("bearer token exp and iat must be numbers")
        if not _is_seconds(not_before):
            raise Unauthenticated("bearer token nbf must be a number")
        now = self._clock()
        if issued > now + self._leeway or not_before > now + self._leeway:
            raise Unauthenticated("bearer token not yet valid")
        if expires <= now - self._leeway:
            raise Unauthenticated("bearer token expired")
        # A token whose issuer gave it a longer life is refused, not trusted for the
        # maximum: its issuer is misconfigured.  As floats: the difference of two ints
        # each within a float's range may not be, and it is shown.
        lifetime = float(expires) - float(issued)
        if lifetime > self._max_lifetime:
            raise Unauthenticated(
                f"bearer token lives {lifetime:g} s (exp - iat), longer than the gateway's "
                f"maximum of {self._max_lifetime:g} s"
            )


def mint_token(
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey,
    kid: str,
    *,
    subject: str,
    roles: Sequence[str],
    issuer: str,
    audience: str,
    accounts: Sequence[str] = (),
    entities: Sequence[str] = (),
    registries: Sequence[str] = (),
    ttl_seconds: int = 3600,
    now: float | None = None,
    certificate_thumbprint: str | None = None,
) -> str:
    """Sign a token (ES256 for a P-256 key, EdDSA for Ed25519), as an identity provider does.

    The gateway never mints tokens; this serves ``carbonlink certs token``, the demo and
    the tests.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "aud": audience,
        "sub": subject,
        "iat": issued,
        "nbf": issued,
        "exp": issued + ttl_seconds,
        "roles": list(roles),
    }
    if accounts:
        claims["accounts"] = list(accounts)
    if entities:
        claims["entities"] = list(entities)
    if registries:
        claims["registries"] = list(registries)
    if certificate_thumbprint is not None:
        claims["cnf"] = {"x5t#S256": certificate_thumbprint}
    algorithm = "EdDSA" if isinstance(key, ed25519.Ed25519PrivateKey) else "ES256"
    return jwt.encode(claims, key, algorithm=algorithm, headers={"kid": kid})
