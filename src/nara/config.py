"""Platform settings, read from the environment (``NARA_*``) with safe defaults."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from nara.security.gate import SecuritySettings
from nara.security.schema import MIN_RETENTION_YEARS, retention_days
from nara.store.database import database_url
from nara.store.store import StoreSettings


def _env_choice(name: str, choices: tuple[str, ...], default: str) -> str:
    raw = (os.environ.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw not in choices:
        raise SystemExit(f"{name} must be one of {', '.join(choices)}, not {raw!r}")
    return raw


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, not {raw!r}") from None
    if not value > 0:
        raise SystemExit(f"{name} must be greater than zero, not {raw!r}")
    return value


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, not {raw!r}") from None


def _retention_days() -> int:
    years = _env_int("NARA_AUDIT_RETENTION_YEARS", MIN_RETENTION_YEARS)
    if years < MIN_RETENTION_YEARS:
        raise SystemExit(
            f"NARA_AUDIT_RETENTION_YEARS must be at least {MIN_RETENTION_YEARS} "
            f"(the Patient Data Act's minimum for the access log), not {years}"
        )
    return retention_days(years)


def _env_pairs(name: str, sep: str) -> list[tuple[str, str]]:
    out = []
    for item in os.environ.get(name, "").split(","):
        key, found, value = item.strip().partition(sep)
        if found and key and value:
            out.append((key.strip(), value.strip()))
    return out


def _security_from_env() -> SecuritySettings:
    return SecuritySettings(
        enabled=True,
        dev_idp=_env_bool("NARA_DEV_IDP", False),
        audience=os.environ.get("NARA_AUDIENCE", "nara"),
        issuers=_env_pairs("NARA_OIDC_ISSUERS", "="),
        dev_clients=dict(_env_pairs("NARA_DEV_IDP_CLIENTS", ":")),
        log_extract_names=_env_bool("NARA_LOG_EXTRACT_NAMES", True),
        emergency_hours=_env_int("NARA_EMERGENCY_HOURS", 4),
        seal_interval_seconds=_env_float("NARA_AUDIT_SEAL_SECONDS", 1.0),
        sealer=_env_choice("NARA_AUDIT_SEALER", ("thread", "external"), "thread"),
        audit_retention_days=_retention_days(),
        audit_outbox=audit_outbox_dir(),
        drain_interval_seconds=_env_float("NARA_AUDIT_DRAIN_SECONDS", 0.2),
        reader_drain_seconds=_env_float("NARA_AUDIT_READER_DRAIN_SECONDS", 5.0),
    )


OUTBOX_DEFAULT = "var/audit-outbox"  # nara serve's outbox on PostgreSQL when NARA_AUDIT_OUTBOX is not set


def audit_outbox_dir(raw: str | None = None) -> str | None:
    """The read-audit outbox's directory as an absolute path, from ``raw`` or else NARA_AUDIT_OUTBOX: None
    when unset or ``off`` (every read's record is then written to the database before the read answers)."""
    value = (raw if raw is not None else os.environ.get("NARA_AUDIT_OUTBOX") or "").strip()
    if not value or value.lower() == "off":
        return None
    return os.path.abspath(value)


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    return raw.strip().lower() in ("1", "true", "yes", "on")


@dataclass
class Settings:
    database_url: str = field(default_factory=lambda: database_url(None))
    # Public base URL of the FHIR API (e.g. https://nara.example.se/fhir); derived from requests when empty.
    base_url: str = field(default_factory=lambda: os.environ.get("NARA_BASE_URL", ""))
    max_body_bytes: int = field(default_factory=lambda: _env_int("NARA_MAX_BODY_BYTES", 16 * 1024 * 1024))
    # Operators' query-plan view (_explain=true); off unless configured.
    explain_enabled: bool = field(default_factory=lambda: _env_bool("NARA_EXPLAIN", False))
    pool_size: int = field(default_factory=lambda: _env_int("NARA_DB_POOL_SIZE", 10))
    store: StoreSettings = field(
        default_factory=lambda: StoreSettings(
            validate=_env_bool("NARA_VALIDATE", True),
            default_count=_env_int("NARA_DEFAULT_COUNT", 20),
            max_count=_env_int("NARA_MAX_COUNT", 1000),
            max_or_values=_env_int("NARA_MAX_OR_VALUES", 500),
            max_chain_depth=_env_int("NARA_MAX_CHAIN_DEPTH", 3),
            max_include=_env_int("NARA_MAX_INCLUDE", 1000),
            total_limit=_env_int("NARA_TOTAL_LIMIT", 200),
            statement_timeout_ms=_env_int("NARA_STATEMENT_TIMEOUT_MS", 10_000),
            autocommit_reads=_env_bool("NARA_AUTOCOMMIT_READS", True),
            async_read_commit=_env_bool("NARA_ASYNC_READ_COMMIT", True),
            generic_read_plans=_env_bool("NARA_GENERIC_READ_PLANS", False),
            loop_reads=_env_bool("NARA_LOOP_READS", True),
        )
    )
    security: SecuritySettings = field(default_factory=_security_from_env)
