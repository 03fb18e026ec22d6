"""The CLI's client commands over mutual TLS with a token file and a signing key."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest

from adapters.serials import format_serial, parse_serial
from gateway import demo_security
from gateway.cli import main
from gateway.security.layout import TlsLayout
from gateway.security.tokens import certificate_thumbprint
from tests.integration.security.conftest import (
    VERRA_SERIAL,
    SecureGateway,
    running_secure_gateway,
)


def test_certs_token_then_a_signed_transfer_from_the_cli(
    secure_gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = secure_gateway.pki
    token_file = tmp_path / "token"
    assert (
        main(
            [
                "certs",
                "token",
                str(pki.root),
                "--role",
                "exchange_operator",
                "--account",
                "hkmo:hk-seller",
                "--out",
                str(token_file),
            ]
        )
        == 0
    )
    assert (token_file.stat().st_mode & 0o777) == 0o600
    origin = parse_serial("verra", VERRA_SERIAL)
    serial = format_serial(
        "verra", origin.with_range(origin.id.serial_start, origin.id.serial_start + 9)
    )
    common = ["--target", secure_gateway.target, "--tls-dir", str(pki.root)]
    common += ["--token-file", str(token_file)]
    move = ["transfer", "submit", "--from", "hkmo:hk-seller", "--to", "shenzhen:b"]
    move += ["--serial", serial, "--json", *common]

    # Unsigned: the CLI refuses before calling.
    assert main(move) == 2
    assert "--signing-key" in capsys.readouterr().err
    signed = [*move, "--signing-key", str(pki.instruction_key("exchange_operator"))]
    assert main(signed) == 0
    out = capsys.readouterr().out  # the in-process gateway's default logs share stdout
    transfer, _ = json.JSONDecoder().raw_decode(out[out.index("{\n") :])
    assert transfer["state"] == "TRANSFER_STATE_COMPLETED"
    # Neither TLS nor --insecure: a usage error naming the options.
    assert main(["transfer", "list", "--target", secure_gateway.target]) == 2
    assert "--tls-dir" in capsys.readouterr().err
    # Plaintext against the secure gateway is refused by the transport.
    assert main(["transfer", "list", "--target", secure_gateway.target, "--insecure"]) == 1
    assert "UNAVAILABLE" in capsys.readouterr().err


def test_a_token_file_that_cannot_be_written_is_a_usage_error(
    pki: TlsLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no-such-dir" / "token"
    argv = ["certs", "token", str(pki.root), "--role", "auditor", "--out", str(out)]
    assert main(argv) == 2
    assert f"carbonlink certs token: cannot write {out}" in capsys.readouterr().err


def test_certs_token_binds_a_token_to_a_certificate(
    pki: TlsLayout, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "token"
    argv = ["certs", "token", str(pki.root), "--role", "auditor", "--out", str(out)]
    certificate = pki.client_cert("auditor")
    assert main([*argv, "--bind-certificate", str(certificate)]) == 0

    claims = jwt.decode(out.read_text().strip(), options={"verify_signature": False})
    assert claims["cnf"] == {"x5t#S256": certificate_thumbprint(certificate.read_bytes())}

    not_a_certificate = tmp_path / "key.pem"
    not_a_certificate.write_text("-----BEGIN NOTHING-----\n")
    assert main([*argv, "--bind-certificate", str(not_a_certificate)]) == 2
    assert f"cannot read the certificate {not_a_certificate}" in capsys.readouterr().err


def test_a_subject_of_its_own_signs_with_a_key_of_its_own_from_certs_key(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The PKI is the test's own: `certs key` adds to its instruction-key registry.
    pki = demo_security.layout(tmp_path)
    with running_secure_gateway(pki, database_url) as gateway:
        token = tmp_path / "token"
        mint = ["certs", "token", str(pki.root), "--role", "exchange_operator"]
        mint += ["--subject", "desk-a", "--account", "hkmo:hk-seller", "--out", str(token)]
        assert main(mint) == 0
        origin = parse_serial("verra", VERRA_SERIAL)
        serial = format_serial(
            "verra", origin.with_range(origin.id.serial_start, origin.id.serial_start + 9)
        )
        move = ["transfer", "submit", "--from", "hkmo:hk-seller", "--to", "shenzhen:b"]
        move += ["--serial", serial, "--target", gateway.target, "--tls-dir", str(pki.root)]
        move += ["--token-file", str(token)]
        capsys.readouterr()

        # The role's key is not the subject's: refused, saying whose key is wanted.
        role_key = ["--signing-key", str(pki.instruction_key("exchange_operator"))]
        assert main([*move, *role_key, "--request-id", "desk-a-1"]) == 1
        assert (
            "UNAUTHENTICATED: instruction key 'exchange_operator-1' does not belong to the "
            "caller, subject 'desk-a' (the token's sub): sign with a key registered for it"
        ) in capsys.readouterr().err

        assert main(["certs", "key", str(pki.root), "--subject", "desk-a"]) == 0
        key = pki.instruction_key("desk-a")
        assert capsys.readouterr().out == (
            f"instruction key desk-a-1 of subject 'desk-a' written to {key}\n"
            f"  sign with: --signing-key {key}\n"
        )
        assert (key.stat().st_mode & 0o777) == 0o600
        assert main([*move, "--signing-key", str(key), "--request-id", "desk-a-1"]) == 0
        out = capsys.readouterr().out
        assert out.splitlines()[-1].endswith(" COMPLETED"), out

        # A subject keeps the key it has, a role's included: nothing is overwritten.
        registered = pki.instruction_keys.read_text(encoding="utf-8")
        for subject in ("desk-a", "exchange_operator"):
            assert main(["certs", "key", str(pki.root), "--subject", subject]) == 2
            assert "has an instruction key already" in capsys.readouterr().err
        assert pki.instruction_keys.read_text(encoding="utf-8") == registered
        with pytest.raises(SystemExit):
            main(["certs", "key", str(pki.root), "--subject", "../desk-b"])
        assert "'../desk-b' is not a subject" in capsys.readouterr().err


def test_a_batch_from_the_cli_is_signed_once_with_the_signing_key(
    secure_gateway: SecureGateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pki = secure_gateway.pki
    token = tmp_path / "token"
    mint = ["certs", "token", str(pki.root), "--role", "exchange_operator"]
    assert main([*mint, "--account", "hkmo:hk-seller", "--out", str(token)]) == 0
    start = parse_serial("verra", VERRA_SERIAL).id.serial_start
    batch = tmp_path / "batch.json"
    batch.write_text(
        json.dumps(
            {
                "transfers": [
                    {
                        "instruction": {
                            "source": {"registry": "hkmo", "account": "hk-seller"},
                            "destination": {"registry": "shenzhen", "account": "b"},
                            "units": [
                                {
                                    "block": {
                                        "program": "VCS",
                                        "serialStart": first,
                                        "serialEnd": last,
                                    }
                                }
                            ],
                        }
                    }
                    for first, last in ((start, start + 9), (start + 10, start + 19))
                ]
            }
        ),
        encoding="utf-8",
    )
    submit = ["transfer", "batch", str(batch), "--target", secure_gateway.target]
    submit += ["--tls-dir", str(pki.root), "--token-file", str(token)]
    capsys.readouterr()
    assert main(submit) == 2
    assert "SubmitTransfers is an instruction: give --signing-key" in capsys.readouterr().err
    signing_key = ["--signing-key", str(pki.instruction_key("exchange_operator"))]
    assert main([*submit, *signing_key, "--request-id", "day-1"]) == 0
    lines = capsys.readouterr().out.splitlines()[-2:]
    assert [line.split()[:2] for line in lines] == [["[0]", "day-1-0:"], ["[1]", "day-1-1:"]]
    assert all(line.endswith(" COMPLETED") for line in lines), lines
