"""``nara generate``: fills an empty database (in worker processes on PostgreSQL) and refuses a non-empty one."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from nara.cli import app
from nara.demo.users import demo_users
from nara.store.schema import resource
from nara.store.store import Store
from tests.conftest import Backend, shared_data_dir


def patients(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(resource.c.res_type == "Patient")).scalar_one())


def test_generate_fills_an_empty_database_and_refuses_one_with_data(
    backend: Backend, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NARA_DATABASE_URL", raising=False)  # the command sets it; restored after the test
    args = ["generate", "--patients", "250", "--workers", "2", "--as-of", "2026-11-22", "--database-url", backend.url]
    numbers = shared_data_dir() / "testpersonnummer.txt"
    if numbers.exists():
        args += ["--personnummer-file", str(numbers)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    assert "250 people" in " ".join(first.output.split())  # Rich wraps long lines
    assert patients(store) == 250
    assert len(demo_users(store)) == 8
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 1
    assert "already holds data" in " ".join(again.output.split())
    assert patients(store) == 250


def test_generate_rejects_an_unknown_region(backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NARA_DATABASE_URL", raising=False)
    result = CliRunner().invoke(app, ["generate", "--region", "atlantis", "--database-url", backend.url])
    assert result.exit_code == 1
    assert "Unknown region 'atlantis'" in " ".join(result.output.split())
