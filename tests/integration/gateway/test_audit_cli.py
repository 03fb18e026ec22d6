"""``carbonlink trace``, ``audit verify|key|keygen`` and ``reconcile`` against a live gateway."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from adapters._pb.carbonlink.v1 import gateway_pb2, model_pb2
from adapters.serials import parse_serial
from gateway.audit_offline import write_atomically
from gateway.cli import main
from gateway.log_keys import write_new_key
from registry_bridge.signed_note import Checkpoint, NoteSigner, generate_private_key_pem
from tests.integration.gateway.conftest import (
    VERRA_SERIAL,
    LinkedRegistries,
    LiveGateway,
    running_gateway,
)
from tests.loopback import HOST

START = parse_serial("verra", VERRA_SERIAL).id.serial_start


def _sell(gateway: LiveGateway, offset: int = 0) -> model_pb2.BlockId:
    transfer = gateway.stub.SubmitTransfer(
        gateway_pb2.SubmitTransferRequest(
            request_id=f"cli-trade-{offset}",
            instruction=model_pb2.TransferInstruction(
                source=model_pb2.AccountRef(registry="hkmo", account="hk-seller"),
                destination=model_pb2.AccountRef(registry="shenzhen", account="sz-buyer"),
                units=[
                    model_pb2.UnitSelector(
                        block=model_pb2.BlockId(
                            program="VCS",
                            serial_start=START + offset,
                            serial_end=START + offset + 49,
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
    target = f"{HOST}:{live_gateway.server.port}"
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

    # The bundle is JSON lines: its head, then each page's note and the page's events.
    lines = bundle.read_text().splitlines(keepends=True)
    head, *pages = [json.loads(line) for line in lines]
    assert head["format"] == "carbonlink-audit-bundle/4" and "checkpoint" in head
    events = [n for n, record in enumerate(pages, start=1) if "index" in record]
    assert "trace_note" in pages[0] and len(events) >= 3
    # An event changed at the start, in the middle or at the end fails, named.
    for line in (events[0], events[len(events) // 2], events[-1]):
        event = json.loads(lines[line])
        body = json.loads(base64.b64decode(event["leaf_data"]))
        body["account"] = "someone-else"
        event["leaf_data"] = base64.b64encode(json.dumps(body).encode()).decode()
        forged = tmp_path / "forged.jsonl"
        forged.write_text("".join([*lines[:line], json.dumps(event) + "\n", *lines[line + 1 :]]))
        assert main(["audit", "verify", str(forged), "--log-key", key]) == 1
        assert f"FAILED: event {event['index']}: not in the log" in capsys.readouterr().err

    # A bundle written before bundles were lines, one JSON document, still verifies.
    document = {
        **{k: v for k, v in head.items() if k != "format"},
        "format": "carbonlink-audit-bundle/3",
        "trace_notes": [r["trace_note"] for r in pages if "trace_note" in r],
        "events": [r for r in pages if "index" in r],
    }
    older = tmp_path / "older.json"
    older.write_text(json.dumps(document, indent=2))
    assert main(["audit", "verify", str(older), "--log-key", key]) == 0
    assert capsys.readouterr().out.startswith("OK: ")

    assert main(["audit", "verify", str(bundle), "--log-key", "no+such+key"]) == 2
    capsys.readouterr()

    block = f"VCS/{mirror.serial_series}:{mirror.serial_start}-{mirror.serial_start + 9}"
    assert main(["trace", "--block", block, "--target", target, "--insecure"]) == 0
    summary = capsys.readouterr().out
    assert "issuance" in summary and "credit" in summary and "shenzhen/sz-buyer" in summary
    assert (
        main(["trace", "--registry", "verra", "bad-serial", "--target", target, "--insecure"]) == 2
    )


def test_an_output_file_that_cannot_be_written_is_a_usage_error(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", f"{HOST}:{live_gateway.server.port}", "--insecure"]
    missing = tmp_path / "no-such-dir" / "out"
    argv = ["trace", "--registry", "verra", VERRA_SERIAL, "--out", str(missing)]
    assert main([*argv, *target]) == 2
    assert f"carbonlink trace: cannot write {missing}" in capsys.readouterr().err

    _sell(live_gateway)
    first = live_gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    kept = tmp_path / "kept.note"
    kept.write_text(first.signed_note)
    _sell(live_gateway, offset=500)
    argv = ["audit", "consistency", str(kept), "--log-key", first.verifier_key]
    assert main([*argv, "--save", str(missing), *target]) == 2
    err = capsys.readouterr().err
    assert "the log extends the kept checkpoint" in err and f"saved to {missing}" in err


class _DiskFullAfterHalf:
    """A file being written whose disk fills half-way through the first write."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def __enter__(self) -> _DiskFullAfterHalf:
        return self

    def __exit__(self, *_: object) -> None:
        self._handle.close()

    def fileno(self) -> int:
        fileno: int = self._handle.fileno()
        return fileno

    def write(self, text: str) -> int:
        self._handle.write(text[: len(text) // 2])
        self._handle.flush()
        raise OSError(28, "No space left on device")


def test_a_save_that_fails_leaves_the_kept_checkpoint_as_it_was(
    live_gateway: LiveGateway,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The auditor's usual rotation: save the latest over the checkpoint kept. The disk
    # fails as the new one lands: the kept one must survive, whole.
    target = ["--target", f"{HOST}:{live_gateway.server.port}", "--insecure"]
    _sell(live_gateway)
    first = live_gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    notes = tmp_path / "notes"
    notes.mkdir()
    kept = notes / "kept.note"
    kept.write_text(first.signed_note)
    _sell(live_gateway, offset=500)

    real_open = io.open

    def half_written(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return _DiskFullAfterHalf(handle) if "w" in mode else handle

    monkeypatch.setattr(io, "open", half_written)
    argv = ["audit", "consistency", str(kept), "--log-key", first.verifier_key]
    assert main([*argv, "--save", str(kept), *target]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert kept.read_text() == first.signed_note
    assert sorted(p.name for p in notes.iterdir()) == ["kept.note"]


def test_reconcile_command(live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]) -> None:
    _sell(live_gateway)
    target = f"{HOST}:{live_gateway.server.port}"
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


def test_the_log_still_extends_a_kept_checkpoint(
    live_gateway: LiveGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = ["--target", f"{HOST}:{live_gateway.server.port}", "--insecure"]
    _sell(live_gateway)
    first = live_gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    key = first.verifier_key
    kept = tmp_path / "kept.note"
    kept.write_text(first.signed_note)
    assert main(["audit", "consistency", str(kept), "--log-key", key, *target]) == 0
    assert f"extends the checkpoint of size {first.tree_size}" in capsys.readouterr().out

    _sell(live_gateway, offset=500)  # the log grows
    latest = tmp_path / "latest.note"
    argv = ["audit", "consistency", str(kept), "--log-key", key, "--save", str(latest)]
    assert main([*argv, *target]) == 0
    out = capsys.readouterr().out
    grown = live_gateway.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest())
    assert grown.tree_size > first.tree_size and f"now at size {grown.tree_size}" in out
    assert latest.read_text() == grown.signed_note


def test_a_rewritten_log_fails_against_a_kept_checkpoint(
    database_url: str,
    registries: LinkedRegistries,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registries.seed_venue()  # imported at start: the log holds its issuance
    key_file = tmp_path / "log.pem"
    write_new_key(key_file)
    with running_gateway(database_url, registries, log_signing_key_file=str(key_file)) as gw:
        target = ["--target", gw.target, "--insecure"]
        latest = gw.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
        signer = NoteSigner.from_pem(latest.origin, key_file.read_bytes())
        key = ["--log-key", latest.verifier_key]
        # What an auditor kept, signed by the log's own key, that the log no longer extends.
        for size, message in [
            (latest.tree_size, "two different roots for size"),
            (max(1, latest.tree_size - 1), "FAILED"),
        ]:
            kept = tmp_path / f"kept-{size}.note"
            kept.write_text(signer.sign(Checkpoint(latest.origin, size, b"\x07" * 32)))
            assert main(["audit", "consistency", str(kept), *key, *target]) == 1
            assert message in capsys.readouterr().err
        # A kept checkpoint whose signature is not the log's is no evidence of anything.
        stranger = tmp_path / "stranger.note"
        other = NoteSigner.from_pem(latest.origin, generate_private_key_pem())
        stranger.write_text(other.sign(Checkpoint(latest.origin, 1, b"\x07" * 32)))
        assert main(["audit", "consistency", str(stranger), *key, *target]) == 2
        assert "is not signed by" in capsys.readouterr().err


def test_a_log_shorter_than_a_kept_checkpoint_fails_as_rolled_back(
    database_url: str,
    registries: LinkedRegistries,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    registries.seed_venue()
    key_file = tmp_path / "log.pem"
    write_new_key(key_file)
    with running_gateway(database_url, registries, log_signing_key_file=str(key_file)) as gw:
        latest = gw.stub.GetCheckpoint(gateway_pb2.GetCheckpointRequest(), timeout=10)
        signer = NoteSigner.from_pem(latest.origin, key_file.read_bytes())
        # What an auditor kept before the gateway's database was put back to an older copy:
        # a checkpoint the log's own key signed, of more events than the log now holds.
        kept = tmp_path / "kept.note"
        later = latest.tree_size + 5
        kept.write_text(signer.sign(Checkpoint(latest.origin, later, b"\x07" * 32)))
        argv = ["audit", "consistency", str(kept), "--log-key", latest.verifier_key]
        assert main([*argv, "--target", gw.target, "--insecure"]) == 1
        err = capsys.readouterr().err
        # The log lost events the kept checkpoint vouched for: a failure of the log, said
        # as such, not a complaint about the sizes the command itself asked the gateway for.
        assert "FAILED" in err, err
        assert f"size {latest.tree_size}" in err and f"size {later}" in err, err
        assert "INVALID_ARGUMENT" not in err, err


def test_the_traced_history_names_the_units_of_each_event(
    live_gateway: LiveGateway, capsys: pytest.CaptureFixture[str]
) -> None:
    mirror = _sell(live_gateway)
    end = parse_serial("verra", VERRA_SERIAL).id.serial_end
    target = ["--target", f"{HOST}:{live_gateway.server.port}", "--insecure"]
    capsys.readouterr()
    assert main(["trace", "--registry", "verra", VERRA_SERIAL, *target]) == 0
    lines = {
        line.split()[1]: line for line in capsys.readouterr().out.splitlines()[1:] if line.strip()
    }
    # After a split, one event's holder and status alone do not say which units it moved:
    # each line names its block, and a split the pieces it cut.
    assert f"VCS:{START}-{end}" in lines["issuance"], lines
    assert f"VCS:{START}-{START + 49}, VCS:{START + 50}-{end}" in lines["split"], lines
    assert f"VCS:{START}-{START + 49}" in lines["lock"], lines
    mirror_block = f"VCS/{mirror.serial_series}:{mirror.serial_start}-{mirror.serial_end}"
    assert mirror_block in lines["credit"], lines


def test_a_bundle_whose_trace_fails_half_way_leaves_the_file_as_it_was(tmp_path: Path) -> None:
    """``trace --out`` writes the pages as they come: a page the gateway refuses after
    some were written leaves the file as it was, not a bundle cut short."""
    kept = tmp_path / "bundle.jsonl"
    kept.write_text("an earlier bundle\n")

    def refused_after_one_page() -> Iterator[str]:
        yield '{"format":"carbonlink-audit-bundle/4"}\n'
        raise ValueError("page 2 does not go on from the one before")

    with pytest.raises(ValueError, match="page 2"):
        write_atomically(kept, refused_after_one_page())
    assert kept.read_text() == "an earlier bundle\n"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle.jsonl"]
