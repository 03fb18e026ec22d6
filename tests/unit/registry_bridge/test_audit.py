"""The offline audit verifier on hand-built logs: each kind of bad history is refused."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from registry_bridge import merkle
from registry_bridge.audit import AuditFailure, Bundle, BundleEvent, verify_bundle
from registry_bridge.event_log import canonical_json
from registry_bridge.model import BlockId, Program
from registry_bridge.signed_note import (
    Checkpoint,
    NoteError,
    NoteSigner,
    generate_private_key_pem,
    open_checkpoint,
    parse_verifier_key,
)

ORIGIN = "test.example/log"
BLOCK = BlockId(Program.VCS, "", 100, 199)


def _block(start: int, end: int, series: str = "") -> dict[str, Any]:
    return {"program": "VCS", "serial_series": series, "serial_start": start, "serial_end": end}


def _row(kind: str, block: dict[str, Any], status: str, **extra: Any) -> dict[str, Any]:
    body = {
        "kind": kind,
        "block": block,
        "origin": extra.pop("origin", block),
        "registry": extra.pop("registry", "verra"),
        "account": extra.pop("account", "a"),
        "status": status,
        "mirror": extra.pop("mirror", False),
        "row": 1,
    }
    body.update(extra)
    return body


HONEST = [
    _row("issuance", _block(100, 199), "active"),
    _row("split", _block(100, 199), "active", pieces=[_block(100, 149), _block(150, 199)]),
    _row("lock", _block(100, 149), "locked", previous_status="active"),
    _row("retire", _block(100, 149), "retired", previous_status="locked", beneficiary="B Co."),
]


def _bundle(
    bodies: list[dict[str, Any]], signer: NoteSigner, keep: list[int] | None = None
) -> Bundle:
    payloads = [canonical_json({**b, "index": i}) for i, b in enumerate(bodies)]
    leaves = [hashlib.sha256(b"\x00" + p).digest() for p in payloads]
    size = len(leaves)
    root = merkle.root_from_leaves(leaves)

    def proof(index: int) -> tuple[bytes, ...]:
        return tuple(
            merkle.root_from_leaves(leaves[a:b]) for a, b in merkle.inclusion_plan(index, size)
        )

    chosen = range(size) if keep is None else keep
    return Bundle(
        registry="verra",
        serial="",
        query=BLOCK,
        checkpoint=signer.sign(Checkpoint(ORIGIN, size, root)),
        log_key=signer.verifier.encode(),
        events=tuple(BundleEvent(i, payloads[i], proof(i)) for i in chosen),
    )


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.from_pem(ORIGIN, generate_private_key_pem())


def test_an_honest_history_verifies(signer: NoteSigner) -> None:
    report = verify_bundle(_bundle(HONEST, signer), signer.verifier)
    assert report.events == 4 and report.tree_size == 4
    assert [(b.quantity, who) for b, who in report.retirements] == [(50, "B Co.")]
    assert {(b.serial_start, s) for b, _, _, s in report.final} == {
        (100, "retired"),
        (150, "active"),
    }


def test_the_note_format_round_trips_and_names_the_key(signer: NoteSigner) -> None:
    note = signer.sign(Checkpoint(ORIGIN, 7, b"\x01" * 32))
    body, signature = note.split("\n\n")
    assert body.splitlines() == [ORIGIN, "7", "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE="]
    assert signature.startswith(f"\u2014 {ORIGIN} ")
    key = parse_verifier_key(signer.verifier.encode())
    assert (
        key.key_id
        == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + signer.verifier.public_key).digest()[:4]
    )
    assert open_checkpoint(note, key) == Checkpoint(ORIGIN, 7, b"\x01" * 32)
    with pytest.raises(NoteError):
        open_checkpoint(note.replace("\n7\n", "\n8\n"), key)


@pytest.mark.parametrize(
    ("bodies", "keep", "reason"),
    [
        (
            [*HONEST, _row("lock", _block(100, 149), "locked", previous_status="retired")],
            None,
            "after reaching the terminal state retired",
        ),
        (
            [
                HONEST[0],
                _row(
                    "split", _block(100, 199), "active", pieces=[_block(100, 149), _block(151, 199)]
                ),
            ],
            None,
            "do not tile it",
        ),
        (HONEST, [1, 2, 3], "have no issuance"),
        (HONEST, [0, 1, 3], "the history left it active"),
        (
            [
                HONEST[0],
                _row(
                    "credit",
                    _block(1, 10, "sz-mirror"),
                    "active",
                    mirror=True,
                    origin=_block(100, 120),
                    registry="shenzhen",
                ),
            ],
            None,
            "units not conserved",
        ),
        ([HONEST[0], HONEST[0]], None, "already live"),
    ],
    ids=["after-terminal", "split-gap", "no-issuance", "missing-event", "mirror-size", "twice"],
)
def test_bad_histories_are_refused(
    signer: NoteSigner, bodies: list[dict[str, Any]], keep: list[int] | None, reason: str
) -> None:
    with pytest.raises(AuditFailure, match=reason):
        verify_bundle(_bundle(bodies, signer, keep), signer.verifier)


def test_another_key_or_a_changed_byte_is_refused(signer: NoteSigner) -> None:
    bundle = _bundle(HONEST, signer)
    stranger = NoteSigner.from_pem(ORIGIN, generate_private_key_pem())
    with pytest.raises(AuditFailure, match="not the trusted"):
        verify_bundle(bundle, stranger.verifier)
    forged = Bundle(
        bundle.registry,
        bundle.serial,
        bundle.query,
        bundle.checkpoint,
        stranger.verifier.encode(),
        bundle.events,
    )
    with pytest.raises(AuditFailure, match="checkpoint: the checkpoint is not signed"):
        verify_bundle(forged, stranger.verifier)
    first = bundle.events[0]
    changed = BundleEvent(first.index, first.leaf_data.replace(b"199", b"198"), first.proof)
    tampered = Bundle(
        bundle.registry,
        bundle.serial,
        bundle.query,
        bundle.checkpoint,
        bundle.log_key,
        (changed, *bundle.events[1:]),
    )
    with pytest.raises(AuditFailure, match="event 0: not in the log"):
        verify_bundle(tampered, signer.verifier)
