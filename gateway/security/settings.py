"""The gateway's security wiring from its configuration: TLS, tokens, signatures, limits.

``GatewaySecurity.from_config`` is called once by the composition root. With
``insecure`` set it wires nothing and says so loudly; otherwise every file must exist
and parse, or the gateway refuses to start naming the setting.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import grpc
import structlog
from sqlalchemy.orm import Session, sessionmaker

from gateway.config import ConfigError, GatewayConfig
from gateway.security.instructions import InstructionKeys, InstructionVerifier
from gateway.security.interceptor import SecurityInterceptor
from gateway.security.nonces import DatabaseNonces
from gateway.security.ratelimit import RateLimiter, StreamSlots
from gateway.security.tls import channel_credentials, server_credentials
from gateway.security.tokens import JwksFile, TokenVerifier
from registry_bridge.errors import Unauthenticated

_logger = structlog.get_logger(__name__)

_REQUIRED_FILES = ("tls_cert_file", "tls_key_file", "tls_ca_file", "jwks_file")


def check_security(config: GatewayConfig, origin: Callable[[str], str]) -> None:
    """Refuse a secure configuration that lacks a file, or out-of-range security values.

    Args:
        config: The configuration.
        origin: Where a setting came from, for the message.

    Raises:
        ConfigError: Naming the first bad setting.
    """
    if config.jwt_leeway_seconds < 0 or config.jwt_leeway_seconds > 300:
        raise ConfigError(
            f"jwt_leeway_seconds: must be 0 to 300, got {config.jwt_leeway_seconds} "
            f"({origin('jwt_leeway_seconds')})"
        )
    if config.insecure:
        return
    for name in (*_REQUIRED_FILES, "instruction_keys_file"):
        value = getattr(config, name)
        if not value:
            raise ConfigError(
                f"{name}: required unless insecure is set (create the files with "
                f"`carbonlink certs init DIR`, then `serve --tls-dir DIR`) ({origin(name)})"
            )
        if not Path(value).is_file():
            raise ConfigError(f"{name}: {value!r} is not a file ({origin(name)})")
    if config.registry_ca_file and not Path(config.registry_ca_file).is_file():
        raise ConfigError(
            f"registry_ca_file: {config.registry_ca_file!r} is not a file "
            f"({origin('registry_ca_file')})"
        )
    if not config.jwt_issuer or not config.jwt_audience:
        name = "jwt_issuer" if not config.jwt_issuer else "jwt_audience"
        raise ConfigError(f"{name}: must not be empty ({origin(name)})")


@dataclass(frozen=True)
class GatewaySecurity:
    """What the server and its registry channels need; all None/empty when insecure."""

    server_credentials: grpc.ServerCredentials | None
    registry_credentials: grpc.ChannelCredentials | None
    interceptors: tuple[grpc.ServerInterceptor, ...]

    @staticmethod
    def from_config(config: GatewayConfig, sessions: sessionmaker[Session]) -> GatewaySecurity:
        """Load certificates and keys named by the configuration.

        Raises:
            ConfigError: A file is missing or unreadable (naming the setting).
        """
        check_security(config, lambda _: "config")
        if config.insecure:
            return GatewaySecurity(None, None, ())
        try:
            server = server_credentials(
                config.tls_cert_file, config.tls_key_file, config.tls_ca_file
            )
            registry = channel_credentials(
                config.registry_ca_file or config.tls_ca_file,
                config.tls_cert_file,
                config.tls_key_file,
            )
        except OSError as exc:
            raise ConfigError(f"tls files: cannot be read: {exc}") from exc
        try:
            jwks = JwksFile(Path(config.jwks_file))
        except Unauthenticated as exc:
            raise ConfigError(f"jwks_file: {config.jwks_file!r} is not a JWKS file") from exc
        try:
            keys = InstructionKeys(Path(config.instruction_keys_file))
        except ValueError as exc:
            raise ConfigError(f"instruction_keys_file: {exc}") from exc
        interceptor = SecurityInterceptor(
            TokenVerifier(
                jwks,
                config.jwt_issuer,
                config.jwt_audience,
                config.jwt_leeway_seconds,
                max_lifetime_seconds=config.jwt_max_lifetime_seconds,
            ),
            RateLimiter(config.rate_limit_per_second, config.rate_limit_burst),
            InstructionVerifier(
                keys,
                DatabaseNonces(sessions),
                timedelta(seconds=config.instruction_window_seconds),
                config.jwt_audience,
            ),
            # A stream holds a worker while it lasts: one client holding a quarter of them
            # leaves the rest to the others.
            StreamSlots(max(1, config.max_workers // 4)),
            require_bound_tokens=config.jwt_require_certificate_binding,
        )
        return GatewaySecurity(server, registry, (interceptor,))


def warn_if_insecure(config: GatewayConfig) -> None:
    """Log, at every start, that an insecure gateway must never face a network."""
    if config.insecure:
        _logger.warning(
            "INSECURE_MODE",
            message=(
                "insecure is set: no TLS, no bearer tokens, no instruction signatures. "
                "For local development only; never expose this gateway."
            ),
        )
