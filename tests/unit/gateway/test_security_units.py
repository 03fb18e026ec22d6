"""Security units: the role table, the config's secure default, canonical bytes, buckets."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from adapters._pb.carbonlink.v1 import gateway_pb2
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.security.certs import init_dev_pki
from gateway.security.instructions import SIGNED_METHODS, canonical_bytes, sign_request
from gateway.security.interceptor import rate_cost
from gateway.security.policy import (
    RPC_ROLES,
    acting_as,
    authorize,
    current_caller,
    may_read_migration,
    proving_accounts,
)
from gateway.security.ratelimit import RateLimited, RateLimiter
from gateway.security.settings import warn_if_insecure
from gateway.security.tokens import Principal
from registry_bridge.errors import PermissionDenied
from registry_bridge.idempotency import LOCAL_CALLER
from tests.logs import logged_events


def test_every_rpc_declares_its_roles_and_every_mover_is_signed() -> None:
    service = gateway_pb2.DESCRIPTOR.services_by_name["LinkageGateway"]
    assert set(RPC_ROLES) == {m.name for m in service.methods}
    for method in SIGNED_METHODS:
        assert "auditor" not in RPC_ROLES[method]
        request = service.methods_by_name[method].input_type
        assert "signature" in request.fields_by_name
    readers = {m for m, roles in RPC_ROLES.items() if "auditor" in roles}
    assert readers.isdisjoint({"SubmitTransfer", "Retire", "Surrender", "ListProject"})


def test_security_is_on_by_default_and_names_the_missing_file() -> None:
    with pytest.raises(ConfigError, match="tls_cert_file: required unless insecure"):
        load_config(environ={})
    with pytest.raises(ConfigError, match="insecure: expected true or false"):
        load_config(environ={"CARBONLINK_INSECURE": "maybe"})
    assert load_config(environ={"CARBONLINK_INSECURE": "yes"}).insecure


def test_a_tls_dir_configures_everything(tmp_path: Path) -> None:
    layout = init_dev_pki(tmp_path / "pki", ("verra",))
    config = load_config(file=layout.gateway_config, environ={})
    assert not config.insecure
    assert config.tls_ca_file == str(layout.ca_cert)
    with pytest.raises(ConfigError, match=r"jwks_file: .* is not a file"):
        load_config(file=layout.gateway_config, environ={"CARBONLINK_JWKS_FILE": "/nope"})
    assert (layout.ca_key.stat().st_mode & 0o777) == 0o600


def test_insecure_mode_warns_loudly() -> None:
    with logged_events() as logs:
        warn_if_insecure(GatewayConfig(insecure=True))
        warn_if_insecure(GatewayConfig())
    assert [(e["event"], e["log_level"]) for e in logs] == [("INSECURE_MODE", "warning")]


def test_canonical_bytes_cover_everything_but_the_signature_bytes() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    request = gateway_pb2.RetireRequest(request_id="r", beneficiary="b")
    method = "/carbonlink.v1.LinkageGateway/Retire"
    sign_request(
        method,
        request,
        key,
        "k-1",
        audience="carbonlink-sz-prod",
        now=datetime(2026, 1, 1, tzinfo=UTC),
        nonce="n" * 16,
    )
    signed = canonical_bytes(method, request)
    key.public_key().verify(request.signature.signature, signed)
    assert b"k-1" in signed and b"n" * 16 in signed and b"carbonlink-sz-prod" in signed
    assert request.signature.signature not in signed
    assert canonical_bytes("/carbonlink.v1.LinkageGateway/Surrender", request) != signed


def test_token_buckets_refill() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(RateLimited):
        limiter.take("a")
    limiter.take("b")
    now[0] = 0.5
    limiter.take("a")


def test_a_call_costing_more_than_the_bucket_holds_goes_through_and_its_debt_is_waited() -> None:
    now = [0.0]
    limiter = RateLimiter(2.0, 2, clock=lambda: now[0])
    limiter.take("batcher", 5)  # a batch of five with a burst of two: in, owing three
    with pytest.raises(RateLimited, match=r"retry in 2 s") as refused:
        limiter.take("batcher")
    assert refused.value.retry_after_seconds == pytest.approx(2.0)
    now[0] = 1.9
    with pytest.raises(RateLimited):
        limiter.take("batcher")
    now[0] = 2.0  # four tokens refilled: the three owed and one to spend
    limiter.take("batcher")
    limiter.take("other", 2)  # another client's budget is its own
    with pytest.raises(ValueError, match="at least one"):
        limiter.take("other", 0)


def test_a_batch_costs_one_call_per_transfer_and_every_other_call_one() -> None:
    batch = gateway_pb2.SubmitTransfersRequest(
        transfers=[gateway_pb2.SubmitTransferRequest(request_id=str(i)) for i in range(7)]
    )
    assert rate_cost("SubmitTransfers", batch) == 7
    assert rate_cost("SubmitTransfers", gateway_pb2.SubmitTransfersRequest()) == 1
    assert rate_cost("SubmitTransfer", gateway_pb2.SubmitTransferRequest()) == 1
    assert rate_cost("ListRegistries", gateway_pb2.ListRegistriesRequest()) == 1


def _principal(role: str, entities: tuple[str, ...] = ()) -> Principal:
    return Principal(role, frozenset({role}), frozenset(), frozenset(entities))


def test_an_entity_plans_and_reads_only_its_own_migration() -> None:
    plan = gateway_pb2.PlanMigrationRequest(entity_id="steel-01")
    authorize("PlanMigration", _principal("covered_entity", ("steel-01",)), plan)
    with pytest.raises(PermissionDenied, match="entity_id: the caller's token does not name"):
        authorize("PlanMigration", _principal("covered_entity", ("steel-02",)), plan)
    authorize("PlanMigration", _principal("auditor"), plan)  # the auditor plans any
    assert may_read_migration("steel-01")  # no caller: the gateway runs insecure
    with acting_as(_principal("covered_entity", ("steel-01",))):
        assert may_read_migration("steel-01") and not may_read_migration("steel-02")
    with acting_as(_principal("exchange_operator")):
        assert not may_read_migration("steel-01")
    with acting_as(_principal("regulator")):
        assert may_read_migration("steel-02")


def test_request_ids_are_in_the_token_subjects_space_and_the_local_one_without_a_token() -> None:
    assert current_caller() == LOCAL_CALLER  # no caller: the gateway runs insecure
    desk = Principal("hkex-desk-7", frozenset({"exchange_operator"}), frozenset(), frozenset())
    with acting_as(desk):
        assert current_caller() == "hkex-desk-7"
        with acting_as(_principal("regulator")):
            assert current_caller() == "regulator"
        assert current_caller() == "hkex-desk-7"
    assert current_caller() == LOCAL_CALLER


def test_an_issuer_proves_a_claim_to_a_project_by_its_tokens_accounts_a_regulator_by_none() -> None:
    assert proving_accounts() is None  # no caller: the gateway runs insecure
    desk = Principal("verra-desk", frozenset({"issuer"}), frozenset({"verra:desk"}), frozenset())
    with acting_as(desk):
        assert proving_accounts() == frozenset({"verra:desk"})
        # An issuer that is also an auditor still proves: reading everything is no claim.
        with acting_as(Principal("a", frozenset({"issuer", "auditor"}), frozenset(), frozenset())):
            assert proving_accounts() == frozenset()
        with acting_as(_principal("regulator")):
            assert proving_accounts() is None
        assert proving_accounts() == frozenset({"verra:desk"})
    assert proving_accounts() is None
