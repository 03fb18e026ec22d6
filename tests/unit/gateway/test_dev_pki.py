"""``carbonlink certs init`` writes what a secure gateway needs, the log's key included."""

from __future__ import annotations

from pathlib import Path

import yaml

from gateway.cli_certs import serve_flags
from gateway.security.certs import init_dev_pki
from registry_bridge.signed_note import NoteSigner


def test_the_log_signing_key_is_written_once_and_named_for_serve(tmp_path: Path) -> None:
    layout = init_dev_pki(tmp_path / "pki", ())
    first = layout.log_signing_key.read_bytes()
    assert layout.log_signing_key.stat().st_mode & 0o077 == 0
    named = yaml.safe_load(layout.gateway_config.read_text())
    assert named["log_signing_key_file"] == str(layout.log_signing_key)
    assert serve_flags(layout.root)["log_signing_key_file"] == str(layout.log_signing_key)
    # A second init replaces certificates, not the key that auditors pinned.
    init_dev_pki(tmp_path / "pki", ())
    assert layout.log_signing_key.read_bytes() == first
    NoteSigner.from_pem("carbonlink.local/provenance", first)  # an Ed25519 key
