from __future__ import annotations

from pathlib import Path

import pytest

from gateway import config as config_module
from gateway.config import ConfigError, GatewayConfig, RegistryEndpoint


def load_config(
    file: Path | None = None,
    environ: dict[str, str] | None = None,
    flags: dict[str, object] | None = None,
    flag_names: dict[str, str] | None = None,
) -> GatewayConfig:
    """load_config in development mode: security settings are tested in test_security_config."""
    return config_module.load_config(
        file, {"CARBONLINK_INSECURE": "true", **(environ or {})}, flags, flag_names
    )


def test_defaults_are_valid() -> None:
    assert load_config(environ={}) == GatewayConfig(insecure=True)


def test_flags_override_env_override_file(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("listen: 127.0.0.1:7000\nlog_level: debug\nmax_batch_size: 10\n")
    config = load_config(
        file=file,
        environ={"CARBONLINK_LISTEN": "127.0.0.1:7001", "CARBONLINK_MAX_BATCH_SIZE": "20"},
        flags={"listen": "127.0.0.1:7002", "log_level": None},
    )
    assert config.listen == "127.0.0.1:7002"
    assert config.max_batch_size == 20
    assert config.log_level == "debug"


def test_registries_from_file_and_env(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("registries:\n  verra: 127.0.0.1:6001\n")
    assert load_config(file=file, environ={}).registries == (
        RegistryEndpoint("verra", "127.0.0.1:6001"),
    )
    config = load_config(
        environ={"CARBONLINK_REGISTRIES": "verra=127.0.0.1:6001, shenzhen=localhost:6002"}
    )
    assert [e.registry_id for e in config.registries] == ["verra", "shenzhen"]


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (
            {"CARBONLINK_LISTEN": "nonsense"},
            "listen: 'nonsense' is not HOST:PORT (env CARBONLINK_LISTEN)",
        ),
        ({"CARBONLINK_LISTEN": "127.0.0.1:99999"}, "listen"),
        ({"CARBONLINK_MAX_BATCH_SIZE": "ten"}, "max_batch_size: expected int, got 'ten'"),
        ({"CARBONLINK_MAX_BATCH_SIZE": "0"}, "max_batch_size: must be greater than 0"),
        # Past a client's default receive limit, every full page would be refused.
        (
            {"CARBONLINK_TRACE_PAGE_BYTES": "5000000"},
            "trace_page_bytes: must be from 16384 to 4194304 (gRPC's default receive limit",
        ),
        ({"CARBONLINK_TRACE_PAGE_BYTES": "100"}, "trace_page_bytes: must be from 16384"),
        ({"CARBONLINK_LOG_LEVEL": "loud"}, "log_level: 'loud' is not one of"),
        ({"CARBONLINK_DATABASE_URL": "mysql://x"}, "database_url: must start with"),
        ({"CARBONLINK_REGISTRIES": "verra"}, "registries: 'verra' is not ID=HOST:PORT"),
        ({"CARBONLINK_REGISTRIES": "verra=a:1,verra=b:2"}, "'verra' is listed twice"),
        ({"CARBONLINK_REGISTRIES": "verra=nohost"}, "registries.verra: 'nohost' is not HOST:PORT"),
        # gRPC would dial port 99999 modulo 65536 (34463), someone else's perhaps.
        (
            {"CARBONLINK_REGISTRIES": "verra=127.0.0.1:99999"},
            "registries.verra: '127.0.0.1:99999' is not HOST:PORT",
        ),
        ({"CARBONLINK_REGISTRIES": "verra=127.0.0.1:0"}, "registries.verra: '127.0.0.1:0'"),
        ({"CARBONLINK_COLOUR": "blue"}, "colour: unknown setting (env CARBONLINK_COLOUR)"),
        (
            {"CARBONLINK_REGISTRY_RETRY_MAX_WAIT_SECONDS": "0"},
            "registry_retry_max_wait_seconds: must be greater than 0",
        ),
        (
            {"CARBONLINK_RECOVERY_INTERVAL_SECONDS": "nan"},
            "recovery_interval_seconds: must be a finite number, got nan",
        ),
        (
            {"CARBONLINK_RATE_LIMIT_PER_SECOND": "inf"},
            "rate_limit_per_second: must be a finite number, got inf",
        ),
        (
            {"CARBONLINK_RECOVERY_INTERVAL_SECONDS": "1e308"},
            "recovery_interval_seconds: must be at most 31622400 (a year), got 1e+308",
        ),
        # A stream that never reads on its own would miss other gateways' steps for good.
        (
            {"CARBONLINK_WATCH_FALLBACK_SECONDS": "0"},
            "watch_fallback_seconds: must be greater than 0",
        ),
        (
            {"CARBONLINK_JWT_MAX_LIFETIME_SECONDS": "0"},
            "jwt_max_lifetime_seconds: must be greater than 0",
        ),
        (
            {"CARBONLINK_LOCK_TTL_SECONDS": str(10**20)},
            "lock_ttl_seconds: must be at most 31622400 (a year)",
        ),
        (
            {"CARBONLINK_MAX_MESSAGE_BYTES": str(2**31)},
            f"max_message_bytes: must be at most {2**31 - 1}, got {2**31}",
        ),
        (
            {"CARBONLINK_REGISTRY_RETRY_INITIAL_WAIT_SECONDS": "3"},
            "registry_retry_initial_wait_seconds: 3.0 is above registry_retry_max_wait_seconds,"
            " 2.0 (env CARBONLINK_REGISTRY_RETRY_INITIAL_WAIT_SECONDS, default)",
        ),
    ],
)
def test_bad_values_are_refused_by_name(environ: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(environ=environ)
    assert named in str(caught.value)


def test_bad_file_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "gateway.yaml"
    file.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(file=file, environ={})
    file.write_text("max_workers: 1.5\n")
    with pytest.raises(ConfigError, match=r"max_workers: expected int, got 1.5 \(file "):
        load_config(file=file, environ={})
    with pytest.raises(ConfigError, match="cannot be read"):
        load_config(file=tmp_path / "missing.yaml", environ={})


def test_a_bad_flag_is_named_as_it_was_typed() -> None:
    with pytest.raises(ConfigError, match=r"is not ID=HOST:PORT \(flag --registry\)"):
        load_config(
            environ={}, flags={"registries": "verra"}, flag_names={"registries": "--registry"}
        )
    with pytest.raises(ConfigError, match=r"\(flag --max-workers\)"):
        load_config(environ={}, flags={"max_workers": "0"})
