"""Typed gateway configuration from a YAML file, the environment and flags.

Precedence: command-line flags over ``CARBONLINK_*`` environment variables over the file
over the defaults.  Every value is checked before the gateway starts; a bad value stops
it with a ``ConfigError`` naming the setting and where it came from.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from gateway.addresses import is_host_port
from registry_bridge.errors import CarbonlinkError

_REGISTRY_ID = re.compile(r"^[a-z][a-z0-9-]{1,31}$")
_LOG_LEVELS = ("debug", "info", "warning", "error")
_LOG_FORMATS = ("json", "console")
ENV_PREFIX = "CARBONLINK_"


class ConfigError(CarbonlinkError):
    """A configuration value is missing or invalid; the gateway refuses to start."""


@dataclass(frozen=True)
class RegistryEndpoint:
    """A registry the gateway talks to."""

    registry_id: str
    """Adapter to use, e.g. ``verra``."""
    target: str
    """gRPC target of the registry's native API, ``HOST:PORT``."""


@dataclass(frozen=True)
class GatewayConfig:
    """Everything the gateway needs to start. Units are in the field names."""

    listen: str = "127.0.0.1:50051"
    """Address the gRPC server binds, ``HOST:PORT``; port 0 picks a free port."""
    metrics_listen: str = ""
    """Address of the Prometheus metrics endpoint (``/metrics``), ``HOST:PORT``; empty:
    none. On a secure gateway it speaks TLS and asks for a client certificate of the CA."""
    database_url: str = "sqlite:///carbonlink.db"
    """SQLAlchemy URL: the embedded SQLite file by default, or ``postgresql+psycopg://...``."""
    log_level: str = "info"
    """One of debug, info, warning, error."""
    log_format: str = "json"
    """``json`` (one object per line, for machines) or ``console`` (for people)."""
    registries: tuple[RegistryEndpoint, ...] = ()
    """Registries wired at start-up; each needs an adapter of that id."""
    grace_period_seconds: float = 10.0
    """How long in-flight calls may finish after SIGTERM before the server stops."""
    max_workers: int = 16
    """Threads serving RPCs. On a secure gateway one client's open streams (WatchTransfer)
    hold at most a quarter of them (at least one), so that no client starves the others."""
    max_message_bytes: int = 4 * 1024 * 1024
    """Largest request accepted: a safety cap against memory exhaustion by one client."""
    max_batch_size: int = 1000
    """Most instructions in one SubmitTransfers call, bounding one transaction's size."""
    accepted_backlog_transfers: int = 2000
    """Most transfers accepted (SubmitTransfer with REPLY_WHEN_ACCEPTED) and not yet
    settled at once; past it, acceptance waits for settlement to catch up. Each waits in
    it holding its lease (renewed when its settlement starts), so keep it small enough to
    settle well within transfer_lease_seconds."""
    watch_fallback_seconds: float = 1.0
    """How often a WatchTransfer stream reads its transfer when nothing has told it of a
    change. A change this gateway commits wakes the stream at once; one made by another
    gateway sharing the database is seen at the next of these reads."""
    trace_page_bytes: int = 1024 * 1024
    """Largest TraceUnits reply: a page ends early rather than grow past it (a single
    event larger than it is still sent whole). At most 4 MiB, gRPC's default receive
    limit, which an auditor's client has unless it raised it; kept well below it so
    that a reply never comes near it."""
    lock_ttl_seconds: int = 300
    """How long a source lock lives before a stuck transfer rolls back."""
    registry_timeout_seconds: float = 5.0
    """Deadline of one call to a registry."""
    registry_retry_attempts: int = 5
    """Attempts for a transient registry failure before the transfer gives up on the step."""
    registry_retry_initial_wait_seconds: float = 0.1
    """Wait before the second attempt; it doubles per attempt up to the maximum."""
    registry_retry_max_wait_seconds: float = 2.0
    """Longest wait between two attempts (a registry known to restart slowly wants more)."""
    recovery_interval_seconds: float = 5.0
    """How often unfinished transfers are resumed (and expired locks rolled back)."""
    registry_import_interval_seconds: float = 60.0
    """How often the gateway learns the units each registry holds that its ledger does not
    know yet (issued, or deposited from outside, since the last look; a registry that was
    down at start-up is read at its next look)."""
    transfer_lease_seconds: float = 15.0
    """How long a gateway's claim on driving a transfer lasts without renewal: after a
    crash, another gateway (or the restarted one) takes the transfer over past it."""
    log_origin: str = "carbonlink.local/provenance"
    """The provenance log's origin line in checkpoints, also the signing key's name: unique
    per log (e.g. the operator's host name and a path); no spaces or '+'."""
    log_signing_key_file: str = ""
    """PEM file of the Ed25519 key that signs log checkpoints (PKCS#8, unencrypted; keep
    it private). Empty: an ephemeral key per process, with a loud warning, so checkpoints
    verify only until restart -- for development only."""
    insecure: bool = False
    """FOR LOCAL DEVELOPMENT ONLY: no TLS, no bearer tokens, no instruction signatures.
    The gateway logs a loud warning at every start while it is set."""
    tls_cert_file: str = ""
    """PEM certificate the gateway serves with; it also presents it to the registries."""
    tls_key_file: str = ""
    """PEM private key of ``tls_cert_file`` (keep it private)."""
    tls_ca_file: str = ""
    """PEM CA bundle: client certificates must chain to it (mutual TLS is required)."""
    registry_ca_file: str = ""
    """PEM CA bundle the registries' certificates must chain to; empty: ``tls_ca_file``."""
    jwks_file: str = ""
    """JSON Web Key Set of the token issuer's public keys; re-read when it changes."""
    jwt_issuer: str = "https://idp.carbonlink.local"
    """The ``iss`` every bearer token must carry."""
    jwt_audience: str = "carbonlink-gateway"
    """The ``aud`` every bearer token must carry."""
    jwt_leeway_seconds: float = 30.0
    """Clock skew tolerated on ``exp`` and ``nbf``."""
    jwt_require_certificate_binding: bool = False
    """Refuse bearer tokens not bound to the caller's client certificate (RFC 8705
    ``cnf.x5t#S256``). A bound token is checked against the certificate either way."""
    jwt_max_lifetime_seconds: float = 86_400.0
    """The longest a bearer token may live (``exp`` minus ``iat``): a token leaked from a
    log or a laptop is of use for at most this long, whatever expiry its issuer gave it."""
    instruction_keys_file: str = ""
    """JSON registry of the parties' Ed25519 instruction-signing keys (``certs init``)."""
    instruction_window_seconds: float = 300.0
    """How far an instruction's signing time may be from the gateway's clock."""
    reconcile_interval_seconds: float = 0.0
    """How often the gateways reconcile the ledger with every wired registry by themselves,
    reporting (log and metrics) the differences found in two runs in a row; 0: only on
    demand (the Reconcile RPC). The gateways sharing a database keep one schedule: a run
    starts only when none of theirs has within the interval. Each run reads every
    registry's holdings: an interval of minutes or more."""
    rate_limit_per_second: float = 50.0
    """Calls per second each client (token subject) may make, per gateway process; a
    SubmitTransfers batch counts one call per transfer in it."""
    rate_limit_burst: int = 100
    """Calls a client may make at once before the per-second rate applies. A batch larger
    than this is still let in when the client has budget left, and its next call then
    waits until the rate has paid off the rest."""
    fault_crash_after_state: str = ""
    """FAULT INJECTION, for crash tests only: the gateway SIGKILLs itself as soon as a
    transfer's state of this name is committed (e.g. ``SOURCE_LOCKED``). Empty: off."""
    fault_crash_after_migration_step: str = ""
    """FAULT INJECTION, for crash tests only: ``KIND:STATE`` (e.g. ``cancel:applied``,
    ``transfer:done``): the gateway SIGKILLs itself as soon as the first migration step of
    that kind reaches that state. Empty: off."""


# Migration step kinds and states a crash can be injected after (registry_bridge.migration).
_STEP_KINDS = ("cancel", "transfer", "keep", "register")
_STEP_STATES = ("applied", "pending", "done", "failed")

_FIELD_TYPES: dict[str, type] = {
    "listen": str,
    "metrics_listen": str,
    "database_url": str,
    "log_level": str,
    "log_format": str,
    "grace_period_seconds": float,
    "max_workers": int,
    "max_message_bytes": int,
    "max_batch_size": int,
    "accepted_backlog_transfers": int,
    "watch_fallback_seconds": float,
    "trace_page_bytes": int,
    "lock_ttl_seconds": int,
    "registry_timeout_seconds": float,
    "registry_retry_attempts": int,
    "registry_retry_initial_wait_seconds": float,
    "registry_retry_max_wait_seconds": float,
    "recovery_interval_seconds": float,
    "registry_import_interval_seconds": float,
    "fault_crash_after_state": str,
    "fault_crash_after_migration_step": str,
    "transfer_lease_seconds": float,
    "log_origin": str,
    "log_signing_key_file": str,
    "insecure": bool,
    "tls_cert_file": str,
    "tls_key_file": str,
    "tls_ca_file": str,
    "registry_ca_file": str,
    "jwks_file": str,
    "jwt_issuer": str,
    "jwt_audience": str,
    "jwt_leeway_seconds": float,
    "jwt_max_lifetime_seconds": float,
    "jwt_require_certificate_binding": bool,
    "instruction_keys_file": str,
    "instruction_window_seconds": float,
    "reconcile_interval_seconds": float,
    "rate_limit_per_second": float,
    "rate_limit_burst": int,
}
CLIENT_RECEIVE_LIMIT_BYTES = 4 * 1024 * 1024
"""gRPC's default receive limit, which clients have unless they raise it."""
MIN_TRACE_PAGE_BYTES = 16 * 1024
"""The smallest trace page budget: room for the checkpoint, the note and a few events."""
LONGEST_SECONDS = 366 * 24 * 3600
"""The longest duration setting: a year is past any interval, timeout or lifetime a
gateway needs, and far inside what its timers and datetimes hold (a recovery interval of
1e308 s overflowed the recovery thread's wait and ended it, so unfinished transfers were
never resumed)."""
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def _coerce(name: str, raw: Any, origin: str) -> Any:
    kind = _FIELD_TYPES[name]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in _TRUE + _FALSE:
            return raw.strip().lower() in _TRUE
        raise ConfigError(f"{name}: expected true or false, got {raw!r} ({origin})")
    if isinstance(raw, bool):
        raise ConfigError(f"{name}: expected {kind.__name__}, got a boolean ({origin})")
    try:
        if kind is int:
            if isinstance(raw, float):
                raise ValueError("not an integer")
            return int(raw)
        if kind is float:
            return float(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r} ({origin})") from exc
    if not isinstance(raw, str):
        raise ConfigError(f"{name}: expected a string, got {raw!r} ({origin})")
    return raw


def _parse_registries(raw: Any, origin: str) -> tuple[RegistryEndpoint, ...]:
    """Registries as a mapping ``{id: target}`` (file) or ``id=target,...`` (env, flags)."""
    if isinstance(raw, str):
        pairs: list[tuple[Any, Any]] = []
        for item in filter(None, (part.strip() for part in raw.split(","))):
            if "=" not in item:
                raise ConfigError(f"registries: {item!r} is not ID=HOST:PORT ({origin})")
            key, _, value = item.partition("=")
            pairs.append((key.strip(), value.strip()))
    elif isinstance(raw, Mapping):
        pairs = list(raw.items())
    else:
        raise ConfigError(f"registries: expected a mapping of id to HOST:PORT ({origin})")
    endpoints = []
    for key, value in pairs:
        if not isinstance(key, str) or not isinstance(value, str):
            raise ConfigError(f"registries: entry {key!r} must map a string to a string ({origin})")
        endpoints.append(RegistryEndpoint(key, value))
    return tuple(endpoints)


def _validate(config: GatewayConfig, origins: Mapping[str, str]) -> None:
    def origin(name: str) -> str:
        return origins.get(name, "default")

    for name in ("listen", "metrics_listen"):
        address = getattr(config, name)
        if name == "metrics_listen" and not address:
            continue  # no metrics endpoint
        if not is_host_port(address, any_port=True):
            raise ConfigError(f"{name}: {address!r} is not HOST:PORT ({origin(name)})")
    if not config.database_url.startswith(("sqlite://", "postgresql+psycopg://", "postgresql://")):
        raise ConfigError(
            "database_url: must start with sqlite:// or postgresql+psycopg:// "
            f"({origin('database_url')})"
        )
    if config.log_level not in _LOG_LEVELS:
        raise ConfigError(
            f"log_level: {config.log_level!r} is not one of {', '.join(_LOG_LEVELS)} "
            f"({origin('log_level')})"
        )
    if config.log_format not in _LOG_FORMATS:
        raise ConfigError(
            f"log_format: {config.log_format!r} is not one of {', '.join(_LOG_FORMATS)} "
            f"({origin('log_format')})"
        )
    positive = {
        "grace_period_seconds": config.grace_period_seconds,
        "max_workers": config.max_workers,
        "max_message_bytes": config.max_message_bytes,
        "max_batch_size": config.max_batch_size,
        "accepted_backlog_transfers": config.accepted_backlog_transfers,
        "watch_fallback_seconds": config.watch_fallback_seconds,
        "trace_page_bytes": config.trace_page_bytes,
        "lock_ttl_seconds": config.lock_ttl_seconds,
        "registry_timeout_seconds": config.registry_timeout_seconds,
        "registry_retry_attempts": config.registry_retry_attempts,
        "registry_retry_initial_wait_seconds": config.registry_retry_initial_wait_seconds,
        "registry_retry_max_wait_seconds": config.registry_retry_max_wait_seconds,
        "recovery_interval_seconds": config.recovery_interval_seconds,
        "registry_import_interval_seconds": config.registry_import_interval_seconds,
        "transfer_lease_seconds": config.transfer_lease_seconds,
        "instruction_window_seconds": config.instruction_window_seconds,
        "jwt_max_lifetime_seconds": config.jwt_max_lifetime_seconds,
        "rate_limit_per_second": config.rate_limit_per_second,
        "rate_limit_burst": config.rate_limit_burst,
    }
    for name, value in positive.items():
        # NaN passes `value <= 0`, so finiteness is asked first.
        if not math.isfinite(value):
            raise ConfigError(f"{name}: must be a finite number, got {value} ({origin(name)})")
        if value <= 0:
            raise ConfigError(f"{name}: must be greater than 0, got {value} ({origin(name)})")
        if name.endswith("_seconds") and value > LONGEST_SECONDS:
            raise ConfigError(
                f"{name}: must be at most {LONGEST_SECONDS} (a year), got {value} ({origin(name)})"
            )
    if not MIN_TRACE_PAGE_BYTES <= config.trace_page_bytes <= CLIENT_RECEIVE_LIMIT_BYTES:
        raise ConfigError(
            f"trace_page_bytes: must be from {MIN_TRACE_PAGE_BYTES} to "
            f"{CLIENT_RECEIVE_LIMIT_BYTES} (gRPC's default receive limit, past which "
            f"clients refuse a page), got {config.trace_page_bytes} "
            f"({origin('trace_page_bytes')})"
        )
    interval = config.reconcile_interval_seconds
    if not math.isfinite(interval) or not 0 <= interval <= LONGEST_SECONDS:
        raise ConfigError(
            f"reconcile_interval_seconds: must be 0 (off) or up to {LONGEST_SECONDS} (a year), "
            f"got {interval} ({origin('reconcile_interval_seconds')})"
        )
    if config.max_message_bytes > 2**31 - 1:
        # gRPC takes it as a C int: a larger one failed the start with an OverflowError.
        raise ConfigError(
            f"max_message_bytes: must be at most {2**31 - 1}, got {config.max_message_bytes} "
            f"({origin('max_message_bytes')})"
        )
    if config.registry_retry_initial_wait_seconds > config.registry_retry_max_wait_seconds:
        raise ConfigError(
            "registry_retry_initial_wait_seconds: "
            f"{config.registry_retry_initial_wait_seconds} is above "
            f"registry_retry_max_wait_seconds, {config.registry_retry_max_wait_seconds} "
            f"({origin('registry_retry_initial_wait_seconds')}, "
            f"{origin('registry_retry_max_wait_seconds')})"
        )
    states = (
        "",
        "PROPOSED",
        "CHECKED",
        "SOURCE_LOCKED",
        "DESTINATION_CREDITED",
        "SOURCE_FINALIZED",
        "COMPLETED",
    )
    if (
        not config.log_origin
        or "+" in config.log_origin
        or any(c.isspace() for c in config.log_origin)
    ):
        raise ConfigError(
            f"log_origin: {config.log_origin!r} must be non-empty, without spaces or '+' "
            f"({origin('log_origin')})"
        )
    if config.log_signing_key_file and not Path(config.log_signing_key_file).is_file():
        raise ConfigError(
            f"log_signing_key_file: {config.log_signing_key_file!r} is not a file "
            f"({origin('log_signing_key_file')})"
        )
    if config.fault_crash_after_state not in states:
        raise ConfigError(
            f"fault_crash_after_state: {config.fault_crash_after_state!r} is not one of "
            f"{', '.join(s for s in states if s)} ({origin('fault_crash_after_state')})"
        )
    step = config.fault_crash_after_migration_step
    if step:
        kind, _, state = step.partition(":")
        if kind not in _STEP_KINDS or state not in _STEP_STATES:
            raise ConfigError(
                f"fault_crash_after_migration_step: {step!r} is not KIND:STATE with KIND one of "
                f"{', '.join(_STEP_KINDS)} and STATE one of {', '.join(_STEP_STATES)} "
                f"({origin('fault_crash_after_migration_step')})"
            )
    # Security settings are checked by the module that uses them, one place for both
    # load_config and a GatewayConfig built in code (imported here: it imports this module).
    from gateway.security.settings import check_security

    check_security(config, origin)
    seen: set[str] = set()
    for endpoint in config.registries:
        if not _REGISTRY_ID.match(endpoint.registry_id):
            raise ConfigError(
                f"registries: {endpoint.registry_id!r} is not a registry id "
                f"({origin('registries')})"
            )
        if endpoint.registry_id in seen:
            raise ConfigError(
                f"registries: {endpoint.registry_id!r} is listed twice ({origin('registries')})"
            )
        seen.add(endpoint.registry_id)
        if not is_host_port(endpoint.target):
            raise ConfigError(
                f"registries.{endpoint.registry_id}: {endpoint.target!r} is not HOST:PORT "
                f"({origin('registries')})"
            )


def load_config(
    file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
    flag_names: Mapping[str, str] | None = None,
) -> GatewayConfig:
    """Build and check the configuration.

    Args:
        file: Optional YAML file whose top-level keys are the field names.
        environ: Environment to read ``CARBONLINK_<FIELD>`` variables from.
        flags: Values given on the command line; ``None`` values are ignored.
        flag_names: The command-line flag that gave a setting, where it is not the
            setting's own name (``--registry`` for ``registries``), for error messages.

    Returns:
        The checked configuration.

    Raises:
        ConfigError: A value is unknown, of the wrong type or out of range; the message
            names the setting and where it came from.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    known = {f.name for f in dataclasses.fields(GatewayConfig)}

    def put(name: str, raw: Any, origin: str) -> None:
        if name not in known:
            raise ConfigError(f"{name}: unknown setting ({origin})")
        if name == "registries":
            values[name] = _parse_registries(raw, origin)
        else:
            values[name] = _coerce(name, raw, origin)
        origins[name] = origin

    if file is not None:
        try:
            document = yaml.safe_load(file.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"config file {file}: cannot be read: {exc.strerror}") from exc
        except UnicodeDecodeError as exc:
            raise ConfigError(f"config file {file}: not UTF-8 text: {exc}") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {file}: not valid YAML: {exc}") from exc
        if document is None:
            document = {}
        if not isinstance(document, Mapping):
            raise ConfigError(f"config file {file}: top level must be a mapping")
        for name, raw in document.items():
            put(str(name), raw, f"file {file}")
    env = os.environ if environ is None else environ
    for key, raw in env.items():
        if key.startswith(ENV_PREFIX) and key not in _IGNORED_ENV:
            put(key[len(ENV_PREFIX) :].lower(), raw, f"env {key}")
    for name, raw in (flags or {}).items():
        if raw is not None:
            flag = (flag_names or {}).get(name, f"--{name.replace('_', '-')}")
            put(name, raw, f"flag {flag}")
    config = GatewayConfig(**values)
    _validate(config, origins)
    return config


# Variables with the prefix that are not settings (read by other tools).
_IGNORED_ENV = frozenset({"CARBONLINK_TEST_POSTGRES_URL"})
