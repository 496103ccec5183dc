"""The audit sealer: a process of its own under `nara serve` (ending with the server, even when the server is
killed), a thread beside an app otherwise, and nothing in an app told that another process seals."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import orjson

from nara.config import Settings
from nara.security import audit
from nara.security.sealer import SealerThread
from nara.server.app import create_app
from nara.store.database import create_engine, drop_database, ensure_database
from nara.store.migrate import upgrade
from nara.store.store import Store
from tests.conftest import Backend, ServerThread, _free_port, token, wait_healthy
from tests.security.region import JSON


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _is_sealer(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"multiprocessing" in cmd and b"resource_tracker" not in cmd


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _database(backend: Backend, tmp_path: Path, name: str) -> str:
    if backend.name == "sqlite":
        return f"sqlite:///{tmp_path}/{name}.db"
    return backend.url.rsplit("/", 1)[0] + f"/nara_{name}_{os.getpid()}"


def test_nara_serve_seals_in_a_process_of_its_own_that_ends_when_the_server_is_killed(
    backend: Backend, tmp_path: Path
) -> None:
    url = _database(backend, tmp_path, "sealer")
    port = _free_port()
    env = {**os.environ, "NARA_DEV_IDP": "true", "NARA_AUDIT_SEAL_SECONDS": "0.3"}
    env.pop("NARA_AUDIT_SEALER", None)
    cmd = [sys.executable, "-m", "nara.cli", "serve", "--port", str(port), "--database-url", url]
    proc = subprocess.Popen(
        [*cmd, "--log-level", "warning"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    engine = create_engine(url)
    try:
        wait_healthy(f"http://127.0.0.1:{port}")
        sealers = [p for p in _children(proc.pid) if _is_sealer(p)]
        assert len(sealers) == 1
        auth = {"Authorization": f"Bearer {token('sealer-test', 'system')}", **JSON}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}/fhir/", headers=auth, timeout=10) as c:
            pid = c.post("Patient", content=orjson.dumps({"resourceType": "Patient"})).json()["id"]
            for _ in range(5):
                assert c.get(f"Patient/{pid}").status_code == 200
        deadline = time.time() + 15
        report = audit.verify(engine)
        while (report.checked < 6 or report.unsealed) and time.time() < deadline:
            time.sleep(0.2)
            report = audit.verify(engine)
        assert report.ok and report.checked >= 6 and report.unsealed == 0
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        deadline = time.time() + 10
        while _alive(sealers[0]) and time.time() < deadline:
            time.sleep(0.1)
        assert not _alive(sealers[0]), "the sealer outlived the server that started it"
    finally:
        if proc.poll() is None:
            proc.kill()
        engine.dispose()
        if backend.name == "postgres":
            drop_database(url)


def test_an_app_told_that_another_process_seals_leaves_its_records_to_it(backend: Backend, tmp_path: Path) -> None:
    # A database of its own: the session's live server seals the shared test database in its own thread.
    url = _database(backend, tmp_path, "told")
    ensure_database(url)
    store = Store.from_url(url)
    upgrade(store.engine)
    settings = Settings(database_url=url)
    settings.security.dev_idp = True
    settings.security.sealer = "external"
    settings.security.seal_interval_seconds = 0.1
    app = create_app(settings, store)
    port = _free_port()
    server = ServerThread(app, port)
    server.start()
    try:
        auth = {"Authorization": f"Bearer {token('sealer-test', 'system')}", **JSON}
        wait_healthy(f"http://127.0.0.1:{port}")
        r = httpx.post(f"http://127.0.0.1:{port}/fhir/Patient", headers=auth, content=b'{"resourceType":"Patient"}')
        assert r.status_code == 201
        time.sleep(1.0)  # ten sealing intervals
        report = audit.verify(store.engine)
        assert report.ok and report.checked == 0 and report.unsealed >= 1
        # Whoever seals later (the server's sealer process, or `nara audit seal`) chains them.
        sealer = SealerThread(store.engine, 0.05)
        sealer.start()
        time.sleep(0.5)
        sealer.stop()
        report = audit.verify(store.engine)
        assert report.ok and report.unsealed == 0 and report.checked >= 1
    finally:
        server.stop()
        store.dispose()
        if backend.name == "postgres":
            drop_database(url)
