"""Settings from the environment: defaults, values, and a readable refusal of bad values."""

from __future__ import annotations

import pytest

from nara.config import Settings


def test_the_audit_seal_interval_defaults_to_a_second_and_follows_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NARA_AUDIT_SEAL_SECONDS", raising=False)
    assert Settings().security.seal_interval_seconds == 1.0
    monkeypatch.setenv("NARA_AUDIT_SEAL_SECONDS", "0.25")
    assert Settings().security.seal_interval_seconds == 0.25


@pytest.mark.parametrize("value", ["soon", "0", "-1"])
def test_a_bad_audit_seal_interval_is_refused_with_its_name(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NARA_AUDIT_SEAL_SECONDS", value)
    with pytest.raises(SystemExit, match="NARA_AUDIT_SEAL_SECONDS"):
        Settings()


def test_the_audit_sealer_is_a_thread_unless_told_that_another_process_seals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NARA_AUDIT_SEALER", raising=False)
    assert Settings().security.sealer == "thread"
    monkeypatch.setenv("NARA_AUDIT_SEALER", " External ")
    assert Settings().security.sealer == "external"


def test_an_unknown_audit_sealer_is_refused_with_the_choices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NARA_AUDIT_SEALER", "cron")
    with pytest.raises(SystemExit, match="NARA_AUDIT_SEALER must be one of thread, external"):
        Settings()


def test_the_audit_retention_is_five_years_unless_configured_longer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NARA_AUDIT_RETENTION_YEARS", raising=False)
    assert Settings().security.audit_retention_days == 1827  # five years with their leap days
    monkeypatch.setenv("NARA_AUDIT_RETENTION_YEARS", "10")
    assert Settings().security.audit_retention_days == 3653


@pytest.mark.parametrize("value", ["4", "0", "five"])
def test_an_audit_retention_under_five_years_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NARA_AUDIT_RETENTION_YEARS", value)
    with pytest.raises(SystemExit, match="NARA_AUDIT_RETENTION_YEARS must be"):
        Settings()
