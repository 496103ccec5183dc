"""Test fixtures: the store and a real HTTP server on both SQLite and PostgreSQL.

PostgreSQL comes from ``NARA_TEST_POSTGRES_URL`` (default: postgres@127.0.0.1:5432, trust auth). Each
pytest worker gets its own database, created and migrated at the start and dropped at the end. In CI
(``CI=true``) an unreachable PostgreSQL fails the run; elsewhere its tests skip with a loud reason.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from sqlalchemy import text
from sqlalchemy.exc import OperationalError
from starlette.applications import Starlette

from nara.config import Settings
from nara.security.devidp import mint, signing_key
from nara.security.schema import drop_guard_statements, install_guards
from nara.server.app import create_app
from nara.store.database import create_engine, drop_database, ensure_database
from nara.store.migrate import upgrade
from nara.store.schema import metadata
from nara.store.store import Store, StoreSettings

PG_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BACKENDS = ["sqlite", "postgres"]


def shared_data_dir() -> Path:
    return Path(os.environ.get("NARA_SHARED_DATA", str(SHARED_DATA)))


def _pg_base() -> str:
    return os.environ.get("NARA_TEST_POSTGRES_URL", PG_DEFAULT)


def _pg_reachable(url: str) -> str | None:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as e:
        return str(e).splitlines()[0]
    finally:
        engine.dispose()


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


@dataclass
class Backend:
    name: str
    url: str
    store: Store


def _make_backend(name: str, tmp_root: Path) -> Iterator[Backend]:
    if name == "sqlite":
        url = f"sqlite:///{tmp_root}/nara-{_worker()}.db"
    else:
        base = _pg_base()
        problem = _pg_reachable(base)
        if problem is not None:
            message = f"PostgreSQL at {base} is not reachable ({problem})"
            if os.environ.get("CI", "").lower() == "true":
                pytest.fail(f"{message}; CI requires PostgreSQL", pytrace=False)
            pytest.skip(f"!!! SKIPPING POSTGRESQL TESTS: {message}")
        dbname = f"nara_test_{_worker()}_{uuid.uuid4().hex[:8]}"
        url = base.rsplit("/", 1)[0] + "/" + dbname
        ensure_database(url, drop_first=True)
    migrate_engine = create_engine(url)
    upgrade(migrate_engine)
    migrate_engine.dispose()
    # Built exactly as the server builds it (on PostgreSQL: a write pool and an autocommit read pool).
    store = Store.from_url(url, StoreSettings(statement_timeout_ms=20_000))
    try:
        yield Backend(name, url, store)
    finally:
        store.dispose()
        if name == "postgres":
            drop_database(url)


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    yield from _make_backend(request.param, tmp_path_factory.mktemp(request.param))


def truncate(store: Store) -> None:
    """Empty every table (the audit guards are lifted for the test harness and put back)."""
    for attempt in range(5):  # TRUNCATE can deadlock with the live server's audit sealer: retry
        try:
            _truncate(store)
            return
        except OperationalError as e:
            if "deadlock" not in str(e.orig) or attempt == 4:
                raise


def _truncate(store: Store) -> None:
    with store.engine.connect().execution_options(nara_write=True) as conn, conn.begin():
        for stmt in drop_guard_statements(conn.dialect.name):
            conn.exec_driver_sql(stmt)
        if store.postgres:
            names = ", ".join(t.name for t in metadata.sorted_tables)
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY"))
        else:
            for t in metadata.sorted_tables:
                conn.execute(t.delete())
        install_guards(conn, 1827)


def reset_settings(store: Store) -> None:
    """Put the store's settings back to the test defaults (in place: the live server shares this object)."""
    fresh = StoreSettings(statement_timeout_ms=20_000)
    for f in dataclasses.fields(fresh):
        setattr(store.settings, f.name, getattr(fresh, f.name))


@pytest.fixture
def store(backend: Backend) -> Store:
    """An empty store on the current backend."""
    truncate(backend.store)
    reset_settings(backend.store)
    return backend.store


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(root: str, seconds: float = 20) -> None:
    """Wait until the server at ``root`` answers ``/healthz``; fail the test if it does not within ``seconds``."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            if httpx.get(root + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"the server at {root} did not start within {seconds:g} s")


class ServerThread(threading.Thread):
    def __init__(self, app: object, port: int) -> None:
        super().__init__(daemon=True)
        config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        self.server.run()

    def stop(self) -> None:
        self.server.should_exit = True
        self.join(timeout=10)


@dataclass
class LiveServer:
    url: str  # FHIR base
    root: str
    settings: Settings
    backend: Backend
    app: Starlette  # the running app (its state: store, gate)


@pytest.fixture(scope="session")
def live_server(backend: Backend) -> Iterator[LiveServer]:
    """A real uvicorn server on a free loopback port, serving the current backend."""
    settings = Settings(database_url=backend.url)
    settings.explain_enabled = True
    settings.store = backend.store.settings
    settings.security.dev_idp = True
    settings.security.seal_interval_seconds = 0.2
    app = create_app(settings, backend.store)
    port = _free_port()
    thread = ServerThread(app, port)
    thread.start()
    root = f"http://127.0.0.1:{port}"
    wait_healthy(root, 15)
    try:
        yield LiveServer(root + "/fhir", root, settings, backend, app)
    finally:
        thread.stop()


@pytest.fixture
def fhir(live_server: LiveServer, store: Store) -> Iterator[httpx.Client]:
    """An HTTP client against the live server with an empty store, as a system client (policy off, audited)."""
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {system_token()}"}
    with httpx.Client(base_url=live_server.url + "/", timeout=30, headers=headers) as c:
        yield c


@pytest.fixture(scope="session", autouse=True)
def dev_idp_key(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The development identity provider's signing key, kept in a temporary folder for the test run."""
    path = tmp_path_factory.mktemp("idp") / "dev-idp-key.json"
    old = os.environ.get("NARA_DEV_IDP_KEY")
    os.environ["NARA_DEV_IDP_KEY"] = str(path)
    yield path
    if old is None:
        os.environ.pop("NARA_DEV_IDP_KEY", None)
    else:
        os.environ["NARA_DEV_IDP_KEY"] = old


def token(sub: str, kind: str, **kw: object) -> str:
    """A token from the development identity provider (see nara.security.devidp.mint)."""
    return mint(signing_key(), sub, kind, **kw)  # type: ignore[arg-type]


def system_token(scope: str = "system/*.cruds") -> str:
    return token("test-suite", "system", scope=scope)
