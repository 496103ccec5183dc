"""The read-audit outbox (nara.security.audit_outbox): on PostgreSQL a read's record is in a local spool file
before the read answers, and in the log once drained; each record is inserted once, whatever the drainers."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import event, func, select, text

from nara.config import Settings
from nara.security import audit
from nara.security import audit_outbox as audit_outbox_module
from nara.security.actors import Actor
from nara.security.audit_outbox import (
    DRAIN_BATCH,
    MAX_FILE_BYTES,
    Outbox,
    OutboxBacklog,
    OutboxError,
    database_tag,
    drain,
    pending_files,
)
from nara.security.gate import SecuritySettings
from nara.security.schema import audit_access, audit_event, audit_outbox, drop_guard_statements, install_guards
from nara.server.app import create_app
from nara.store.database import create_engine, drop_database, ensure_database
from nara.store.migrate import upgrade
from nara.store.store import Store
from tests.conftest import Backend, LiveServer, ServerThread, _free_port, system_token, token, wait_healthy
from tests.security.region import Region, build_region, observation


@pytest.fixture
def pg(backend: Backend) -> Backend:
    if backend.name != "postgres":
        pytest.skip("the read-audit outbox is PostgreSQL's (on SQLite a read's record is one local insert)")
    return backend


@dataclass
class OutboxServer:
    url: str
    spool: Path
    store: Store
    outbox: Outbox  # the app's writer
    settings: SecuritySettings  # the running app's


@pytest.fixture
def outbox_server(pg: Backend, store: Store, tmp_path: Path) -> Iterator[OutboxServer]:
    """A live server on the test database whose reads go through an outbox in ``tmp_path``. Its sealer waits
    an hour, so that the tests drain when they choose (a log reader still drains first)."""
    spool = tmp_path / "outbox"
    settings = Settings(database_url=pg.url)
    settings.store = store.settings
    settings.security.dev_idp = True
    settings.security.audit_outbox = str(spool)
    settings.security.seal_interval_seconds = 3600
    settings.security.drain_interval_seconds = 3600
    own = Store.from_url(pg.url, store.settings, pool_size=4)  # its own store: the session server keeps its hooks
    app = create_app(settings, own)
    port = _free_port()
    thread = ServerThread(app, port)
    thread.start()
    wait_healthy(f"http://127.0.0.1:{port}", 15)
    try:
        assert app.state.gate.outbox is not None
        yield OutboxServer(f"http://127.0.0.1:{port}/fhir", spool, own, app.state.gate.outbox, settings.security)
    finally:
        thread.stop()
        own.dispose()


@pytest.fixture
def region(outbox_server: OutboxServer) -> Iterator[Region]:
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {system_token()}"}
    with httpx.Client(base_url=outbox_server.url + "/", timeout=30, headers=headers) as c:
        reg = build_region(c)
        reg.post(observation(reg.patients["hidden"], "29463-7", 61.0), reg.staff["vc"].token())
        yield reg


def spooled(spool: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for p in pending_files(spool) for line in p.read_bytes().splitlines() if line]


def logged_reads(store: Store, resource_id: str) -> list[Any]:
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                select(audit_event).where(audit_event.c.action == "read", audit_event.c.resource_id == resource_id)
            ).all()
        )


def test_r_log_1_a_read_is_in_the_outbox_before_it_answers_and_in_the_log_once_drained(
    region: Region, outbox_server: OutboxServer, store: Store
) -> None:
    vc = region.staff["vc"]
    with region.as_(vc.token()) as c:
        found = c.get("Observation", params={"patient": region.patients["hidden"]}).json()
        obs = found["entry"][0]["resource"]["id"]
        assert c.get(f"Observation/{obs}").status_code == 200
    # Answered: the record is in the spool file, not yet in the log.
    lines = [r for r in spooled(outbox_server.spool) if r["e"]["action"] == "read" and r["e"]["resource_id"] == obs]
    assert len(lines) == 1
    assert lines[0]["e"]["user_id"] == vc.hsa and lines[0]["e"]["unit_id"] == vc.unit
    assert lines[0]["a"] == [
        {
            "patient_id": region.patients["hidden"],
            "owner_org": "SE2321000032-REG",
            "owner_unit": vc.unit,
            "access_type": "own-unit",
            "protected": False,  # looked up when drained, in the insert's own statement
            "action": None,
            "assertion_id": None,
        }
    ]
    assert logged_reads(store, obs) == []
    drained = drain(store.engine, outbox_server.spool)
    assert drained >= 2  # the search and the read (and the region's set-up reads, if any)
    (event,) = logged_reads(store, obs)
    # R-ID-3: every access to a patient with protected identity is flagged, by the drain's insert as by a direct one.
    assert "protected-identity" in (event.flags or "")
    with store.engine.connect() as conn:
        (acc,) = conn.execute(select(audit_access).where(audit_access.c.seq == event.seq)).all()
    assert acc.patient_id == region.patients["hidden"] and acc.access_type == "own-unit" and acc.protected
    assert drain(store.engine, outbox_server.spool) == 0  # nothing twice


def test_r_log_3_the_log_extract_shows_a_read_made_a_moment_ago(region: Region, outbox_server: OutboxServer) -> None:
    anna = region.patients["anna"]
    with region.as_(region.staff["hsv"].token()) as c:
        assert c.get(f"Patient/{anna}").status_code == 200
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        r = c.get(f"Patient/{anna}/$log-extract")
    assert r.status_code == 200, r.text
    assert "Hemsjukvården Kumla" in r.text  # the municipal nurse's read, made a moment ago


def test_r_log_4_an_auditor_reading_the_log_sees_reads_not_yet_drained_by_the_sealer(
    region: Region, outbox_server: OutboxServer, store: Store
) -> None:
    anna = region.patients["anna"]
    with region.as_(region.staff["vc2"].token()) as c:
        assert c.get(f"Patient/{anna}").status_code == 200
    with region.as_(region.staff["audit"].token()) as c:
        r = c.get("AuditEvent", params={"agent": region.staff["vc2"].hsa})
    assert r.status_code == 200, r.text
    assert any(
        e["resource"]["entity"][0]["what"]["reference"] == f"Patient/{anna}"
        for e in r.json().get("entry", [])
        if e["resource"].get("entity")
    ), r.text


def test_a_read_whose_record_cannot_be_appended_answers_500_and_shows_nothing(
    region: Region, outbox_server: OutboxServer, tmp_path: Path
) -> None:
    # The writer's next file cannot be made: its directory's place is taken by a file (as a full or lost disk).
    blocked = tmp_path / "not-a-directory"
    blocked.write_text("taken")
    outbox_server.outbox.close()
    outbox_server.outbox.directory = blocked
    anna = region.patients["anna"]
    with region.as_(region.staff["vc"].token()) as c:
        r = c.get(f"Patient/{anna}")
    assert r.status_code == 500
    assert "Andersson" not in r.text and "could not be logged" in r.text


def test_r_log_3_a_backlog_larger_than_a_request_may_drain_answers_503_and_each_try_drains_more(
    region: Region, outbox_server: OutboxServer
) -> None:
    """After the sealer was down, the outbox may hold more than a log reader's request can drain in its time
    (NARA_AUDIT_READER_DRAIN_SECONDS): the patient gets 503 with Retry-After, never an extract without her
    latest accesses; what each try drained stays in the log, and once the backlog is in, the extract shows
    them."""
    anna = region.patients["anna"]
    with region.as_(region.staff["hsv"].token()) as c:
        assert c.get(f"Patient/{anna}").status_code == 200  # in the server's own spool file
    backlog = writer_for(outbox_server.store, outbox_server.spool)  # another process's file, as after an outage
    for i in range(DRAIN_BATCH * 2 + 100):
        backlog.append(_record(i), audit.now_utc())
    outbox_server.settings.reader_drain_seconds = 0  # a batch's worth, then the answer
    answers = []
    with region.as_(token(region.pnr["anna"], "citizen")) as c:
        for _ in range(3):
            r = c.get(f"Patient/{anna}/$log-extract")
            answers.append(r.status_code)
            if r.status_code == 503:
                assert r.headers["Retry-After"] == "60"
                assert r.json()["issue"][0]["code"] == "transient" and "kB waiting" in r.text
                assert "Traceback" not in r.text
    backlog.close()
    assert answers == [503, 503, 200]
    assert "Hemsjukvården Kumla" in r.text  # the municipal nurse's read
    assert sum(1 for i in logged_ids(outbox_server.store) if i.startswith("obs-")) == DRAIN_BATCH * 2 + 100


def test_a_log_readers_drain_waits_for_another_drainer_no_longer_than_its_time(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """Another drainer (the sealer) holds a file's row while it drains: a log reader's drain waits for it only
    until its deadline, then says records wait (503 for the reader), not until the statement timeout."""
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    assert drain(store.engine, spool) == 1  # the file has its row
    writer.append(_record(2), audit.now_utc())
    holder = store.engine.connect()
    try:
        holder.begin()
        holder.execute(select(audit_outbox.c.drained).with_for_update())  # as a drainer in its transaction
        released = threading.Timer(8.0, holder.rollback)  # never longer than this, if the wait were unbounded
        released.start()
        started = time.monotonic()
        with pytest.raises(OutboxBacklog):
            drain(store.engine, spool, time.monotonic() + 0.5)
        waited = time.monotonic() - started
        released.cancel()
    finally:
        holder.rollback()
        holder.close()
    assert waited < 3.0
    assert drain(store.engine, spool) == 1  # once the other drainer is done, the record goes in
    writer.close()
    assert logged_ids(store) == ["obs-1", "obs-2"]


def test_a_drain_past_its_deadline_keeps_what_it_inserted_and_says_what_waits(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    for i in range(DRAIN_BATCH + 10):
        writer.append(_record(i), audit.now_utc())
    (path,) = pending_files(spool)
    with pytest.raises(OutboxBacklog) as late:
        drain(store.engine, spool, deadline=time.monotonic())
    assert _count(store) == DRAIN_BATCH  # one batch, committed
    assert 0 < late.value.waiting_bytes < path.stat().st_size // 100  # the ten records left
    assert drain(store.engine, spool, deadline=time.monotonic()) == 10  # the rest fits in one batch
    assert logged_ids(store) == sorted(f"obs-{i}" for i in range(DRAIN_BATCH + 10))


def test_a_drain_past_its_deadline_stops_between_small_files_and_not_when_nothing_waits(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """Many small files (a worker that kept restarting leaves one each) bound a reader's drain as one large file
    does: past the deadline, once a batch's worth is in, the next file waits. A drain that ends exactly on a
    batch's end has nothing waiting, and says so."""
    spool = tmp_path / "spool"
    for f in range(4):
        writer = writer_for(store, spool)
        for i in range(1500):
            writer.append(_record(f * 10_000 + i), audit.now_utc())
        writer.close()  # the process is gone: a finished file
    files = pending_files(spool)
    assert len(files) == 4
    with pytest.raises(OutboxBacklog) as late:
        drain(store.engine, spool, deadline=time.monotonic())
    assert _count(store) == 3000  # two files: the second still below a batch's worth when it began
    assert pending_files(spool) == files[2:]
    assert late.value.waiting_bytes == sum(p.stat().st_size for p in files[2:])
    assert drain(store.engine, spool) == 3000 and pending_files(spool) == []

    exact = writer_for(store, spool)
    for i in range(DRAIN_BATCH):
        exact.append(_record(50_000 + i), audit.now_utc())
    exact.close()
    assert drain(store.engine, spool, deadline=time.monotonic()) == DRAIN_BATCH  # no 503 for nothing waiting
    assert pending_files(spool) == []


def writer_for(store: Store, spool: Path, max_file_bytes: int = MAX_FILE_BYTES) -> Outbox:
    """A process's outbox writer for the test database, as the gate makes it."""
    return Outbox(spool, lambda: database_tag(store.engine), max_file_bytes)


def _record(i: int) -> audit.AuditRecord:
    actor = Actor(kind="system", subject="outbox-test", client_id="outbox-test", policy_off=True)
    return audit.AuditRecord(
        "read",
        "permit",
        actor,
        "Observation",
        f"obs-{i}",
        f"GET /Observation/obs-{i}",
        accesses=[audit.Access(f"pat-{i % 7}", "SE2321000032-REG", None, "system")],
    )


def _refused_line(i: int) -> bytes:
    """A spool line whose record the database refuses: PostgreSQL text cannot hold a NUL (a worker's own records
    never have one, ``audit._event_params`` replaces it)."""
    return orjson.dumps({"e": {**audit.record_row(_record(i), audit.now_utc())["e"], "user_name": "a\x00b"}, "a": []})


def logged_ids(store: Store) -> list[str]:
    """The resource ids of every record in the log, sorted (each once per record)."""
    with store.engine.connect() as conn:
        return sorted(r[0] for r in conn.execute(select(audit_event.c.resource_id)))


def _count(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_event)).scalar_one())


def test_concurrent_drainers_insert_each_record_once_and_delete_only_finished_files(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool, max_file_bytes=20_000)  # several files: the writer moves on past 20 kB
    for i in range(600):
        writer.append(_record(i), audit.now_utc())
    files = pending_files(spool)
    assert len(files) > 2
    errors: list[BaseException] = []

    def run() -> None:
        try:
            drain(store.engine, spool)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    with store.engine.connect() as conn:
        rows = conn.execute(select(audit_outbox.c.file, audit_outbox.c.drained)).all()
    assert logged_ids(store) == sorted(f"obs-{i}" for i in range(600))  # each once
    # The files the writer moved on from are gone; the one it still holds stays, drained to its end.
    assert pending_files(spool) == [files[-1]]
    assert [(f, n) for f, n in rows] == [(files[-1].name, files[-1].stat().st_size)]
    writer.close()  # the writer is done with it: the next drain removes it, and inserts nothing again
    assert drain(store.engine, spool) == 0
    assert pending_files(spool) == [] and _count(store) == 600
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_outbox)).scalar_one() == 0


def test_a_record_still_being_written_waits_for_the_next_drain(pg: Backend, store: Store, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    (path,) = pending_files(spool)
    whole = orjson.dumps(audit.record_row(_record(2), audit.now_utc())) + b"\n"
    assert writer._fd is not None
    os.write(writer._fd, whole[:40])  # the writer is inside its write: half a line is there
    assert drain(store.engine, spool) == 1
    os.write(writer._fd, whole[40:])
    assert drain(store.engine, spool) == 1
    assert _count(store) == 2 and path.exists()


def test_a_killed_writers_half_line_is_dropped_and_its_file_removed(pg: Backend, store: Store, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    (path,) = pending_files(spool)
    assert writer._fd is not None
    os.write(writer._fd, b'{"e": {"action": "re')  # killed inside write(): never acknowledged
    writer.close()  # the lock goes with the process
    assert drain(store.engine, spool) == 1
    assert not path.exists() and _count(store) == 1


def test_a_changed_line_is_kept_for_the_operator_and_not_inserted(pg: Backend, store: Store, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    assert writer._fd is not None
    os.write(writer._fd, b"not a record\n")
    writer.append(_record(2), audit.now_utc())
    writer.close()
    assert drain(store.engine, spool) == 2
    assert _count(store) == 2
    assert (spool / "rejected.lines").read_bytes() == b"not a record\n"
    assert stat.S_IMODE((spool / "rejected.lines").stat().st_mode) == 0o600  # log data: the service's only


def test_r_log_1_a_nul_in_a_query_is_logged_and_stops_no_later_record(
    region: Region, outbox_server: OutboxServer, store: Store
) -> None:
    anna = region.patients["anna"]
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Patient/{anna}", params={"_elements": "id\x00"}).status_code == 200
        assert c.get("Observation", params={"patient": anna, "_sort": "\x00"}).status_code in (200, 400)
        assert c.get(f"Patient/{anna}").status_code == 200
    drain(store.engine, outbox_server.spool)
    requests = [e.request for e in logged_reads(store, anna)]
    # PostgreSQL text cannot hold a NUL: the request is logged with U+FFFD in its place, and the read after it too.
    assert f"GET Patient/{anna}?_elements=id\ufffd" in requests and f"GET Patient/{anna}" in requests
    assert not (outbox_server.spool / "rejected.lines").exists()


def test_a_record_the_database_refuses_is_kept_apart_and_every_other_still_drains(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    first = writer_for(store, spool)
    first.append(_record(1), audit.now_utc())
    # A record the database refuses and, in the same batch, a line that is no record: each is kept once, though
    # the batch is drained twice.
    refused = _refused_line(2)
    assert first._fd is not None
    os.write(first._fd, refused + b"\n" + b"not a record\n")
    first.append(_record(3), audit.now_utc())
    first.close()
    second = writer_for(store, spool)  # another worker's, later file
    second.append(_record(4), audit.now_utc())
    second.close()
    assert drain(store.engine, spool) == 3
    assert logged_ids(store) == ["obs-1", "obs-3", "obs-4"]
    assert audit.verify(store.engine).ok  # the chain went on from the last record that went in
    assert (spool / "rejected.lines").read_bytes() == b"not a record\n" + refused + b"\n"
    assert stat.S_IMODE((spool / "rejected.lines").stat().st_mode) == 0o600
    assert pending_files(spool) == []


def test_a_record_past_a_database_limit_is_kept_apart_and_does_not_hold_back_its_file(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """A program limit (SQLSTATE class 54, e.g. a value too large for an index row) refuses that record every
    time: it is kept apart like a data error, and the records after it in the same file are logged."""
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    for i in (1, 2, 3):
        writer.append(_record(i), audit.now_utc())
    writer.close()
    fault = (
        "CREATE FUNCTION test_limit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.resource_id = 'obs-2' THEN RAISE EXCEPTION 'index row size exceeds maximum' "
        "USING ERRCODE = '54000'; END IF; RETURN NEW; END $$",
        "CREATE TRIGGER test_limit BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION test_limit()",
    )
    with store.engine.begin() as conn:
        for stmt in fault:
            conn.execute(text(stmt))
    try:
        assert drain(store.engine, spool) == 2
    finally:
        with store.engine.begin() as conn:
            conn.execute(text("DROP TRIGGER test_limit ON audit_event"))
            conn.execute(text("DROP FUNCTION test_limit()"))
    assert logged_ids(store) == ["obs-1", "obs-3"]
    assert b'"obs-2"' in (spool / "rejected.lines").read_bytes()
    assert pending_files(spool) == [] and audit.verify(store.engine).ok


def test_a_write_the_full_disk_cut_short_leaves_no_part_before_the_next_record(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    (path,) = pending_files(spool)
    size = path.stat().st_size
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 30, hard))  # the disk fills up inside the next write
    try:
        with pytest.raises(OutboxError):
            writer.append(_record(2), audit.now_utc())  # the read answers 500 and shows nothing
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert path.stat().st_size == size  # cut back to the last whole record
    writer.append(_record(3), audit.now_utc())  # space again: acknowledged
    writer.close()
    drain(store.engine, spool)
    assert logged_ids(store) == ["obs-1", "obs-3"]
    assert not (spool / "rejected.lines").exists()


def test_threads_appending_at_once_each_get_their_record_logged_whole_and_once(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """A worker's request threads append at once, also while the writer moves on to a new file under them."""
    spool = tmp_path / "spool"
    writer = writer_for(store, spool, max_file_bytes=30_000)  # several files while the threads write
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def run(t: int) -> None:
        try:
            start.wait()
            for i in range(100):
                writer.append(_record(t * 1000 + i), audit.now_utc())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    files = pending_files(spool)
    assert len(files) > 3
    for path in files:  # every line is a whole record
        assert all(orjson.loads(line)["e"] for line in path.read_bytes().splitlines())
    assert drain(store.engine, spool) == 800
    assert pending_files(spool) == [files[-1]]  # the files it moved on from were finished, drained and removed
    writer.close()
    assert drain(store.engine, spool) == 0 and pending_files(spool) == []
    assert logged_ids(store) == sorted(f"obs-{t * 1000 + i}" for t in range(8) for i in range(100))
    assert not (spool / "rejected.lines").exists() and audit.verify(store.engine).ok


def test_requests_on_the_event_loop_appending_the_first_records_at_once_all_go_on(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """The first record asks the database for its tag. On the event loop (Store.run_on_loop) that wait lets
    another request run, which appends too: it must not find the writer's lock held by the waiting one (the
    loop's one thread would wait for itself, and every request of the worker with it)."""
    if not store.serves_on_loop:
        pytest.skip("reads run on the event loop on PostgreSQL")
    spool = tmp_path / "spool"

    def tag() -> str:
        with store.engine.connect() as conn:  # on the loop: awaited, the loop serves the others meanwhile
            conn.execute(text("SELECT pg_sleep(0.2)"))
        return database_tag(store.engine)

    writer = Outbox(spool, tag)

    async def appends() -> None:
        try:
            await asyncio.gather(*(store.run_on_loop(writer.append, _record(i), audit.now_utc()) for i in range(4)))
        finally:
            await store.close_loop()

    runner = threading.Thread(target=asyncio.run, args=(appends(),), daemon=True)
    runner.start()
    runner.join(timeout=20)
    assert not runner.is_alive(), "the appends waited for one another"
    writer.close()
    assert sorted(r["e"]["resource_id"] for r in spooled(spool)) == [f"obs-{i}" for i in range(4)]


def test_a_forked_child_neither_appends_to_nor_holds_its_parents_file(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    (parent_file,) = pending_files(spool)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child appends to a file of its own and lives on
        try:
            writer.append(_record(2), audit.now_utc())
            os.write(ready_w, b"x")
            time.sleep(30)
        finally:
            os._exit(0)
    try:
        os.read(ready_r, 1)
        writer.close()  # the parent is done with its file: it is finished although the child lives
        drain(store.engine, spool)
        assert not parent_file.exists()
        assert len(pending_files(spool)) == 1  # the child's, still held by the child
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    assert _count(store) == 2


def test_nara_serve_with_an_external_sealer_writes_reads_to_the_database(pg: Backend, tmp_path: Path) -> None:
    """Nothing of such a server drains an outbox, so it keeps none unless told to (and then warns)."""
    url = pg.url.rsplit("/", 1)[0] + f"/nara_external_{os.getpid()}"
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "NARA_AUDIT_OUTBOX"}
    env.update({"NARA_DEV_IDP": "true", "NARA_DATABASE_URL": url, "NARA_AUDIT_SEALER": "external"})
    cmd = [sys.executable, "-m", "nara.cli", "serve", "--port", str(port), "--database-url", url]
    proc = subprocess.Popen([*cmd, "--log-level", "warning"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", 60)
        auth = {"Authorization": f"Bearer {system_token()}", "Accept": "application/fhir+json"}
        r = httpx.get(f"http://127.0.0.1:{port}/fhir/Patient", params={"name": "marker-external"}, headers=auth)
        assert r.status_code == 200
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                logged = conn.execute(
                    select(func.count()).select_from(audit_event).where(audit_event.c.request.like("%marker-external%"))
                ).scalar_one()
        finally:
            engine.dispose()
        assert logged == 1  # in the log when the search answered
        assert not (tmp_path / "var" / "audit-outbox").exists()
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        drop_database(url)


def test_a_drainer_takes_only_its_own_databases_files(pg: Backend, store: Store, tmp_path: Path) -> None:
    """Two servers of different databases started in the same place share var/audit-outbox: neither may log the
    other's reads (in the wrong database, and missing from the right one)."""
    spool = tmp_path / "shared"
    ours = writer_for(store, spool)
    ours.append(_record(42), audit.now_utc())
    ours.close()
    other_url = pg.url.rsplit("/", 1)[0] + f"/nara_other_{os.getpid()}"
    ensure_database(other_url, drop_first=True)
    other = create_engine(other_url)
    try:
        upgrade(other)
        assert database_tag(other) != database_tag(store.engine)
        assert drain(other, spool) == 0
        with other.connect() as conn:
            assert conn.execute(select(func.count()).select_from(audit_event)).scalar_one() == 0
        assert drain(store.engine, spool) == 1 and _count(store) == 1
    finally:
        other.dispose()
        drop_database(other_url)


def _unsealed(store: Store) -> int:
    with store.engine.connect() as conn:
        return int(
            conn.execute(
                select(func.count()).select_from(audit_event).where(audit_event.c.chain_seq.is_(None))
            ).scalar_one()
        )


@pytest.fixture
def no_session_sealer(live_server: LiveServer) -> Iterator[None]:
    """The session's live server seals the same database every 0.2 s: stopped while a test counts what is still
    unsealed, started again after it."""
    gate = live_server.app.state.gate
    gate.stop_sealer()
    try:
        yield
    finally:
        gate.start_sealer()


def test_r_log_2_a_drained_read_is_sealed_as_it_is_inserted_with_what_the_drain_looked_up(
    no_session_sealer: None, region: Region, outbox_server: OutboxServer, store: Store
) -> None:
    """The drain chains its records in the insert (no second write of each row): the hash covers the protected
    identity the drain looked up, and a tampered drained record is found by ``nara audit verify``."""
    audit.seal_all(store.engine)  # the region's set-up
    hidden = region.patients["hidden"]
    with region.as_(region.staff["vc"].token()) as c:
        assert c.get(f"Patient/{hidden}").status_code == 200
        assert c.get(f"Patient/{region.patients['anna']}").status_code == 200
        # A write between the reads: its record is written with the write, unsealed until the sealer comes.
        assert c.post("Observation", json=observation(region.patients["anna"], "29463-7", 70.0)).status_code == 201
    assert _unsealed(store) == 1
    assert drain(store.engine, outbox_server.spool) >= 2
    assert _unsealed(store) == 1  # the reads are sealed; the write waits for the sealer
    (event,) = logged_reads(store, hidden)
    assert event.chain_seq is not None and event.hash is not None
    assert "protected-identity" in (event.flags or "")  # R-ID-3, looked up by the drain and hashed with it
    report = audit.verify(store.engine)
    assert report.ok and report.unsealed == 1 and report.checked == _count(store) - 1
    assert audit.seal_all(store.engine) == 1  # the write's record goes on the chain after the drained reads
    after = audit.verify(store.engine)
    assert after.ok and after.checked == report.checked + 1
    with store.engine.connect().execution_options(nara_write=True) as conn, conn.begin():
        for stmt in drop_guard_statements("postgresql"):
            conn.exec_driver_sql(stmt)
        conn.execute(audit_access.update().where(audit_access.c.seq == event.seq).values(protected=False))
        install_guards(conn, 1827)
    tampered = audit.verify(store.engine)
    assert not tampered.ok and tampered.first_bad_seq == event.seq


def test_r_log_2_drainers_sealers_and_writes_at_once_leave_one_unbroken_chain(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool, max_file_bytes=20_000)
    for i in range(600):
        writer.append(_record(i), audit.now_utc())
    writer.close()
    errors: list[BaseException] = []
    stop = threading.Event()

    def guarded(fn: Any) -> Any:
        def run() -> None:
            try:
                fn()
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        return run

    def writes() -> None:  # records written in their own transactions, as writes' are
        for i in range(40):
            with store.engine.begin() as conn:
                audit.record(conn, _record(1000 + i))

    def sealing() -> None:
        while not stop.is_set():
            audit.seal(store.engine)

    threads = [threading.Thread(target=guarded(lambda: drain(store.engine, spool))) for _ in range(3)]
    threads += [threading.Thread(target=guarded(writes)), threading.Thread(target=guarded(sealing))]
    for t in threads:
        t.start()
    for t in threads[:-1]:
        t.join()
    stop.set()
    threads[-1].join()
    assert not errors
    audit.seal_all(store.engine)
    report = audit.verify(store.engine)
    assert report.ok, report.problem
    assert report.checked == 640 and report.unsealed == 0 and _count(store) == 640


def test_a_line_whose_values_are_of_the_wrong_kind_is_kept_apart_and_not_chained(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    good = audit.record_row(_record(2), audit.now_utc())
    bad = [
        # The database would take these and store other values than the line says: the chain would not verify.
        {**good, "e": {**good["e"], "patient_count": "1"}},
        {**good, "e": {**good["e"], "recorded_at": "2026-12-07T10:00:00+01:00"}},
        {**good, "a": [{**good["a"][0], "protected": "false"}]},
        # Longer than its column: the database would refuse it.
        {**good, "e": {**good["e"], "user_id": "u" * 65}},
        # A value a NOT NULL column needs (the database would refuse it; here it would not even sort).
        {**good, "a": [{**good["a"][0], "patient_id": None}]},
    ]
    # Spaces past a varchar's length: PostgreSQL cuts them instead of refusing, and the hash is made of the cut
    # value, so the record is logged (as the database logs it without the outbox) and the chain verifies.
    spaced = {**good, "e": {**good["e"], "user_id": "u" * 64 + "   ", "resource_id": "obs-spaced"}}
    assert writer._fd is not None
    lines = [orjson.dumps(row) + b"\n" for row in bad]
    for line in [*lines, orjson.dumps(spaced) + b"\n"]:
        os.write(writer._fd, line)
    writer.append(_record(3), datetime(2026, 12, 7, 10, 0))  # a whole second: written without a fraction
    writer.close()
    assert drain(store.engine, spool) == 3
    assert logged_ids(store) == ["obs-1", "obs-3", "obs-spaced"]
    assert (spool / "rejected.lines").read_bytes() == b"".join(lines)
    assert audit.verify(store.engine).ok
    with store.engine.connect() as conn:
        stored = conn.execute(select(audit_event.c.user_id).where(audit_event.c.resource_id == "obs-spaced")).scalar()
    assert stored == "u" * 64


def test_a_database_error_that_is_not_about_a_record_rejects_nothing_and_the_next_drain_takes_all(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    """Only a record the database refuses for its data is kept apart; a failure of the database itself (here a
    serialization failure raised by a trigger for one record) rolls the drain back, and nothing is lost."""
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    for i in (1, 2, 3):
        writer.append(_record(i), audit.now_utc())
    writer.close()
    with store.engine.begin() as conn:
        conn.exec_driver_sql(
            "CREATE FUNCTION nara_test_fail() RETURNS trigger AS $$ BEGIN IF NEW.resource_id = 'obs-2' THEN "
            "RAISE EXCEPTION 'try again' USING ERRCODE = '40001'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "CREATE TRIGGER nara_test_fail BEFORE INSERT ON audit_event FOR EACH ROW EXECUTE FUNCTION nara_test_fail()"
        )
    try:
        assert drain(store.engine, spool) == 0  # the batch, then obs-2 alone, failed: logged, nothing kept apart
        assert _count(store) == 0 and not (spool / "rejected.lines").exists()
    finally:
        with store.engine.begin() as conn:
            conn.exec_driver_sql("DROP TRIGGER nara_test_fail ON audit_event")
            conn.exec_driver_sql("DROP FUNCTION nara_test_fail()")
    assert drain(store.engine, spool) == 3
    assert logged_ids(store) == ["obs-1", "obs-2", "obs-3"] and audit.verify(store.engine).ok
    assert pending_files(spool) == [] and not (spool / "rejected.lines").exists()


def test_an_idle_workers_file_costs_its_drainer_no_statement_until_a_record_is_appended(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(store.engine, "before_cursor_execute", count)
    try:
        assert drain(store.engine, spool) == 1
        assert statements  # the first drain locked the file's row and inserted the record
        statements.clear()
        assert drain(store.engine, spool) == 0
        assert statements == []  # nothing appended since: no transaction, not even the row's lock
        writer.append(_record(2), audit.now_utc())
        assert drain(store.engine, spool) == 1
        statements.clear()
        writer.close()  # finished: the next drain removes the file and its row, though nothing new is in it
        assert drain(store.engine, spool) == 0
        assert statements and pending_files(spool) == []
    finally:
        event.remove(store.engine, "before_cursor_execute", count)
    assert logged_ids(store) == ["obs-1", "obs-2"]
    with store.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_outbox)).scalar_one() == 0


def test_a_refused_line_that_cannot_be_kept_apart_rolls_the_drain_back_and_nothing_is_lost(
    pg: Backend, store: Store, tmp_path: Path
) -> None:
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    refused = _refused_line(2)
    assert writer._fd is not None
    os.write(writer._fd, refused + b"\n")
    writer.append(_record(3), audit.now_utc())
    writer.close()
    (spool / "rejected.lines").mkdir()  # the operator's file cannot be written (as on a full or read-only disk)
    assert drain(store.engine, spool) == 0  # logged as an error; the offset did not move past the line
    assert _count(store) == 0 and len(pending_files(spool)) == 1
    (spool / "rejected.lines").rmdir()
    assert drain(store.engine, spool) == 2
    assert logged_ids(store) == ["obs-1", "obs-3"]
    assert (spool / "rejected.lines").read_bytes() == refused + b"\n" and pending_files(spool) == []


def test_an_offset_that_went_back_is_drained_again_by_a_log_reader_at_once_and_by_the_sealer_soon(
    pg: Backend, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle skip trusts this process's memory of a file's offset for a few seconds only, and never for a log
    reader: after a restore or a failover that lost the last drain, the records are drained again."""
    spool = tmp_path / "spool"
    writer = writer_for(store, spool)
    writer.append(_record(1), audit.now_utc())
    assert drain(store.engine, spool) == 1
    (path,) = pending_files(spool)
    first = path.stat().st_size
    writer.append(_record(2), audit.now_utc())
    assert drain(store.engine, spool) == 1

    def lose_the_last_drain() -> None:  # as a restore to before it would
        with store.engine.connect().execution_options(nara_write=True) as conn, conn.begin():
            for stmt in drop_guard_statements("postgresql"):
                conn.exec_driver_sql(stmt)
            seqs = select(audit_event.c.seq).where(audit_event.c.resource_id == "obs-2").scalar_subquery()
            conn.execute(audit_access.delete().where(audit_access.c.seq.in_(seqs)))
            conn.execute(audit_event.delete().where(audit_event.c.resource_id == "obs-2"))
            conn.execute(audit_outbox.update().values(drained=first))
            install_guards(conn, 1827)

    lose_the_last_drain()
    assert drain(store.engine, spool) == 0  # the sealer trusts what it drained a moment ago
    assert drain(store.engine, spool, time.monotonic() + 60) == 1  # a log reader asks the database
    assert logged_ids(store) == ["obs-1", "obs-2"]
    lose_the_last_drain()
    monkeypatch.setattr(audit_outbox_module, "TRUST_SECONDS", 0.0)  # the trust has run out
    assert drain(store.engine, spool) == 1
    assert logged_ids(store) == ["obs-1", "obs-2"] and audit.verify(store.engine).ok
    writer.close()


def test_r_log_1_a_read_whose_record_the_log_would_refuse_answers_500_and_shows_nothing(
    region: Region, outbox_server: OutboxServer
) -> None:
    """A value too long for its column (here a system client's subject past 64 characters) would be refused by
    the database: the read fails as it fails without the outbox, instead of answering without its record."""
    anna = region.patients["anna"]
    with region.as_(token("urn:example:backend-service:" + "x" * 48, "system")) as c:
        r = c.get(f"Patient/{anna}")
    assert r.status_code == 500
    assert "Andersson" not in r.text and "could not be logged" in r.text
    assert not any(row["e"]["resource_id"] == anna for row in spooled(outbox_server.spool))
    assert not (outbox_server.spool / "rejected.lines").exists()
