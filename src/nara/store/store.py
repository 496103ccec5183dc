"""The store: an engine plus the transaction boundary every operation goes through."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError, OperationalError

from nara.fhir.outcome import FhirError
from nara.store.crud import Tx
from nara.store.database import create_engine, is_postgres

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


# Write hooks every new Store starts with: derived indexes that must never miss a write (e.g. the access
# rules derived from Consent and EpisodeOfCare). Upper layers register them at import (plugin pattern),
# so the store itself does not depend on them.
DEFAULT_WRITE_HOOKS: list[Callable[..., None]] = []


def register_write_hook(hook: Callable[..., None]) -> None:
    if hook not in DEFAULT_WRITE_HOOKS:
        DEFAULT_WRITE_HOOKS.append(hook)


class Store:
    def __init__(
        self, engine: Engine, settings: StoreSettings | None = None, read_engine: Engine | None = None
    ) -> None:
        self.engine = engine
        # PostgreSQL: reads run in autocommit on their own pool (no BEGIN/COMMIT round trips); the audit
        # record a read writes commits without waiting for the WAL flush (see docs/adr/0003).
        self.read_engine = read_engine
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
        if is_postgres(engine) and settings.autocommit_reads:
            read_engine = create_engine(
                url,
                pool_size=pool_size,
                statement_timeout_ms=settings.statement_timeout_ms,
                pg_settings=read_settings,
                autocommit=True,
            )
        store = cls(engine, settings, read_engine)
        store.engine_statement_timeout_ms = settings.statement_timeout_ms  # what the connections carry
        return store

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
            autocommit = not write and self.read_engine is not None
            engine = self.read_engine if autocommit and self.read_engine is not None else self.engine
            conn = engine.connect()
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
        self.engine.dispose()
        if self.read_engine is not None:
            self.read_engine.dispose()


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
