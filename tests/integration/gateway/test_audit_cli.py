"""``carbonlink trace``, ``audit verify|key|keygen`` and ``reconcile`` against a live gateway."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.cli import main
from tests.integration.gateway.conftest import VERRA_SERIAL, LiveGateway

START = parse_serial("verra", VERRA_SERIAL).id.serial_start


def _sell(gateway: LiveGateway) -> model_pb2.BlockId:
    transfer = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id="cli-trade",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="VCS", serial_start=START, serial_end=START + 49
                        )
                    )
                ],
            ),
        ),
        timeout=30,
    )
    assert transfer.state == model_pb2.TRANSFER_STATE_COMPLETED, transfer.failure_reason
    mirror: model_pb2.BlockId = transfer.credited_blocks[0].id
    return mirror


def test_trace_then_verify_offline(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = _sell(live_gateway)
    target = f"127.0.0.1:{live_gateway.server.port}"
    bundle = tmp_path / "bundle.json"
    assert (
        main(
            [
                "trace",
                "--registry",
                "verra",
                VERRA_SERIAL,
                "--out",
                str(bundle),
                "--target",
                target,
                "--insecure",
            ]
        )
        == 0
    )
    key = live_gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest()).verifier_key
    key_file = tmp_path / "log.vkey"
    key_file.write_text(key + "\n")
    capsys.readouterr()

    assert main(["audit", "verify", str(bundle), "--log-key", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("OK: ") and "issuance 1" in out and "credit 1" in out
    assert main(["audit", "verify", str(bundle), "--log-key", key]) == 0
    capsys.readouterr()

    document = json.loads(bundle.read_text())
    event = document["events"][-1]
    body = json.loads(base64.b64decode(event["leaf_data"]))
    body["account"] = "someone-else"
    event["leaf_data"] = base64.b64encode(json.dumps(body).encode()).decode()
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(document))
    assert main(["audit", "verify", str(forged), "--log-key", key]) == 1
    assert f"FAILED: event {event['index']}: not in the log" in capsys.readouterr().err

    assert main(["audit", "verify", str(bundle), "--log-key", "no+such+key"]) == 2
    capsys.readouterr()

    block = f"VCS/{mirror.serial_series}:{mirror.serial_start}-{mirror.serial_start + 9}"
    assert main(["trace", "--block", block, "--target", target, "--insecure"]) == 0
    summary = capsys.readouterr().out
    assert "issuance" in summary and "credit" in summary and "shenzhen/sz-buyer" in summary
    assert (
        main(["trace", "--registry", "verra", "bad-serial", "--target", target, "--insecure"]) == 2
    )


def test_reconcile_command(live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]) -> None:
    _sell(live_gateway)
    target = f"127.0.0.1:{live_gateway.server.port}"
    assert main(["reconcile", "--json", "--target", target, "--insecure"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["consistent"] is True and report["phase"] == "completed"


def test_keygen_and_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pem = tmp_path / "log.pem"
    assert main(["audit", "keygen", str(pem)]) == 0
    assert pem.stat().st_mode & 0o077 == 0
    assert main(["audit", "keygen", str(pem)]) == 2
    capsys.readouterr()
    assert main(["audit", "key", "--signing-key", str(pem), "--origin", "x.example/log"]) == 0
    assert capsys.readouterr().out.startswith("x.example/log+")
