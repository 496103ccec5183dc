"""Database state snapshots and real database-side faults for the all-or-nothing tests.

Faults are triggers created in the test database itself (SQLite and PostgreSQL), so a write fails or
stalls inside the database exactly as a real failure would, with no mock anywhere:

- :func:`failing_writes`: any insert or update of a ``resource`` row whose JSON contains a marker
  string fails (a generic database error, or a unique violation);
- :func:`failing_index_rows`: inserting a string index row with the marker fails, which happens at the
  very end of a transaction, when the queued index rows are flushed before commit;
- :func:`stalling_writes` (PostgreSQL): the write of a marked resource sleeps in the database, so a
  second connection can terminate that backend mid-transaction.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select, text

from nara.store.schema import metadata
from nara.store.store import Store

FAIL_MARKER = "INJECT-FAILURE"
STALL_MARKER = "STALL-IN-DATABASE"
# Signs of a stack trace or driver internals in a response body.
TRACE_SIGNS = ("Traceback", 'File "', '.py"', "sqlalchemy", "psycopg", "sqlite3", "site-packages", "pg_sleep")


def snapshot(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, in a stable order: equal snapshots mean an unchanged store.

    The audit chain columns are left out: the background sealer fills them in at its own pace.
    """
    out: dict[str, list[tuple[Any, ...]]] = {}
    with store.engine.connect() as conn:
        for table in metadata.sorted_tables:
            cols = [c for c in table.c if c.name not in AUDIT_CHAIN_COLUMNS]
            rows = conn.execute(select(*cols)).all()
            out[table.name] = sorted((tuple(r) for r in rows), key=repr)
    return out


AUDIT_CHAIN_COLUMNS = frozenset({"chain_seq", "prev_hash", "hash"})


def row_count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(text("SELECT count(*) FROM resource")).scalar_one())


def _drop(store: Store, name: str, table: str) -> None:
    with store.engine.begin() as conn:
        if store.postgres:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name} ON {table}"))
            conn.execute(text(f"DROP FUNCTION IF EXISTS {name}()"))
        else:
            conn.execute(text(f"DROP TRIGGER IF EXISTS {name}"))


def _pg_trigger(store: Store, name: str, table: str, condition: str, action: str) -> None:
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition} THEN {action}; END IF; RETURN NEW; END $$"
            )
        )
        conn.execute(
            text(f"CREATE TRIGGER {name} BEFORE INSERT OR UPDATE ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()")
        )


def _sqlite_trigger(store: Store, name: str, table: str, condition: str, message: str) -> None:
    with store.engine.begin() as conn:
        for event in ("INSERT", "UPDATE"):
            conn.execute(
                text(
                    f"CREATE TRIGGER {name}{'' if event == 'INSERT' else '_u'} BEFORE {event} ON {table} "
                    f"WHEN {condition} BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
            )


@contextmanager
def failing_writes(store: Store, kind: str = "error") -> Iterator[None]:
    """Writes of resources containing FAIL_MARKER fail in the database (``kind``: error | unique)."""
    name = "nara_test_fail_write"
    if store.postgres:
        action = (
            "RAISE unique_violation USING MESSAGE = 'duplicate key value (injected)'"
            if kind == "unique"
            else "RAISE EXCEPTION 'injected failure'"
        )
        _pg_trigger(store, name, "resource", f"NEW.content::text LIKE '%{FAIL_MARKER}%'", action)
    else:
        message = "UNIQUE constraint failed: resource (injected)" if kind == "unique" else "injected failure"
        _sqlite_trigger(store, name, "resource", f"NEW.content LIKE '%{FAIL_MARKER}%'", message)
    try:
        yield
    finally:
        _drop(store, name, "resource")
        if not store.postgres:
            _drop(store, name + "_u", "resource")


@contextmanager
def failing_index_rows(store: Store) -> Iterator[None]:
    """Inserting a string index row that contains FAIL_MARKER (lower-cased) fails in the database."""
    name = "nara_test_fail_index"
    marker = FAIL_MARKER.lower()
    if store.postgres:
        _pg_trigger(store, name, "sp_string", f"NEW.value LIKE '%{marker}%'", "RAISE EXCEPTION 'injected failure'")
    else:
        _sqlite_trigger(store, name, "sp_string", f"NEW.value LIKE '%{marker}%'", "injected failure")
    try:
        yield
    finally:
        _drop(store, name, "sp_string")
        if not store.postgres:
            _drop(store, name + "_u", "sp_string")


@contextmanager
def stalling_writes(store: Store, seconds: int = 15) -> Iterator[None]:
    """PostgreSQL: writing a resource containing STALL_MARKER sleeps inside the database."""
    name = "nara_test_stall_write"
    _pg_trigger(
        store, name, "resource", f"NEW.content::text LIKE '%{STALL_MARKER}%'", f"PERFORM pg_sleep({int(seconds)})"
    )
    try:
        yield
    finally:
        _drop(store, name, "resource")


def terminate_stalled_backend(store: Store, timeout: float = 10.0) -> int:
    """From a second connection: wait for a backend sleeping in the stall trigger, then terminate it."""
    import time

    deadline = time.monotonic() + timeout
    with store.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        while time.monotonic() < deadline:
            pid = conn.execute(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event = 'PgSleep' AND pid <> pg_backend_pid()"
                )
            ).scalar()
            if pid is not None:
                conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                return int(pid)
            time.sleep(0.02)
    raise AssertionError("no backend stalled in the database within the timeout")
