"""The provenance log's signing key: loaded from configuration, or ephemeral (with a warning)."""

from __future__ import annotations

from pathlib import Path

import structlog

from gateway.config import ConfigError, GatewayConfig
from registry_bridge.signed_note import NoteError, NoteSigner, generate_private_key_pem

_logger = structlog.get_logger(__name__)


def load_signer(config: GatewayConfig) -> NoteSigner:
    """The checkpoint signer named by ``config``.

    Without ``log_signing_key_file`` the gateway signs with a key that dies with the
    process: checkpoints stop verifying after a restart, so this is logged as an error.

    Raises:
        ConfigError: The key file cannot be read or is not an Ed25519 private key.
    """
    if not config.log_signing_key_file:
        signer = NoteSigner.from_pem(config.log_origin, generate_private_key_pem())
        _logger.error(
            "log_signing_key_ephemeral",
            warning=(
                "NO log_signing_key_file CONFIGURED: checkpoints are signed with an "
                "EPHEMERAL key that is lost on restart; auditors cannot pin it. "
                "Configure an Ed25519 PEM key for any real deployment."
            ),
            verifier_key=signer.verifier.encode(),
        )
        return signer
    path = Path(config.log_signing_key_file)
    try:
        pem = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"log_signing_key_file: cannot read {path}: {exc.strerror}") from exc
    try:
        signer = NoteSigner.from_pem(config.log_origin, pem)
    except NoteError as exc:
        raise ConfigError(f"log_signing_key_file: {path}: {exc}") from exc
    _logger.info("log_signing_key_loaded", verifier_key=signer.verifier.encode())
    return signer


def write_new_key(path: Path) -> None:
    """Write a new Ed25519 private key to ``path`` (mode 0600), refusing to overwrite."""
    with path.open("xb") as out:
        path.chmod(0o600)
        out.write(generate_private_key_pem())
