"""Every refusal of the security layer, over real mutual TLS, and what it leaves unchanged.

No token, an expired token, a wrong audience, ``alg: none``, HS256 signed with the public
key as secret, a wrong role, another party's account, a replayed nonce, a stale
timestamp, a client certificate from another CA -- and the accepted path, whose
provenance events keep the instruction's key id and signature.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import jwt as pyjwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from grpc_health.v1 import health_pb2, health_pb2_grpc

from adapters._pb.carbonlink.v1 import gateway_pb2, gateway_pb2_grpc, model_pb2
from adapters.emulator_core import start_emulator
from adapters.registry import REGISTRIES, build_adapter
from adapters.retry import RetryPolicy
from adapters.serials import parse_serial
from gateway.handlers import SERVICE_PREFIX
from gateway.security.certs import init_dev_pki, load_private_key
from gateway.security.client import secure_channel
from gateway.security.instructions import sign_request
from gateway.security.layout import DEV_AUDIENCE, TlsLayout
from gateway.security.tls import channel_credentials, server_credentials
from gateway.security.tokens import mint_token
from registry_bridge.errors import RegistryUnavailable
from registry_bridge.schema import LedgerEvent
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    running_secure_gateway,
    venue_units,
)

OPERATOR_ACCOUNTS = ("hkmo:hk-seller",)


def _transfer_request(request_id: str = "trade-1") -> gateway_pb2.SubmitTransferRequest:
    origin = parse_serial("verra", VERRA_SERIAL).id
    return gateway_pb2.SubmitTransferRequest(
        request_id=request_id,
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
            destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(
                        program=origin.program.value,
                        serial_start=origin.serial_start,
                        serial_end=origin.serial_start + 99,
                    )
                )
            ],
        ),
    )


def _signed(
    gateway: SecureGateway, request_id: str = "trade-1", party: str = "exchange_operator"
) -> gateway_pb2.SubmitTransferRequest:
    request = _transfer_request(request_id)
    gateway.signer(party).sign("SubmitTransfer", request)
    return request


def _operator(gateway: SecureGateway) -> gateway_pb2_grpc.LinkageGatewayStub:
    token = gateway.token("exchange_operator", accounts=OPERATOR_ACCOUNTS)
    return gateway.stub("exchange_operator", token)


def _retire_ten_venue_units(gateway: SecureGateway) -> model_pb2.UnitUse:
    """The operator's signed retirement of the venue seller's first ten Verra units."""
    request = gateway_pb2.RetireRequest(
        request_id="retire-1",
        account=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        units=venue_units(0, 10),
        beneficiary="Acme Ltd",
    )
    gateway.signer("exchange_operator").sign("Retire", request)
    use: model_pb2.UnitUse = _operator(gateway).Retire(request, timeout=60)
    return use


def _code(call: object) -> tuple[grpc.StatusCode, str]:
    assert isinstance(call, grpc.RpcError)
    return call.code(), call.details() or ""


def _refused(invoke: object) -> tuple[grpc.StatusCode, str]:
    assert callable(invoke)
    with pytest.raises(grpc.RpcError) as caught:
        invoke()
    return _code(caught.value)


def _event_count(gateway: SecureGateway) -> int:
    with gateway.server.engine.connect() as connection:
        return int(
            connection.execute(sa.select(sa.func.count()).select_from(LedgerEvent)).scalar_one()
        )


def _no_transfers(gateway: SecureGateway) -> None:
    stub = gateway.stub("auditor", gateway.token("auditor"))
    assert list(stub.ListTransfers(gateway_pb2.ListTransfersRequest(), timeout=10).transfers) == []


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(gateway: SecureGateway) -> dict[str, object]:
    now = int(time.time())
    return {
        "iss": "https://idp.carbonlink.local",
        "aud": "carbonlink-gateway",
        "sub": "auditor",
        "iat": now,
        "nbf": now,
        "exp": now + 600,
        "roles": ["auditor"],
    }


def test_a_signed_transfer_by_its_account_holder_completes_and_the_log_keeps_the_signature(
    secure_gateway: SecureGateway,
) -> None:
    request = _signed(secure_gateway)
    transfer = _operator(secure_gateway).SubmitTransfer(request, timeout=60)
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
    with secure_gateway.server.engine.connect() as connection:
        payloads = [
            json.loads(bytes(p))
            for p in connection.execute(
                sa.select(LedgerEvent.payload).where(LedgerEvent.transfer_id != "")
            ).scalars()
        ]
    signed = [p["signed_by"] for p in payloads if "signed_by" in p]
    assert signed and len(signed) == len(payloads)
    expected = base64.b64encode(request.signature.signature).decode()
    assert {(s["key_id"], s["signature"]) for s in signed} == {("exchange_operator-1", expected)}


def test_a_transfer_is_read_only_by_its_parties_and_the_auditor(
    secure_gateway: SecureGateway,
) -> None:
    transfer = _operator(secure_gateway).SubmitTransfer(_signed(secure_gateway), timeout=60)
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED
    by_name = gateway_pb2.GetTransferRequest(name=transfer.name)
    everything = gateway_pb2.ListTransfersRequest()

    def sees(stub: gateway_pb2_grpc.LinkageGatewayStub) -> bool:
        listed = [t.name for t in stub.ListTransfers(everything, timeout=10).transfers]
        try:
            found = stub.GetTransfer(by_name, timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            assert listed == []
            with pytest.raises(grpc.RpcError) as watched:
                next(iter(stub.WatchTransfer(gateway_pb2.WatchTransferRequest(name=transfer.name))))
            assert watched.value.code() == grpc.StatusCode.NOT_FOUND
            return False
        assert found.name == transfer.name and listed == [transfer.name]
        return True

    parties = {
        "seller": ("exchange_operator", ["hkmo:hk-seller"]),
        "buyer": ("covered_entity", ["shenzhen:sz-buyer"]),
        "another member": ("exchange_operator", ["hkmo:someone-else"]),
        "another buyer": ("covered_entity", ["shenzhen:sz-other"]),
        "an issuer": ("issuer", []),
        "the auditor": ("auditor", []),
        "the regulator": ("regulator", []),
    }
    seen = {
        who: sees(secure_gateway.stub(role, secure_gateway.token(role, accounts=accounts)))
        for who, (role, accounts) in parties.items()
    }
    assert seen == {
        "seller": True,
        "buyer": True,
        "another member": False,
        "another buyer": False,
        "an issuer": False,
        "the auditor": True,
        "the regulator": True,
    }


def test_a_use_is_read_only_by_its_holder_and_the_auditor(
    secure_gateway: SecureGateway,
) -> None:
    """GetUse and ListUses are scoped as GetTransfer and ListTransfers are: a retirement
    is its holder's business; to anyone else its name names nothing."""
    use = _retire_ten_venue_units(secure_gateway)
    assert use.state == model_pb2.USE_STATE_COMPLETED

    def sees(stub: gateway_pb2_grpc.LinkageGatewayStub) -> bool:
        listed = [u.name for u in stub.ListUses(gateway_pb2.ListUsesRequest(), timeout=10).uses]
        try:
            found = stub.GetUse(gateway_pb2.GetUseRequest(name=use.name), timeout=10)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
            assert listed == []
            return False
        assert found == use and listed == [use.name]
        return True

    parties = {
        "holder": ("exchange_operator", ["hkmo:hk-seller"]),
        "another member": ("exchange_operator", ["hkmo:someone-else"]),
        "a covered entity": ("covered_entity", ["shenzhen:sz-buyer"]),
        "an issuer": ("issuer", []),
        "the auditor": ("auditor", []),
        "the regulator": ("regulator", []),
    }
    seen = {
        who: sees(secure_gateway.stub(role, secure_gateway.token(role, accounts=accounts)))
        for who, (role, accounts) in parties.items()
    }
    assert seen == {
        "holder": True,
        "another member": False,
        "a covered entity": False,
        "an issuer": False,
        "the auditor": True,
        "the regulator": True,
    }


def test_health_and_reflection_need_no_token(secure_gateway: SecureGateway) -> None:
    with secure_gateway.channel("auditor", None) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_no_token(secure_gateway: SecureGateway) -> None:
    stub = secure_gateway.stub("auditor", None)
    code, details = _refused(
        lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "bearer" in details


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"now": time.time() - 7200, "ttl_seconds": 3600}, "expired"),
        ({"audience": "another-service"}, "audience"),
        ({"issuer": "https://evil.example"}, "issuer"),
        ({"now": time.time() + 3600}, "not yet valid"),
        ({"roles": ["superuser"]}, "roles"),
        ({"ttl_seconds": 86_401}, "longer than the gateway's maximum of 86400 s"),
    ],
)
def test_bad_tokens(secure_gateway: SecureGateway, overrides: dict[str, Any], message: str) -> None:
    stub = secure_gateway.stub("auditor", secure_gateway.token("auditor", **overrides))
    code, details = _refused(
        lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert message in details


def test_a_token_of_the_longest_lifetime_is_accepted(secure_gateway: SecureGateway) -> None:
    stub = secure_gateway.stub("auditor", secure_gateway.token("auditor", ttl_seconds=86_400))
    assert stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10).registries


def test_a_token_whose_expiry_is_text_is_refused(secure_gateway: SecureGateway) -> None:
    """PyJWT takes an ``exp`` that ``int()`` takes, text included; the lifetime check
    must refuse it by name, not fail on it (INTERNAL)."""
    claims = _claims(secure_gateway)
    claims["exp"] = str(claims["exp"])
    key = load_private_key(secure_gateway.pki.jwt_key("auditor"))
    token = pyjwt.encode(claims, key, algorithm="ES256", headers={"kid": "auditor-1"})
    stub = secure_gateway.stub("auditor", token)
    code, details = _refused(
        lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "exp and iat must be numbers" in details


def test_alg_none_is_refused(secure_gateway: SecureGateway) -> None:
    header = _b64(json.dumps({"alg": "none", "typ": "JWT", "kid": "auditor-1"}).encode())
    token = f"{header}.{_b64(json.dumps(_claims(secure_gateway)).encode())}."
    stub = secure_gateway.stub("auditor", token)
    code, _ = _refused(lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("secret_form", ["pem", "jwk"])
def test_hs256_signed_with_the_public_key_is_refused(
    secure_gateway: SecureGateway, secret_form: str
) -> None:
    public = load_private_key(secure_gateway.pki.jwt_key("auditor")).public_key()
    jwks = json.loads(secure_gateway.pki.jwks.read_text())
    secrets_by_form = {
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "jwk": json.dumps(next(k for k in jwks["keys"] if k["kid"] == "auditor-1")).encode(),
    }
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "auditor-1"}).encode())
    body = _b64(json.dumps(_claims(secure_gateway)).encode())
    mac = hmac.new(secrets_by_form[secret_form], f"{header}.{body}".encode(), hashlib.sha256)
    token = f"{header}.{body}.{_b64(mac.digest())}"
    stub = secure_gateway.stub("auditor", token)
    code, details = _refused(
        lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "ES256" in details


def test_a_token_signed_by_an_unknown_key_is_refused(
    secure_gateway: SecureGateway, tmp_path: Path
) -> None:
    other = init_dev_pki(tmp_path / "other", ())
    token = secure_gateway.token("auditor")
    # Same kid, other key: the signature cannot verify against the gateway's JWKS.
    forged = mint_token(
        load_private_key(other.jwt_key("auditor")),
        "auditor-1",
        subject="auditor",
        roles=["auditor"],
        issuer="https://idp.carbonlink.local",
        audience="carbonlink-gateway",
    )
    assert forged != token
    stub = secure_gateway.stub("auditor", forged)
    code, _ = _refused(lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_role_and_an_auditor_only_reads(secure_gateway: SecureGateway) -> None:
    before = _event_count(secure_gateway)
    auditor = secure_gateway.stub("auditor", secure_gateway.token("auditor"))
    code, details = _refused(lambda: auditor.SubmitTransfer(_signed(secure_gateway), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "exchange_operator" in details
    issuer = secure_gateway.stub("issuer", secure_gateway.token("issuer"))
    code, _ = _refused(lambda: issuer.Reconcile(gateway_pb2.ReconcileRequest(), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    code, _ = _refused(
        lambda: issuer.ListReconciliations(gateway_pb2.ListReconciliationsRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert auditor.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10).registries
    _no_transfers(secure_gateway)
    assert _event_count(secure_gateway) == before


def test_another_partys_account_is_refused(secure_gateway: SecureGateway) -> None:
    before = _event_count(secure_gateway)
    token = secure_gateway.token("exchange_operator", accounts=["hkmo:someone-else"])
    stub = secure_gateway.stub("exchange_operator", token)
    code, details = _refused(lambda: stub.SubmitTransfer(_signed(secure_gateway), timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "hkmo:hk-seller" in details
    retire = gateway_pb2.RetireRequest(
        request_id="r-1",
        account=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
        units=[model_pb2.UnitSelector(serial=VERRA_SERIAL)],
        beneficiary="someone",
    )
    covered = secure_gateway.stub(
        "covered_entity", secure_gateway.token("covered_entity", accounts=["shenzhen:mine"])
    )
    signed = secure_gateway.signer("covered_entity").sign("Retire", retire)
    code, _ = _refused(lambda: covered.Retire(signed, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    _no_transfers(secure_gateway)
    assert _event_count(secure_gateway) == before


def test_a_dry_run_is_for_who_could_submit_it_or_reads_everything(
    secure_gateway: SecureGateway,
) -> None:
    """EvaluateTransfer answers from the ledger: whether the source holds the units, what
    became of them.  Another party's account is refused as a submit of it would be."""
    evaluation = gateway_pb2.EvaluateTransferRequest(instruction=_transfer_request().instruction)
    outsider = secure_gateway.stub(
        "exchange_operator",
        secure_gateway.token("exchange_operator", accounts=["hkmo:someone-else"]),
    )
    code, details = _refused(lambda: outsider.EvaluateTransfer(evaluation, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "instruction.source" in details and "hkmo:hk-seller" in details
    issuer = secure_gateway.stub("issuer", secure_gateway.token("issuer"))
    code, _ = _refused(lambda: issuer.EvaluateTransfer(evaluation, timeout=10))
    assert code == grpc.StatusCode.PERMISSION_DENIED

    holder = secure_gateway.stub(
        "exchange_operator",
        secure_gateway.token("exchange_operator", accounts=["hkmo:hk-seller"]),
    )
    assert holder.EvaluateTransfer(evaluation, timeout=10).decision.allowed
    auditor = secure_gateway.stub("auditor", secure_gateway.token("auditor"))
    assert auditor.EvaluateTransfer(evaluation, timeout=10).decision.allowed


def test_a_replayed_nonce_is_refused(secure_gateway: SecureGateway) -> None:
    stub = _operator(secure_gateway)
    request = _signed(secure_gateway)
    assert stub.SubmitTransfer(request, timeout=60).state == model_pb2.TRANSFER_STATE_COMPLETED
    before = _event_count(secure_gateway)
    code, details = _refused(lambda: stub.SubmitTransfer(request, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "nonce" in details
    # A retry signed afresh is answered idempotently by its request id.
    again = stub.SubmitTransfer(_signed(secure_gateway), timeout=60)
    assert again.state == model_pb2.TRANSFER_STATE_COMPLETED
    assert _event_count(secure_gateway) == before


@pytest.mark.parametrize("skew", [timedelta(hours=-1), timedelta(hours=1)])
def test_a_stale_or_future_timestamp_is_refused(
    secure_gateway: SecureGateway, skew: timedelta
) -> None:
    request = _transfer_request()
    key = load_private_key(secure_gateway.pki.instruction_key("exchange_operator"))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    sign_request(
        SERVICE_PREFIX + "SubmitTransfer",
        request,
        key,
        "exchange_operator-1",
        audience=DEV_AUDIENCE,
        now=datetime.now(UTC) + skew,
    )
    code, details = _refused(lambda: _operator(secure_gateway).SubmitTransfer(request, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "window" in details
    _no_transfers(secure_gateway)


def test_bad_signatures_unknown_keys_and_others_keys_are_refused(
    secure_gateway: SecureGateway,
) -> None:
    stub = _operator(secure_gateway)
    tampered = _signed(secure_gateway)
    tampered.instruction.destination.account = "attacker"
    code, details = _refused(lambda: stub.SubmitTransfer(tampered, timeout=10))
    assert (code, "does not verify" in details) == (grpc.StatusCode.UNAUTHENTICATED, True)

    unknown = _signed(secure_gateway)
    unknown.signature.key_id = "nobody-1"
    code, details = _refused(lambda: stub.SubmitTransfer(unknown, timeout=10))
    assert (code, "unknown key" in details) == (grpc.StatusCode.UNAUTHENTICATED, True)

    # The covered entity's key, used by the exchange operator's token.
    foreign = _signed(secure_gateway, party="covered_entity")
    code, details = _refused(lambda: stub.SubmitTransfer(foreign, timeout=10))
    assert (code, "does not belong" in details) == (grpc.StatusCode.UNAUTHENTICATED, True)

    unsigned = _transfer_request()
    code, details = _refused(lambda: stub.SubmitTransfer(unsigned, timeout=10))
    assert (code, "signature" in details) == (grpc.StatusCode.INVALID_ARGUMENT, True)

    # Signed for Retire, replayed against SubmitTransfer: the method is in the signed bytes.
    cross = _transfer_request()
    key = load_private_key(secure_gateway.pki.instruction_key("exchange_operator"))
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    sign_request(
        SERVICE_PREFIX + "Retire", cross, key, "exchange_operator-1", audience=DEV_AUDIENCE
    )
    code, _ = _refused(lambda: stub.SubmitTransfer(cross, timeout=10))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    _no_transfers(secure_gateway)


def test_a_client_certificate_from_another_ca_is_refused(
    secure_gateway: SecureGateway, tmp_path: Path
) -> None:
    other = init_dev_pki(tmp_path / "other", ())
    token = secure_gateway.token("auditor")
    # Trusts the right CA (so the server is authenticated) but presents another CA's cert.
    channel = secure_channel(
        secure_gateway.target,
        secure_gateway.pki.ca_cert,
        other.client_cert("auditor"),
        other.client_key("auditor"),
        token,
    )
    stub = gateway_pb2_grpc.LinkageGatewayStub(channel)
    code, _ = _refused(lambda: stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10))
    assert code == grpc.StatusCode.UNAVAILABLE
    # Without any client certificate the handshake fails as well, even for health.
    bare = grpc.secure_channel(
        secure_gateway.target,
        grpc.ssl_channel_credentials(root_certificates=secure_gateway.pki.ca_cert.read_bytes()),
    )
    code, _ = _refused(
        lambda: health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest(), timeout=10)
    )
    assert code == grpc.StatusCode.UNAVAILABLE
    # And plaintext is not served at all.
    plain = grpc.insecure_channel(secure_gateway.target)
    code, _ = _refused(
        lambda: health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=5)
    )
    assert code == grpc.StatusCode.UNAVAILABLE


def test_the_gateway_refuses_a_registry_with_a_certificate_from_another_ca(
    secure_gateway: SecureGateway, tmp_path: Path
) -> None:
    """The gateway's channels authenticate the registries too (mutual TLS both ways)."""
    other: TlsLayout = init_dev_pki(tmp_path / "rogue", ("verra",))
    rogue = start_emulator(
        REGISTRIES["verra"].emulator(),
        credentials=server_credentials(
            other.registry_cert("verra"), other.registry_key("verra"), other.ca_cert
        ),
    )
    try:
        pki = secure_gateway.pki
        adapter = build_adapter(
            "verra",
            rogue.target,
            RetryPolicy(attempts=1),
            credentials=channel_credentials(pki.ca_cert, pki.gateway_cert, pki.gateway_key),
        )
        with pytest.raises(RegistryUnavailable):
            adapter.totals()
    finally:
        rogue.stop()


def test_a_batch_is_signed_as_a_whole(secure_gateway: SecureGateway) -> None:
    stub = _operator(secure_gateway)
    signer = secure_gateway.signer("exchange_operator")
    inner = _signed(secure_gateway, "batch-item-1")
    batch = gateway_pb2.SubmitTransfersRequest(request_id="batch-1", transfers=[inner])
    signer.sign("SubmitTransfers", batch)
    code, details = _refused(lambda: stub.SubmitTransfers(batch, timeout=10))
    assert (code, "transfers[0].signature" in details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        True,
    )
    batch.transfers[0].ClearField("signature")
    signer.sign("SubmitTransfers", batch)
    reply = stub.SubmitTransfers(batch, timeout=60)
    assert reply.results[0].transfer.state == model_pb2.TRANSFER_STATE_COMPLETED


@pytest.mark.parametrize(
    "nonce", ["N" * 128 + "\n", "N" * 16 + "\n"], ids=["longest-and-newline", "short-and-newline"]
)
def test_a_nonce_with_a_trailing_newline_is_refused_by_its_field(
    pki: TlsLayout, database_url: str, nonce: str
) -> None:
    """The nonce pattern matched up to a final newline (``$``): a longest nonce plus one was
    stored past its column (INTERNAL on PostgreSQL), a shorter one was another nonce than
    the same characters without it."""
    with running_secure_gateway(pki, database_url) as gateway:
        request = _transfer_request()
        key = load_private_key(gateway.pki.instruction_key("exchange_operator"))
        assert isinstance(key, ed25519.Ed25519PrivateKey)
        sign_request(
            SERVICE_PREFIX + "SubmitTransfer",
            request,
            key,
            "exchange_operator-1",
            audience=DEV_AUDIENCE,
            nonce=nonce,
        )
        code, details = _refused(lambda: _operator(gateway).SubmitTransfer(request, timeout=30))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "signature.nonce" in details
        _no_transfers(gateway)


def test_an_instruction_key_file_rewritten_unreadable_refuses_instructions(
    pki: TlsLayout, tmp_path: Path
) -> None:
    """An operator revoking a key writes the key file anew; written wrong (not JSON), the
    gateway must not go on trusting the keys it read before, the revoked one among them,
    without a word: it refuses signed instructions, naming the file, until it is fixed."""
    keys = tmp_path / "instruction-keys.json"
    keys.write_bytes(pki.instruction_keys.read_bytes())
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/g.db", instruction_keys_file=str(keys)
    ) as gateway:
        keys.write_text('{"keys": {', encoding="utf-8")
        code, details = _refused(
            lambda: _operator(gateway).SubmitTransfer(_signed(gateway), timeout=30)
        )
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert "instruction keys" in details
        _no_transfers(gateway)
        # Fixed, the file is read again.
        keys.write_bytes(pki.instruction_keys.read_bytes() + b"\n")
        done = _operator(gateway).SubmitTransfer(_signed(gateway, "trade-2"), timeout=60)
        assert done.state == model_pb2.TRANSFER_STATE_COMPLETED


def test_a_reconciliation_is_on_record_under_the_subject_who_asked(
    secure_gateway: SecureGateway,
) -> None:
    auditor = secure_gateway.stub("auditor", secure_gateway.token("auditor", subject="kpmg-1"))
    report = auditor.Reconcile(gateway_pb2.ReconcileRequest(), timeout=60)
    regulator = secure_gateway.stub("regulator", secure_gateway.token("regulator"))
    (run,) = regulator.ListReconciliations(
        gateway_pb2.ListReconciliationsRequest(), timeout=10
    ).reconciliations
    assert (run.id, run.requested_by, run.trigger) == (
        report.reconciliation_id,
        "kpmg-1",
        "request",
    )


def test_a_use_is_resolved_only_by_the_exchange_operator_of_its_account(
    secure_gateway: SecureGateway,
) -> None:
    """ResolveUse decides where units stand: exchange operators only, on the accounts
    their token names, with a signed request; holders, auditors and regulators are
    refused by role before anything is read (they read the use with GetUse)."""
    use = _retire_ten_venue_units(secure_gateway)

    def resolve(role: str, accounts: tuple[str, ...], signed: bool = True) -> grpc.StatusCode:
        request = gateway_pb2.ResolveUseRequest(
            request_id="resolve-1",
            name=use.name,
            action=model_pb2.USE_RESOLUTION_ACTION_SETTLE_MANUALLY,
            reason="settled at the venue, ticket HK-1",
        )
        if signed:
            secure_gateway.signer(role).sign("ResolveUse", request)
        stub = secure_gateway.stub(role, secure_gateway.token(role, accounts=accounts))
        code, _ = _refused(lambda: stub.ResolveUse(request, timeout=10))
        return code

    assert {
        role: resolve(role, OPERATOR_ACCOUNTS)
        for role in ("covered_entity", "issuer", "auditor", "regulator", "registry")
    } == dict.fromkeys(
        ("covered_entity", "issuer", "auditor", "regulator", "registry"),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    # Another member's operator: the use does not exist to it.
    assert resolve("exchange_operator", ("hkmo:someone-else",)) == grpc.StatusCode.NOT_FOUND
    # Unsigned, the holder's operator is refused as any unsigned instruction is.
    assert (
        resolve("exchange_operator", OPERATOR_ACCOUNTS, signed=False)
        == grpc.StatusCode.INVALID_ARGUMENT
    )
    # Signed, it reaches the use, which is completed: nothing to resolve.
    assert resolve("exchange_operator", OPERATOR_ACCOUNTS) == grpc.StatusCode.FAILED_PRECONDITION
