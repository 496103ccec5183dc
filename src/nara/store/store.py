"""The store: an engine plus the transaction boundary every operation goes through."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.util import greenlet_spawn

from nara.fhir.outcome import FhirError
from nara.store.crud import Tx
from nara.store.database import create_engine, create_loop_engine, is_postgres

log = logging.getLogger("nara.store")


@dataclass
class StoreSettings:
    validate: bool = True
    default_count: int = 20
    max_count: int = 1000
    max_or_values: int = 500
    max_chain_depth: int = 3
    max_include: int = 1000
    max_conditional_delete: int = 100
    default_total: str = "accurate"
    # Without ``_total`` in the query the count stops after this many matches: a larger result carries no
    # Bundle.total (a population query would otherwise count every match on every page, so its cost grew with
    # the data; measured at 11,500 patients: 616 ms counting all, 26 ms with this limit, 7 ms with no count).
    # ``_total=accurate`` always counts all; 0 turns the limit off (NARA_TOTAL_LIMIT).
    total_limit: int = 200
    statement_timeout_ms: int = 10_000
    # PostgreSQL: read requests in autocommit on a separate pool, and their audit records committed without
    # waiting for the WAL flush (a killed Nära process loses nothing; a PostgreSQL crash could lose the last
    # fraction of a second of read-audit records). Writes always commit durably.
    autocommit_reads: bool = True
    async_read_commit: bool = True
    generic_read_plans: bool = False
    # PostgreSQL: the server runs read requests on its event loop, on psycopg's asyncio connections, instead of
    # handing each to a thread (Store.run_on_loop; docs/adr/0005). Off: every request goes to the thread pool.
    loop_reads: bool = True


T = TypeVar("T")


@dataclass
class LoopEngines:
    """One event loop's engines (a connection pool belongs to the loop its connections wait on)."""

    loop: asyncio.AbstractEventLoop
    write: AsyncEngine
    read: AsyncEngine


# The store and engines of the request being run on an event loop by Store.run_on_loop (None elsewhere).
_on_loop: ContextVar[tuple[Store, LoopEngines] | None] = ContextVar("nara_store_on_loop", default=None)


# Write hooks every new Store starts with: derived indexes that must never miss a write (e.g. the access
# rules derived from Consent and EpisodeOfCare). Upper layers register them at import (plugin pattern),
# so the store itself does not depend on them.
DEFAULT_WRITE_HOOKS: list[Callable[..., None]] = []


def register_write_hook(hook: Callable[..., None]) -> None:
    if hook not in DEFAULT_WRITE_HOOKS:
        DEFAULT_WRITE_HOOKS.append(hook)


class Store:
    def __init__(
        self,
        engine: Engine,
        settings: StoreSettings | None = None,
        read_engine: Engine | None = None,
        loop_engines: Callable[[], tuple[AsyncEngine, AsyncEngine]] | None = None,
    ) -> None:
        self._engine = engine
        # PostgreSQL: reads run in autocommit on their own pool (no BEGIN/COMMIT round trips); the audit
        # record a read writes commits without waiting for the WAL flush (see docs/adr/0003).
        self._read_engine = read_engine
        # PostgreSQL: builds the (write, read) engines of an event loop for requests run on it (run_on_loop).
        self._loop_engines = loop_engines
        self._loops: dict[int, LoopEngines] = {}
        self.engine_statement_timeout_ms: int | None = None
        self.settings = settings or StoreSettings()
        self.postgres = is_postgres(engine)
        # Called as hook(tx, method, stored) after every write, inside its transaction (audit, access rules).
        self.write_hooks: list[Callable[..., None]] = list(DEFAULT_WRITE_HOOKS)
        # Called as hook(tx) when a transaction starts (e.g. the gate attaches the request's access policy).
        self.tx_hooks: list[Callable[[Tx], None]] = []

    @classmethod
    def from_url(cls, url: str | None = None, settings: StoreSettings | None = None, pool_size: int = 10) -> Store:
        settings = settings or StoreSettings()
        engine = create_engine(url, pool_size=pool_size, statement_timeout_ms=settings.statement_timeout_ms)
        read_engine = None
        read_settings: dict[str, str] = {}
        if settings.async_read_commit:
            read_settings["synchronous_commit"] = "off"
        if settings.generic_read_plans:
            # Off by default: measured, generic plans made staff searches 2-3x slower (the patient index was
            # not used for the policy-filtered page query), while reads by id gained little.
            read_settings["plan_cache_mode"] = "force_generic_plan"
        loop_engines = None
        if is_postgres(engine) and settings.autocommit_reads:
            read_engine = create_engine(
                url,
                pool_size=pool_size,
                statement_timeout_ms=settings.statement_timeout_ms,
                pg_settings=read_settings,
                autocommit=True,
            )
            if settings.loop_reads:
                timeout = settings.statement_timeout_ms

                def loop_engines() -> tuple[AsyncEngine, AsyncEngine]:
                    # The write pool serves only what a read request writes: a denial's record, a log reader's
                    # drain of the outbox.
                    write = create_loop_engine(url, pool_size=min(pool_size, 4), statement_timeout_ms=timeout)
                    read = create_loop_engine(
                        url,
                        pool_size=pool_size,
                        statement_timeout_ms=timeout,
                        pg_settings=read_settings,
                        autocommit=True,
                    )
                    return write, read

        store = cls(engine, settings, read_engine, loop_engines)
        store.engine_statement_timeout_ms = settings.statement_timeout_ms  # what the connections carry
        return store

    # ---- engines: the thread's, or the event loop's for a request run on it --------------------------
    @property
    def engine(self) -> Engine:
        here = self._here()
        return here.write.sync_engine if here is not None else self._engine

    @property
    def read_engine(self) -> Engine | None:
        here = self._here()
        return here.read.sync_engine if here is not None else self._read_engine

    def _here(self) -> LoopEngines | None:
        current = _on_loop.get()
        return current[1] if current is not None and current[0] is self else None

    def on_loop(self) -> bool:
        """Whether the caller is a request run on the event loop by ``run_on_loop`` (it must not wait on a
        thread's lock that another request on the same loop holds: that request could never go on)."""
        return self._here() is not None

    @property
    def serves_on_loop(self) -> bool:
        return self._loop_engines is not None

    async def run_on_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, synchronous store code, on the running event loop instead of a thread.

        ``fn`` runs in a greenlet (SQLAlchemy's asyncio bridge): where it waits for PostgreSQL, the loop serves
        other requests, and no thread hand-off or interpreter-lock contention comes with each statement
        (measured: docs/adr/0005). Its CPU work holds the loop, so only short requests should come here.
        Only for a store with loop engines (``serves_on_loop``)."""
        if self._loop_engines is None:
            raise RuntimeError("this store has no event-loop engines")
        loop = asyncio.get_running_loop()
        engines = self._loops.get(id(loop))
        if engines is None or engines.loop is not loop:
            for key in [k for k, e in self._loops.items() if e.loop.is_closed()]:
                del self._loops[key]  # a loop that has ended: its connections went with it
            write, read = self._loop_engines()
            engines = self._loops[id(loop)] = LoopEngines(loop, write, read)
        token = _on_loop.set((self, engines))
        try:
            return await greenlet_spawn(fn, *args)
        finally:
            _on_loop.reset(token)

    async def close_loop(self) -> None:
        """Close the running event loop's connections (a server's shutdown)."""
        engines = self._loops.pop(id(asyncio.get_running_loop()), None)
        if engines is not None:
            await engines.read.dispose()
            await engines.write.dispose()

    # Settings used directly by Tx.
    @property
    def validate(self) -> bool:
        return self.settings.validate

    @property
    def max_conditional_delete(self) -> int:
        return self.settings.max_conditional_delete

    @contextmanager
    def transaction(self, write: bool = True, records_audit: bool = False) -> Iterator[Tx]:
        """One database transaction: commits when the block ends, rolls back on any exception.

        ``records_audit``: a read that writes its audit record. On PostgreSQL it runs on the autocommit read
        pool; SQLite takes the write lock up front for it, because upgrading a read snapshot to a writer fails
        at once ("database is locked") when another connection (e.g. the audit sealer) committed meanwhile.
        """
        if records_audit and not self.postgres:
            write = True
        try:
            read_engine = None if write else self.read_engine
            autocommit = read_engine is not None
            conn = (read_engine or self.engine).connect()
        except OperationalError as exc:
            raise FhirError(503, "transient", "The database is not reachable; nothing was changed") from exc
        try:
            if write:
                conn = conn.execution_options(nara_write=True)
            with conn.begin():
                tx = Tx(self, conn, autocommit)
                for init in self.tx_hooks:
                    init(tx)
                yield tx
                tx.flush()
        except DBAPIError as exc:
            log.warning("database error, transaction rolled back: %s", str(exc.orig or exc).splitlines()[0])
            raise translate_db_error(exc) from exc
        finally:
            conn.close()

    def dispose(self) -> None:
        self._engine.dispose()
        if self._read_engine is not None:
            self._read_engine.dispose()
        # An event loop's connections are closed on that loop (close_loop); those of a loop that ended without
        # it went with the loop.
        self._loops.clear()


def translate_db_error(exc: DBAPIError) -> FhirError:
    """A database failure as a FHIR error that tells the client what happened, without internals."""
    text = str(exc.orig).lower() if exc.orig is not None else ""
    if "unique" in text or "duplicate key" in text:
        return FhirError(
            409, "conflict", "The write clashed with stored data (a concurrent write?); nothing was changed, retry"
        )
    if "statement timeout" in text or "canceling statement" in text:
        return FhirError(503, "too-costly", "The request took too long and was cancelled; nothing was changed")
    if "deadlock" in text or "could not serialize" in text or "database is locked" in text:
        return FhirError(503, "transient", "The database was busy; nothing was changed, retry the request")
    # SQLite reports a missing table or column as an OperationalError too: a fault of the schema, not the connection.
    schema_fault = any(sign in text for sign in ("no such table", "no such column", "syntax error"))
    if exc.connection_invalidated or (isinstance(exc, OperationalError) and not schema_fault):
        return FhirError(503, "transient", "The database connection failed; nothing was changed")
    return FhirError(500, "exception", "A database error occurred; nothing was changed")
