"""Group commit of read-audit records on PostgreSQL: every read keeps its own record, written before it
answers (R-LOG-1), and concurrent reads of one process share the statement that writes them.

A read by id or a search may answer only after its audit record is committed, so that an acknowledged
request always has its record, even if the process is killed right after. Writing one record per
statement costs a round trip, a statement and its index work per request: measured, a quarter of a read's
throughput. Here a request that finds no write in progress becomes the writer: it writes every record
queued so far (its own among them) in one statement on its own autocommit connection. Requests that
arrive meanwhile queue their records and wait; when the write is done, one of them writes the next
group. Alone, a request writes just its own record, as before; under load, groups form by themselves.

Only reads on PostgreSQL's autocommit read pool take this path (a write's record stays in the write's
own transaction), and only while the access-rule store is readable (the statement looks protected
identity up in it; with the store unreadable the record is written alone without that lookup, R-BLK-5).
A failed group is written again record by record, so one bad record fails only its own request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from nara.fhir.outcome import FhirError
from nara.security.audit import AuditRecord, now_utc, record, record_many
from nara.store.store import translate_db_error

MAX_GROUP = 256  # records per statement; a longer queue is written by several statements in turn


@dataclass
class _Pending:
    rec: AuditRecord
    at: datetime
    seq: int | None = None
    error: BaseException | None = None


@dataclass
class GroupStats:
    """Counters for tests and operations: how many statements wrote how many records."""

    statements: int = 0
    records: int = 0
    largest: int = 0
    retried: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, size: int) -> None:
        with self.lock:
            self.statements += 1
            self.records += size
            self.largest = max(self.largest, size)


class GroupCommit:
    """Writes read-audit records of concurrent requests together; each caller returns once its record is
    committed (or raises when it could not be written)."""

    def __init__(self, max_group: int = MAX_GROUP) -> None:
        self.max_group = max_group
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Pending] = []
        self._writing = False
        self.stats = GroupStats()

    def record(self, conn: Connection, rec: AuditRecord) -> int:
        """Write ``rec`` (with others queued meanwhile) using ``conn``, an autocommit PostgreSQL connection."""
        pending = _Pending(rec, now_utc())
        with self._cond:
            self._queue.append(pending)
            while pending.seq is None and pending.error is None:
                if self._writing:
                    self._cond.wait()
                    continue
                group, self._queue = self._queue[: self.max_group], self._queue[self.max_group :]
                self._writing = True
                self._cond.release()
                try:
                    self._write(conn, group)
                finally:
                    self._cond.acquire()
                    self._writing = False
                    self._cond.notify_all()
        if pending.error is not None:
            raise _as_fhir_error(pending.error)
        assert pending.seq is not None
        return pending.seq

    def _write(self, conn: Connection, group: list[_Pending]) -> None:
        try:
            if len(group) == 1:
                p = group[0]
                p.seq = record(conn, p.rec, p.at)
            else:
                for p, seq in zip(group, record_many(conn, [(p.rec, p.at) for p in group]), strict=True):
                    p.seq = seq
            self.stats.add(len(group))
            return
        except Exception as exc:
            if len(group) == 1:
                group[0].error = exc
                return
        except BaseException as exc:  # interrupted: no one in the group may wait for ever
            for p in group:
                p.error = exc
            raise
        # The group failed: write its records one by one, so that only a bad record fails its request.
        with self.stats.lock:
            self.stats.retried += 1
        for p in group:
            try:
                p.seq = record(conn, p.rec, p.at)
                self.stats.add(1)
            except Exception as exc:
                p.error = exc


def _as_fhir_error(exc: BaseException) -> BaseException:
    """The error for a request whose record could not be written: nothing is shown without its record."""
    if isinstance(exc, FhirError):
        return exc
    if isinstance(exc, DBAPIError):
        err = translate_db_error(exc)
        err.__cause__ = exc
        return err
    if isinstance(exc, Exception):
        err = FhirError(500, "exception", "The access could not be logged; nothing is shown")
        err.__cause__ = exc
        return err
    return exc
