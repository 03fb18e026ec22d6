"""Bearer token verification, on a JWKS file of one key and a clock the test holds."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from gateway.security.certs import jwk_of
from gateway.security.tokens import JwksFile, TokenVerifier, mint_token
from registry_bridge.errors import Unauthenticated

ISSUER = "https://idp.example"
AUDIENCE = "carbonlink-gateway"
KID = "idp-1"


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture
def keys(tmp_path: Path, key: ec.EllipticCurvePrivateKey) -> JwksFile:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [jwk_of(key, KID)]}), encoding="utf-8")
    return JwksFile(path)


def _token(key: ec.EllipticCurvePrivateKey, **times: Any) -> str:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "auditor", "roles": ["auditor"], **times}
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": KID})


@pytest.mark.parametrize(
    "times",
    [
        {"exp": 10**400},
        {"iat": -(10**400)},
    ],
    ids=["exp past a float", "iat before a float"],
)
def test_a_time_past_the_range_of_a_number_is_refused_as_unauthenticated(
    keys: JwksFile, key: ec.EllipticCurvePrivateKey, times: dict[str, int]
) -> None:
    now = int(time.time())
    token = _token(key, **{"iat": now, "nbf": now, "exp": now + 600, **times})
    verifier = TokenVerifier(keys, ISSUER, AUDIENCE, 30.0, max_lifetime_seconds=86_400)

    with pytest.raises(Unauthenticated, match="exp and iat must be numbers"):
        verifier.verify(token)


NOW = 1_893_456_000.0
"""2030-01-01T00:00:00Z: the verifier's clock in these tests, years from the system's."""
LEEWAY = 30.0


def _verifier(keys: JwksFile, clock: list[float] | None = None) -> TokenVerifier:
    held = clock if clock is not None else [NOW]
    return TokenVerifier(
        keys, ISSUER, AUDIENCE, LEEWAY, lambda: held[0], max_lifetime_seconds=86_400
    )


def test_a_token_minted_on_the_verifiers_clock_is_good_whatever_the_systems(
    keys: JwksFile, key: ec.EllipticCurvePrivateKey
) -> None:
    token = mint_token(
        key, KID, subject="auditor", roles=["auditor"], issuer=ISSUER, audience=AUDIENCE, now=NOW
    )

    assert _verifier(keys).verify(token).subject == "auditor"


def test_the_clock_moving_past_expiry_and_the_leeway_expires_the_token(
    keys: JwksFile, key: ec.EllipticCurvePrivateKey
) -> None:
    clock = [NOW]
    verifier = _verifier(keys, clock)
    token = _token(key, iat=int(NOW), nbf=int(NOW), exp=int(NOW) + 600)
    clock[0] = NOW + 600 + LEEWAY - 1
    assert verifier.verify(token).subject == "auditor"

    clock[0] = NOW + 600 + LEEWAY

    with pytest.raises(Unauthenticated, match=r"^bearer token expired$"):
        verifier.verify(token)


@pytest.mark.parametrize("claim", ["nbf", "iat"])
def test_a_token_valid_only_past_the_leeway_from_now_is_not_yet_valid(
    keys: JwksFile, key: ec.EllipticCurvePrivateKey, claim: str
) -> None:
    times = {"iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 3600}
    verifier = _verifier(keys)
    times[claim] = int(NOW + LEEWAY)
    assert verifier.verify(_token(key, **times)).subject == "auditor"

    times[claim] = int(NOW + LEEWAY) + 1

    with pytest.raises(Unauthenticated, match=r"^bearer token not yet valid$"):
        verifier.verify(_token(key, **times))


@pytest.mark.parametrize(
    ("times", "message"),
    [
        ({"nbf": str(int(NOW))}, r"^bearer token nbf must be a number$"),
        ({"nbf": True}, r"^bearer token nbf must be a number$"),
        ({"exp": float("nan")}, r"^bearer token exp and iat must be numbers$"),
        ({"iat": float("inf")}, r"^bearer token exp and iat must be numbers$"),
        (
            {"iat": -(10**308), "exp": 10**308},
            r"^bearer token lives inf s \(exp - iat\), longer than the gateway's maximum",
        ),
    ],
    ids=["nbf text", "nbf bool", "exp NaN", "iat infinite", "lifetime past a float"],
)
def test_time_claims_that_are_no_times_are_refused_by_name(
    keys: JwksFile, key: ec.EllipticCurvePrivateKey, times: dict[str, Any], message: str
) -> None:
    token = _token(key, **{"iat": int(NOW), "nbf": int(NOW), "exp": int(NOW) + 600, **times})

    with pytest.raises(Unauthenticated, match=message):
        _verifier(keys).verify(token)
