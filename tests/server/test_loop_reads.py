"""Which requests the server runs on its event loop (PostgreSQL), and that they behave as on a thread."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import func, select

from nara.security.schema import audit_event
from nara.server.app import runs_on_loop
from nara.store.crud import Tx
from nara.store.store import Store
from tests.conftest import LiveServer, system_token, token


def test_reads_searches_and_histories_run_on_the_loop_writes_and_operations_do_not() -> None:
    assert runs_on_loop("GET", "Patient/p1")
    assert runs_on_loop("HEAD", "Patient/p1")
    assert runs_on_loop("GET", "Patient/p1/_history/2")
    assert runs_on_loop("GET", "Patient/p1/_history")
    assert runs_on_loop("GET", "Observation")
    assert runs_on_loop("GET", "")  # a search of every type
    assert runs_on_loop("GET", "Patient/p1/Observation")  # a compartment search
    assert not runs_on_loop("GET", "metadata")
    assert not runs_on_loop("GET", "Patient/p1/$everything")
    assert not runs_on_loop("GET", "Patient/$log-extract")
    assert not runs_on_loop("POST", "Observation/_search")
    assert not runs_on_loop("POST", "Patient")
    assert not runs_on_loop("PUT", "Patient/p1")
    assert not runs_on_loop("DELETE", "Patient/p1")


@pytest.fixture
def where_transactions_run(store: Store) -> Iterator[list[bool]]:
    """For each transaction the live server opens: whether it ran on the event loop."""
    seen: list[bool] = []

    def hook(tx: Tx) -> None:
        seen.append(store.on_loop())

    store.tx_hooks.append(hook)
    try:
        yield seen
    finally:
        store.tx_hooks.remove(hook)


def test_the_live_server_answers_reads_on_the_loop_and_writes_on_a_thread(
    fhir: httpx.Client, store: Store, where_transactions_run: list[bool]
) -> None:
    if not store.serves_on_loop:
        pytest.skip("reads run on the event loop on PostgreSQL only")
    patient = {"resourceType": "Patient", "id": "loop1", "name": [{"family": "Holm", "given": ["Ida"]}]}
    assert fhir.put("Patient/loop1", json=patient).status_code in (200, 201)
    assert where_transactions_run and not any(where_transactions_run)

    for path in ("Patient/loop1", "Patient?family=Holm", "Patient/loop1/_history", "Patient/loop1/_history/1"):
        where_transactions_run.clear()
        answer = fhir.get(path)
        assert answer.status_code == 200, (path, answer.text)
        assert where_transactions_run and all(where_transactions_run), path
    assert fhir.get("Patient?family=Holm").json()["entry"][0]["resource"]["id"] == "loop1"

    where_transactions_run.clear()
    assert fhir.get("Patient/loop1/$everything").status_code == 200
    assert where_transactions_run and not any(where_transactions_run)


def test_a_tokens_first_read_runs_on_a_thread_and_the_next_on_the_loop(
    live_server: LiveServer, store: Store, where_transactions_run: list[bool]
) -> None:
    """Verifying a token not seen before may fetch the identity provider's keys over the network: that request
    keeps its thread, so that a slow identity provider does not hold the loop; once verified, the loop."""
    if not store.serves_on_loop:
        pytest.skip("reads run on the event loop on PostgreSQL only")
    fresh = token("loop-test-client", "system", scope="system/*.rs")
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {fresh}"}
    with httpx.Client(base_url=live_server.url + "/", timeout=30, headers=headers) as c:
        assert c.get("Patient?_count=1").status_code == 200
        first = list(where_transactions_run)
        where_transactions_run.clear()
        assert c.get("Patient?_count=1").status_code == 200
    assert first and not any(first)
    assert where_transactions_run and all(where_transactions_run)


def test_concurrent_searches_on_the_loop_each_get_their_record(
    live_server: LiveServer, fhir: httpx.Client, store: Store
) -> None:
    """Searches whose records the database writes directly (no outbox): on the loop they cannot wait on the
    group commit's lock, which another request on the same loop may hold; each writes its own record."""
    if not store.serves_on_loop:
        pytest.skip("reads run on the event loop on PostgreSQL only")
    patient = {"resourceType": "Patient", "id": "loop2", "name": [{"family": "Sjöberg", "given": ["Per"]}]}
    assert fhir.put("Patient/loop2", json=patient).status_code in (200, 201)

    def searched() -> int:
        with store.engine.connect() as conn:
            stmt = select(func.count()).where(audit_event.c.action == "search", audit_event.c.request.like("%Sj%"))
            return int(conn.execute(stmt).scalar_one())

    before = searched()
    headers = {"Accept": "application/fhir+json", "Authorization": f"Bearer {system_token()}"}

    def search(i: int) -> int:
        with httpx.Client(base_url=live_server.url + "/", timeout=30, headers=headers) as c:
            return c.get("Patient", params={"family": "Sjöberg", "_count": str(1 + i % 3)}).status_code

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(search, range(48)))
    assert statuses == [200] * 48
    assert searched() - before == 48
