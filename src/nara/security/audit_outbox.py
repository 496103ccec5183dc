"""The read-audit outbox: a read's record is appended to a local spool file before the read answers, and
drained into the log tables in batches by the host's sealer (``nara serve``'s sealer process).

Why: writing a read's record to PostgreSQL before answering costs the database an insert of two rows
(five and two indexes) and a commit for every read, and the worker a larger statement or a round trip:
measured, more than half the database work of a read by id. Appended to a file, the record costs the
worker one ``write`` and the database a share of a batched insert (docs/adr/0004-audit-trail.md).

The guarantee (R-LOG-1, issue "an acknowledged request always has its record, even if the process is
killed right after"): the record is in the kernel's file before the response is sent. A killed process
loses nothing: the sealer, or ``nara audit drain`` after a crash of the whole server, drains it. What
the file does not survive is the loss of the host itself before the drain (a fraction of a second); the
database's asynchronous read commits had the same window for a database crash. ``NARA_AUDIT_OUTBOX=off``
writes every record to the database before answering instead.

Files and their life:
- Each process appends to its own file, ``<database>-<host>-<pid>-<start ns>.audit``, one JSON document a line
  (``audit.spool_line``: a ``record_row`` value). ``<database>`` names the database the records belong to
  (``database_tag``): a drainer takes only its own database's files, so two servers of different databases that share a
  directory (say production and training started in the same place) never log each other's reads. It
  holds an exclusive ``flock`` on the file while it may still append; it takes
  the lock before the file gets its name (a temporary name, then ``rename``), so a drainer never sees an
  unlocked file that a writer is about to use. It starts a new file past ``MAX_FILE_BYTES``.
- A drainer reads a file from the byte offset recorded for it in ``audit_outbox`` (same transaction as the
  insert of the records it read: each record is inserted exactly once, also with several drainers), up
  to the last complete line. It chains the records into the hash chain as it inserts them (holding the
  chain's lock for its transaction), so that a read's record is written once and never lies unsealed. A
  file whose lock it can take is finished (its writer moved on or died): once drained to its end it is
  deleted. An incomplete last line of a finished file was never acknowledged
  (the writer died inside ``write``) and is dropped with a warning.
- Log readers on the same host (``$log-extract``, ``AuditEvent``, ``$log-review``) drain first, so that a
  patient sees an access made a moment ago. On another host the log shows it after that host's next drain
  (``NARA_AUDIT_DRAIN_SECONDS``, default 0.2 s).

Written here rather than taken from a library: what is needed is an append-only local file with an
offset kept in the same database transaction as the rows it became, which no queue library offers
without a broker of its own (a broker would be one more service to run and to keep durable).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from sqlalchemy import Connection, delete, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, OperationalError

from nara.security.audit import AuditRecord, insert_sealed, lock_chain, sealed_row, spool_line
from nara.security.schema import audit_outbox

log = logging.getLogger("nara.security.audit_outbox")

SUFFIX = ".audit"
MAX_FILE_BYTES = 64 * 1024 * 1024  # a writer starts a new file past this size
DRAIN_BATCH = 2000  # records inserted per statement and transaction
REJECTED = "rejected.lines"  # lines of a spool file that are not records (changed by hand), for the operator


class OutboxBacklog(Exception):
    """A drain ran out of its time with records still waiting (what it inserted stays inserted)."""

    def __init__(self, waiting_bytes: int) -> None:
        super().__init__(f"{waiting_bytes} bytes of records still waiting")
        self.waiting_bytes = waiting_bytes


class OutboxError(OSError):
    """The record could not be appended (disk full, spool gone): the read must not answer."""


class Outbox:
    """This process's writer: ``append`` returns once the record is in the spool file."""

    def __init__(self, directory: Path, tag: Callable[[], str], max_file_bytes: int = MAX_FILE_BYTES) -> None:
        self.directory = Path(directory)
        self.tag = tag  # the database's tag (database_tag), asked for when the first record is appended
        self._tag: str | None = None
        self.max_file_bytes = max_file_bytes
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._size = 0
        # A forked child must neither append to its parent's file nor keep it locked (then never finished).
        os.register_at_fork(after_in_child=self._forget_after_fork)

    def append(self, rec: AuditRecord, at: datetime) -> None:
        try:
            # As the log will store it; a record it would refuse (a value too long for its column) is refused now.
            line = spool_line(rec, at)
        except ValueError as exc:  # the read must not answer: its record would never reach the log
            raise OutboxError(f"the audit record cannot be logged: {exc}") from exc
        if self._tag is None:
            # Asked before the lock is taken: the database's answer may be awaited on the event loop
            # (Store.run_on_loop), and another request on that loop, appending meanwhile, must not find the
            # lock held by a request that cannot go on until it has run.
            self._tag = self.tag()
        tag = self._tag
        with self._lock:
            try:
                if self._fd is None or self._size >= self.max_file_bytes:
                    self._open(tag)
                assert self._fd is not None
                written = os.write(self._fd, line)
            except OSError as exc:
                self._cut_back()
                raise OutboxError(f"the audit outbox {self.directory} cannot be written: {exc.strerror}") from exc
            if written != len(line):  # the disk filled up inside the write: never answer on a part
                self._cut_back()
                raise OutboxError(f"the audit outbox {self.directory} took {written} of {len(line)} bytes")
            self._size += written

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)  # releases the lock: the file is finished
            self._fd = None

    def _cut_back(self) -> None:
        """After a failed or partial write: the file ends where the last whole record ends, so that the next
        record does not follow a part of one; when it cannot be cut back, the next record goes to a new file."""
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, self._size)
        except OSError:
            os.close(self._fd)  # what is there stays; its partial last line is dropped when drained
            self._fd = None

    def _forget_after_fork(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # the child's copy only: the parent keeps its file and its lock
        self._fd = None
        self._lock = threading.Lock()

    def _open(self, tag: str) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        with suppress(PermissionError):
            os.chmod(self.directory, 0o700)  # log data: the service's user only, also when made by someone else
        name = f"{tag}-{socket.gethostname()}-{os.getpid()}-{time.time_ns()}{SUFFIX}"
        tmp = self.directory / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.rename(tmp, self.directory / name)
        except OSError:
            os.close(fd)
            raise
        self._fd, self._size = fd, 0


def pending_files(directory: Path, tag: str | None = None) -> list[Path]:
    """The spool files in ``directory`` (of the database ``tag`` when given), oldest first."""
    if not directory.is_dir():
        return []
    return sorted(
        (
            p
            for p in directory.iterdir()
            if p.name.endswith(SUFFIX) and not p.name.startswith(".") and (tag is None or p.name.startswith(f"{tag}-"))
        ),
        key=_started,
    )


_TAGS: dict[str, str] = {}


def database_tag(engine: Engine) -> str:
    """A short name of the database ``engine`` writes to: its cluster's system identifier and its name, hashed
    (the same whatever URL reaches it; another cluster or another database gives another tag)."""
    key = engine.url.render_as_string(hide_password=True)
    tag = _TAGS.get(key)
    if tag is None:
        with engine.connect() as conn:
            name = conn.execute(text("SELECT current_database()")).scalar_one()
            try:
                system = conn.execute(text("SELECT system_identifier FROM pg_control_system()")).scalar_one()
            except DBAPIError:  # a managed service may not grant it: the database's name alone, then
                conn.rollback()
                system = ""
        tag = hashlib.sha256(f"{system}/{name}".encode()).hexdigest()[:12]
        _TAGS[key] = tag
    return tag


def _started(path: Path) -> tuple[int, str]:
    try:
        return int(path.name[: -len(SUFFIX)].rsplit("-", 1)[1]), path.name
    except (IndexError, ValueError):
        return 0, path.name


def drain(engine: Engine, directory: Path, deadline: float | None = None) -> int:
    """Insert every complete record waiting in ``directory``'s spool files into the log; delete the files
    their writers are done with. Returns how many records were inserted.

    With a ``deadline`` (a ``time.monotonic()`` value; for a log reader's request), raises ``OutboxBacklog``
    when it has passed and records still wait, before their batch, once this drain has inserted at least
    ``DRAIN_BATCH`` records: every such drain makes that much progress, oldest files first, whatever else is
    appended meanwhile (it may pass the deadline by about two batches); what it inserted stays inserted, and
    the next drain goes on from there."""
    total = 0
    done = _Progress()
    files = pending_files(directory, database_tag(engine))  # another database's files are not this one's
    pending = set(files)
    for gone in [p for p in list(_committed) if p.parent == directory and p not in pending]:
        _committed.pop(gone, None)  # finished and removed (by this drainer or another)
    for i, path in enumerate(files):
        try:
            total += _drain_file(engine, path, deadline, done)
        except FileNotFoundError:
            continue  # drained and deleted by another drainer meanwhile
        except _PastDeadline:
            raise OutboxBacklog(_waiting(engine, files[i:])) from None
        except Exception:
            # One file's trouble (its database write failed) must not keep the other files out of the log.
            log.exception("draining %s failed; the other files are drained, it is tried again next time", path)
    return total


# How far each file was drained when this process last looked (by its path; the offset and when): a file
# whose size is still that offset has no new record, so an idle worker's file costs the sealer a transaction
# every TRUST_SECONDS instead of every NARA_AUDIT_DRAIN_SECONDS. Only drainers move a file's offset, and never
# past its size. The database is asked again after TRUST_SECONDS all the same, so that an offset that went
# back (a restore, a failover to a standby that had not seen the last drain) is drained again soon.
_committed: dict[Path, tuple[int, float]] = {}
TRUST_SECONDS = 5.0


class _PastDeadline(Exception):
    pass


class _Progress:
    """How many records one drain has taken so far (the deadline is looked at only after DRAIN_BATCH)."""

    def __init__(self) -> None:
        self.records = 0


def _waiting(engine: Engine, paths: list[Path]) -> int:
    """About how many bytes of ``paths`` are not yet drained (their sizes, less what the log has of them)."""
    sizes = {}
    for path in paths:
        with suppress(FileNotFoundError):
            sizes[path.name] = path.stat().st_size
    drained: dict[str, int] = {}
    # An estimate for the message: when the database cannot say, the file sizes alone will do.
    with suppress(DBAPIError), engine.connect() as conn:
        found = conn.execute(
            select(audit_outbox.c.file, audit_outbox.c.drained).where(audit_outbox.c.file.in_(sorted(sizes)))
        )
        drained = {name: int(n) for name, n in found}
    return sum(max(0, size - int(drained.get(name) or 0)) for name, size in sizes.items())


def _drain_file(engine: Engine, path: Path, deadline: float | None, done: _Progress) -> int:
    total = 0
    one_by_one = False  # after the database refused a batch: its records go in one at a time
    with open(path, "rb") as f:
        finished = _finished(f.fileno())  # decided before reading: a finished file gets no more lines
        known = _committed.get(path)
        if (
            deadline is None  # a log reader always asks the database
            and not finished
            and known is not None
            and os.fstat(f.fileno()).st_size == known[0]
            and time.monotonic() - known[1] < TRUST_SECONDS
        ):
            return 0  # nothing appended since this process's last drain of it: no transaction needed
        while True:
            rejected: list[tuple[bytes, str]] = []  # kept for the operator by the transaction that drains them
            try:
                with engine.connect() as conn, conn.begin() as txn:
                    if deadline is not None:
                        _bound_lock_waits(conn, deadline)
                    offset = _locked_offset(conn, path)  # one drainer at a time per file
                    if offset is None:
                        # Another drainer finished the file and removed it (and its row) while this one waited:
                        # a new row would start it again from its first record.
                        txn.rollback()
                        return total
                    f.seek(offset)
                    lines = _complete_lines(f, DRAIN_BATCH)
                    if lines and done.records >= DRAIN_BATCH and deadline is not None and time.monotonic() > deadline:
                        raise _PastDeadline  # records wait, and the time is up (the transaction is rolled back)
                    parsed = [(line, _parse(line, rejected)) for line in lines]
                    records = [(line, row) for line, row in parsed if row is not None]
                    rows = _insert_one_by_one(conn, records, rejected) if one_by_one else _insert(conn, records)
                    drained_to = offset + sum(len(line) for line in lines)
                    if lines:
                        conn.execute(
                            update(audit_outbox).where(audit_outbox.c.file == path.name).values(drained=drained_to)
                        )
                    # Kept for the operator before the offset moves past them: if this cannot be written, the
                    # transaction is rolled back and the lines stay to be drained again (not lost); a refused
                    # batch never gets here, so a line is kept once.
                    for line, why in rejected:
                        _reject(path, line, why)
            except _BatchRefused:
                one_by_one = True  # the transaction is rolled back: the same lines again, one at a time
                continue
            except OperationalError as exc:
                if deadline is not None and getattr(exc.orig, "sqlstate", None) == LOCK_NOT_AVAILABLE:
                    raise _PastDeadline from None  # another drainer holds the file (or the chain) past our time
                raise
            _committed[path] = (drained_to, time.monotonic())
            one_by_one = False
            total += len(rows)
            done.records += len(lines)
            if len(lines) < DRAIN_BATCH:
                break
        if finished:
            rest = f.read()
            if rest:
                log.warning("%s ends in %d bytes that were never a whole record; dropped", path.name, len(rest))
            # The file before its row: a drainer that finds the row gone checks that the file is gone too.
            path.unlink()
            with engine.begin() as conn:
                conn.execute(delete(audit_outbox).where(audit_outbox.c.file == path.name))
    return total


class _BatchRefused(Exception):
    pass


def _insert(conn: Connection, records: list[tuple[bytes, dict[str, Any]]]) -> list[dict[str, Any]]:
    """Insert the records in one statement, sealed into the chain as they are inserted (the chain's lock is
    held until the transaction ends). When the database refuses it, ``_BatchRefused``: the transaction is
    rolled back and the batch is drained again by ``_insert_one_by_one`` (no savepoint in the common case:
    it would cost two more round trips a drain)."""
    if not records:
        return []
    lock_chain(conn)
    try:
        insert_sealed(conn, [row for _, row in records])
    except DBAPIError:
        raise _BatchRefused from None
    return [row for _, row in records]


def _insert_one_by_one(
    conn: Connection, records: list[tuple[bytes, dict[str, Any]]], rejected: list[tuple[bytes, str]]
) -> list[dict[str, Any]]:
    """Insert the records one by one, each in a savepoint; a record the database refuses for what it holds
    (``refused_for_its_data``) goes to ``rejected`` rather than stop every later record. Any other error (a
    lost connection, a read-only database, a timeout) ends the drain: the transaction is rolled back and the
    next drain tries again."""
    if not records:
        return []
    lock_chain(conn)
    head = None
    inserted = []
    for line, row in records:
        try:
            with conn.begin_nested():
                after = insert_sealed(conn, [row], head)
            head = after  # the chain goes on from a record only once it is in
            inserted.append(row)
        except DBAPIError as exc:
            if not refused_for_its_data(exc):
                raise
            rejected.append((line, "the database refused it"))
    return inserted


def refused_for_its_data(exc: DBAPIError) -> bool:
    """Whether the database refused one record's insert for what the record holds, so that inserting it again
    would fail again and hold back every record after it: a data exception (SQLSTATE class 22), an integrity
    violation (23), or a program limit (54: a value too large for an index row, say). Anything else (a lost
    connection, a timeout, a read-only or full database) is the database's state and passes."""
    if isinstance(exc, (DataError, IntegrityError)):  # the driver's classes 22 and 23
        return True
    return (getattr(exc.orig, "sqlstate", None) or "").startswith("54")


def _reject(path: Path, line: bytes, why: str) -> None:
    """Keep a line that cannot become a log record for the operator (mode 600, beside the spool files)."""
    log.error("%s holds a line that cannot be logged (%s); kept in %s", path.name, why, REJECTED)
    fd = os.open(path.parent / REJECTED, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line if line.endswith(b"\n") else line + b"\n")
    finally:
        os.close(fd)


def _complete_lines(f: BinaryIO, limit: int) -> list[bytes]:
    """Up to ``limit`` whole lines (with their newline) from ``f``'s position; the file stays after them."""
    lines: list[bytes] = []
    while len(lines) < limit:
        start = f.tell()
        line = f.readline()
        if not line.endswith(b"\n"):
            f.seek(start)  # nothing, or a record still being written
            break
        lines.append(line)
    return lines


def _parse(line: bytes, rejected: list[tuple[bytes, str]]) -> dict[str, Any] | None:
    try:
        return sealed_row(orjson.loads(line))  # typed as stored: the chain's hash is made from these values
    except ValueError:  # orjson.JSONDecodeError is one
        pass
    # Not a record this module wrote (the file was changed): kept for the operator, not lost, not inserted.
    rejected.append((line, "not an audit record"))
    return None


def _finished(fd: int) -> bool:
    """Whether no writer holds the file any more (it moved on to a new file, or it died)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


LOCK_NOT_AVAILABLE = "55P03"  # PostgreSQL's SQLSTATE when lock_timeout ends a wait
MIN_LOCK_WAIT_MS = 50


def _bound_lock_waits(conn: Connection, deadline: float) -> None:
    """A log reader waits for another drainer's lock on a file's row, or for the chain's lock, no longer than
    its time allows (not until the statement timeout): then it answers that the log is still taking in recent
    accesses, as for a backlog."""
    wait_ms = max(MIN_LOCK_WAIT_MS, int((deadline - time.monotonic()) * 1000))
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {wait_ms}")


def _locked_offset(conn: Connection, path: Path) -> int | None:
    """How far ``path`` has been drained, its row locked until the transaction ends (created at 0); None when
    the file is gone (another drainer finished it while this one waited for its row)."""
    locked = select(audit_outbox.c.drained).where(audit_outbox.c.file == path.name).with_for_update()
    value = conn.execute(locked).scalar_one_or_none()
    if value is None and path.exists():  # a new file: its row first (one statement a drain otherwise)
        conn.execute(pg_insert(audit_outbox).values(file=path.name, drained=0).on_conflict_do_nothing())
        value = conn.execute(locked).scalar_one_or_none()
    return None if value is None or not path.exists() else int(value)
