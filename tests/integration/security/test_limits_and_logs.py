"""Rate limits per client identity, key rotation, and tokens never reaching a log line."""

from __future__ import annotations

import io
import json
import shutil
import time
from pathlib import Path

import grpc
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from structlog.testing import capture_logs

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from bench.stack import transfer_request
from gateway.logging_setup import configure_logging
from gateway.security.certs import jwk_of
from gateway.security.layout import DEV_AUDIENCE, DEV_ISSUER, TlsLayout
from gateway.security.tokens import mint_token
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    running_secure_gateway,
)


def test_a_client_over_its_rate_gets_resource_exhausted_with_quota_failure(
    pki: TlsLayout, tmp_path: Path
) -> None:
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/g.db", rate_limit_burst=3, rate_limit_per_second=0.01
    ) as gateway:
        greedy = gateway.stub("auditor", gateway.token("auditor", subject="greedy"))
        for _ in range(3):
            greedy.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        with pytest.raises(grpc.RpcError) as caught:
            greedy.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        status = rpc_status.from_call(caught.value)
        assert status is not None
        quota = error_details_pb2.QuotaFailure()
        assert status.details[0].Unpack(quota)
        assert quota.violations[0].subject == "clients/greedy"
        # Another client is not starved by the greedy one.
        other = gateway.stub("auditor", gateway.token("auditor", subject="patient"))
        assert other.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10).registries


def test_a_batch_spends_a_call_per_transfer_and_its_client_then_waits_off_the_rest(
    pki: TlsLayout, tmp_path: Path
) -> None:
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/g.db", rate_limit_burst=3, rate_limit_per_second=0.01
    ) as gateway:
        token = gateway.token("exchange_operator", accounts=["hkmo:hk-seller"])
        batcher = gateway.stub("exchange_operator", token)
        first = parse_serial("verra", VERRA_SERIAL).id.serial_start
        batch = gateway_pb2.SubmitTransfersRequest(
            request_id="batch-of-five",
            transfers=[transfer_request(f"item-{i}", first + i) for i in range(5)],
        )
        gateway.signer("exchange_operator").sign("SubmitTransfers", batch)
        # Larger than the burst, yet let in: the client had budget left.
        reply = batcher.SubmitTransfers(batch, timeout=60)
        assert [r.transfer.state for r in reply.results] == [model_pb2.TRANSFER_STATE_COMPLETED] * 5
        # Five calls spent of a burst of three: the client owes two, and waits them off.
        with pytest.raises(grpc.RpcError) as caught:
            batcher.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "a batch counts one call per transfer" in (caught.value.details() or "")
        status = rpc_status.from_call(caught.value)
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert any(detail.Unpack(retry) for detail in status.details)
        # Three tokens to refill at 0.01/s: about 300 s.
        assert 290 <= retry.retry_delay.ToTimedelta().total_seconds() <= 300


def test_a_new_token_key_is_picked_up_without_a_restart(pki: TlsLayout, tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    shutil.copy(pki.jwks, jwks)
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/g.db", jwks_file=str(jwks)) as gateway:
        new_key = ec.generate_private_key(ec.SECP256R1())
        token = mint_token(
            new_key,
            "auditor-2",
            subject="auditor",
            roles=["auditor"],
            issuer=DEV_ISSUER,
            audience=DEV_AUDIENCE,
        )
        stub = gateway.stub("auditor", token)
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        document = json.loads(jwks.read_text())
        document["keys"].append(jwk_of(new_key, "auditor-2"))
        jwks.write_text(json.dumps(document))
        assert stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10).registries
        # Retiring the old key: its tokens stop working.
        document["keys"] = [k for k in document["keys"] if k["kid"] != "auditor-1"]
        jwks.write_text(json.dumps(document, indent=1))
        old = gateway.stub("auditor", gateway.token("auditor"))
        with pytest.raises(grpc.RpcError) as caught:
            old.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_tokens_and_signatures_never_reach_the_logs(pki: TlsLayout, tmp_path: Path) -> None:
    sink = io.StringIO()
    configure_logging("debug", "json", stream=sink)
    try:
        with (
            capture_logs() as captured,
            running_secure_gateway(pki, f"sqlite:///{tmp_path}/g.db") as gateway,
        ):
            good = gateway.token("auditor")
            expired = gateway.token("auditor", now=0, ttl_seconds=60)
            gateway.stub("auditor", good).ListRegistries(
                gateway_pb2.ListRegistriesRequest(), timeout=10
            )
            with pytest.raises(grpc.RpcError):
                gateway.stub("auditor", expired).ListRegistries(
                    gateway_pb2.ListRegistriesRequest(), timeout=10
                )
    finally:
        configure_logging("info", "json")
    # Nothing handed to a logger carries a token (capture_logs bypasses the processors).
    text = repr(captured)
    assert captured and good not in text and expired not in text
    assert good.split(".")[2] not in text
    assert any(e.get("event") == "rpc_failed" for e in captured)


def test_the_redaction_processor_scrubs_what_a_library_might_log() -> None:
    sink = io.StringIO()
    configure_logging("debug", "json", stream=sink)
    try:
        import structlog

        key = ec.generate_private_key(ec.SECP256R1())
        token = mint_token(key, "k", subject="s", roles=["auditor"], issuer="i", audience="a")
        log = structlog.get_logger("test")
        log.info("call", authorization=f"Bearer {token}", detail=f"metadata had {token}")
        log.info(
            "oops", note="-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMG\n-----END PRIVATE KEY-----"
        )
    finally:
        configure_logging("info", "json")
    output = sink.getvalue()
    assert token not in output and token.split(".")[1] not in output
    assert "MIGHAgEAMBMG" not in output
    assert output.count("[redacted]") == 3


@pytest.mark.parametrize("keys", [None, 5, {"kid": "auditor-1"}])
def test_a_jwks_file_whose_keys_are_not_a_list_refuses_tokens_as_unauthenticated(
    pki: TlsLayout, tmp_path: Path, keys: object
) -> None:
    """A JWKS file rewritten with ``keys`` not a list (a botched rotation) answers every call
    UNAUTHENTICATED naming the key file, as an unparsable file does; before, iterating it
    raised a TypeError that every caller got as INTERNAL."""
    jwks = tmp_path / "jwks.json"
    shutil.copy(pki.jwks, jwks)
    with running_secure_gateway(pki, f"sqlite:///{tmp_path}/g.db", jwks_file=str(jwks)) as gateway:
        stub = gateway.stub("auditor", gateway.token("auditor"))
        assert stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10).registries
        jwks.write_text(json.dumps({"keys": keys}))
        with pytest.raises(grpc.RpcError) as caught:
            stub.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=10)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token keys unavailable" in (caught.value.details() or "")


def _pending_transfer(gateway: SecureGateway) -> str:
    """A transfer from the seller's account that stays unfinished: its destination registry
    is down. Returns its name."""
    gateway.emulators["shenzhen"].stop()
    origin = parse_serial("verra", VERRA_SERIAL).id
    request = gateway_pb2.SubmitTransferRequest(
        request_id="pending-1",
        instruction=model_pb2.TransferInstruction(
            source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
            destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
            units=[
                model_pb2.UnitSelector(
                    block=model_pb2.BlockId(
                        program=origin.program.value,
                        serial_start=origin.serial_start,
                        serial_end=origin.serial_start + 9,
                    )
                )
            ],
            intended_use="holding",
        ),
    )
    gateway.signer("exchange_operator").sign("SubmitTransfer", request)
    operator = gateway.stub(
        "exchange_operator", gateway.token("exchange_operator", accounts=["hkmo:hk-seller"])
    )
    transfer = operator.SubmitTransfer(request, timeout=60)
    assert transfer.state not in (
        model_pb2.TRANSFER_STATE_COMPLETED,
        model_pb2.TRANSFER_STATE_REJECTED,
        model_pb2.TRANSFER_STATE_ROLLED_BACK,
    )
    return str(transfer.name)


def test_one_client_watching_cannot_hold_every_worker(pki: TlsLayout, tmp_path: Path) -> None:
    """Streams hold a worker each while they last: one client opening as many as the
    gateway has workers (well inside its call rate) would starve every other client. A
    client holds at most a quarter of the workers in streams; past that its watch is
    refused RESOURCE_EXHAUSTED, and the others are still served."""
    with running_secure_gateway(
        pki, f"sqlite:///{tmp_path}/g.db", max_workers=4, registry_retry_attempts=1
    ) as gateway:
        name = _pending_transfer(gateway)
        watcher = gateway.stub(
            "exchange_operator",
            gateway.token("exchange_operator", subject="watcher", accounts=["hkmo:hk-seller"]),
        )
        streams = []
        refused = []
        for _ in range(4):
            stream = watcher.WatchTransfer(gateway_pb2.WatchTransferRequest(name=name), timeout=30)
            try:
                next(stream)
                streams.append(stream)
            except grpc.RpcError as exc:
                refused.append(exc)
        try:
            assert len(streams) == 1
            assert {exc.code() for exc in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
            other = gateway.stub("auditor", gateway.token("auditor", subject="patient"))
            assert other.ListRegistries(gateway_pb2.ListRegistriesRequest(), timeout=5).registries
            # A stream ended gives its place back.
            streams.pop().cancel()
            deadline = time.monotonic() + 10
            while True:
                stream = watcher.WatchTransfer(
                    gateway_pb2.WatchTransferRequest(name=name), timeout=30
                )
                try:
                    next(stream)
                    streams.append(stream)
                    break
                except grpc.RpcError as exc:
                    assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                    assert time.monotonic() < deadline
                    time.sleep(0.2)
        finally:
            for stream in streams:
                stream.cancel()
