"""The log signing key: from a PEM file, refused when bad, ephemeral with a loud warning."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.log_keys import load_signer, write_new_key
from tests.logs import logged_events


def test_a_configured_key_signs_under_the_log_origin(tmp_path: Path) -> None:
    pem = tmp_path / "log.pem"
    write_new_key(pem)
    config = load_config(
        environ={"CARBONLINK_INSECURE": "true"},
        flags={"log_signing_key_file": str(pem), "log_origin": "sz.example/log"},
    )
    first, again = load_signer(config), load_signer(config)
    assert first.verifier == again.verifier
    assert first.verifier.encode().startswith("sz.example/log+")


def test_no_key_means_an_ephemeral_one_and_an_error_log() -> None:
    with logged_events() as logs:
        signer = load_signer(GatewayConfig())
    assert [e["event"] for e in logs] == ["log_signing_key_ephemeral"]
    assert logs[0]["log_level"] == "error"
    assert "EPHEMERAL" in logs[0]["warning"]
    assert load_signer(GatewayConfig()).verifier != signer.verifier


def test_bad_key_settings_stop_the_gateway(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="log_signing_key_file"):
        load_config(
            environ={"CARBONLINK_INSECURE": "true"},
            flags={"log_signing_key_file": str(tmp_path / "missing.pem")},
        )
    not_a_key = tmp_path / "bad.pem"
    not_a_key.write_text("not a key")
    config = load_config(
        environ={"CARBONLINK_INSECURE": "true"}, flags={"log_signing_key_file": str(not_a_key)}
    )
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key"):
        load_signer(config)
    with pytest.raises(ConfigError, match="log_origin"):
        load_config(environ={"CARBONLINK_INSECURE": "true"}, flags={"log_origin": "has space"})
