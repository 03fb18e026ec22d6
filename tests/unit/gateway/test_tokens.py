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
from gateway.security.tokens import JwksFile, TokenVerifier
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
