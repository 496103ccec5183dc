"""Engines and dialect details: URL handling, SQLite pragmas, JSON columns bound as text."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sqlalchemy import Text, bindparam, cast, event
from sqlalchemy import create_engine as _create_engine
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool
from sqlalchemy.sql.elements import ColumnElement

DEFAULT_DATABASE_URL = "sqlite:///var/nara.db"


def database_url(url: str | None = None) -> str:
    """The URL to use: the argument, ``NARA_DATABASE_URL``, or the embedded SQLite default."""
    raw = url or os.environ.get("NARA_DATABASE_URL") or DEFAULT_DATABASE_URL
    if raw.startswith("postgres://"):
        raw = "postgresql://" + raw[len("postgres://") :]
    if raw.startswith("postgresql://"):
        raw = "postgresql+psycopg://" + raw[len("postgresql://") :]
    return raw


def create_engine(
    url: str | None = None,
    *,
    pool_size: int = 10,
    echo: bool = False,
    statement_timeout_ms: int = 0,
    pg_settings: dict[str, str] | None = None,
    autocommit: bool = False,
) -> Engine:
    full = database_url(url)
    parsed = make_url(full)
    kwargs: dict[str, Any] = {"echo": echo, "future": True}
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            Path(db).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs["poolclass"] = NullPool
        engine = _create_engine(full, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Autocommit off at the driver level; SQLAlchemy issues BEGIN itself (see below).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=OFF")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the write lock up front (BEGIN IMMEDIATE) so concurrent writers queue on the
            # busy timeout instead of failing on lock upgrade; readers use a deferred BEGIN (WAL snapshot).
            immediate = conn.get_execution_options().get("nara_write", False)
            conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

        return engine
    kwargs.update(_postgres_kwargs(pool_size, statement_timeout_ms, pg_settings, autocommit))
    return _create_engine(full, **kwargs)


def create_loop_engine(
    url: str | None,
    *,
    pool_size: int = 10,
    statement_timeout_ms: int = 0,
    pg_settings: dict[str, str] | None = None,
    autocommit: bool = False,
) -> AsyncEngine:
    """A PostgreSQL engine on psycopg's asyncio connections, for requests served on the server's event loop.

    The store's code stays synchronous: run inside ``greenlet_spawn`` (Store.run_on_loop), its
    ``AsyncEngine.sync_engine`` waits for the database by giving the event loop back instead of blocking a
    thread (SQLAlchemy's asyncio bridge). Same connection settings as ``create_engine``'s."""
    full = database_url(url)
    if make_url(full).get_backend_name() != "postgresql":
        raise ValueError("an event-loop engine is for PostgreSQL only")
    return create_async_engine(
        full, echo=False, **_postgres_kwargs(pool_size, statement_timeout_ms, pg_settings, autocommit)
    )


def _postgres_kwargs(
    pool_size: int, statement_timeout_ms: int, pg_settings: dict[str, str] | None, autocommit: bool
) -> dict[str, Any]:
    _widen_psycopg_parse_cache()
    kwargs: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": pool_size,
        "pool_pre_ping": False,
        "pool_recycle": 1800,
    }
    options = dict(pg_settings or {})
    if statement_timeout_ms:
        # Bounds every statement, so a pathological query answers with an error instead of hanging a worker.
        options["statement_timeout"] = str(int(statement_timeout_ms))
    if options:
        kwargs["connect_args"] = {"options": " ".join(f"-c {k}={v}" for k, v in options.items())}
    if autocommit:
        kwargs["isolation_level"] = "AUTOCOMMIT"
    return kwargs


def _widen_psycopg_parse_cache() -> None:
    """psycopg re-parses every query longer than 4 KiB or with more than 50 parameters (its cache limits);
    queries that carry the access-policy filter are longer. Raise the limits where the module has them."""
    try:
        from psycopg import _queries
    except ImportError:  # pragma: no cover - another driver
        return
    if getattr(_queries, "MAX_CACHED_STATEMENT_LENGTH", 0) < 32_768:
        _queries.MAX_CACHED_STATEMENT_LENGTH = 32_768
    if getattr(_queries, "MAX_CACHED_STATEMENT_PARAMS", 0) < 200:
        _queries.MAX_CACHED_STATEMENT_PARAMS = 200


def is_postgres(engine_or_conn: Any) -> bool:
    return bool(engine_or_conn.dialect.name == "postgresql")


def json_in(name: str, postgres: bool) -> ColumnElement[Any]:
    """A bound parameter carrying serialized JSON text into a JSON column."""
    param = bindparam(name, type_=Text())
    return cast(param, JSONB) if postgres else param


def json_out(col: ColumnElement[Any], postgres: bool) -> ColumnElement[Any]:
    """A JSON column read back as text."""
    return cast(col, Text) if postgres else col


def ensure_database(url: str, *, drop_first: bool = False) -> None:
    """Create the PostgreSQL database named in ``url`` if missing (no-op for SQLite)."""
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = _create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    name = parsed.database.replace('"', "")
    try:
        with admin.connect() as conn:
            if drop_first:
                conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            found = conn.exec_driver_sql("SELECT 1 FROM pg_database WHERE datname = %(n)s", {"n": name}).first()
            if not found:
                conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    finally:
        admin.dispose()


def drop_database(url: str) -> None:
    parsed = make_url(database_url(url))
    if parsed.get_backend_name() != "postgresql" or not parsed.database:
        return
    admin = _create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{parsed.database.replace(chr(34), "")}" WITH (FORCE)')
    finally:
        admin.dispose()
