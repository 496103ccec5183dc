"""The benchmark suite's building blocks: synthetic data, the wrk plan script, profile summaries."""

from __future__ import annotations

import gzip
import os
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from bench.loadgen import DELETE_CREATED, Req, parse_wrk_output, run_wrk, write_plan

from bench import profiles, synth
from nara.fhir import validation


def test_synthetic_history_is_deterministic_and_valid_r4() -> None:
    first = synth.patient_history(7, observations=12)
    assert first == synth.patient_history(7, observations=12)
    assert first != synth.patient_history(8, observations=12)
    types = {r["resourceType"] for r in first}
    assert {"Patient", "Encounter", "Condition", "Observation", "MedicationRequest", "CarePlan"} <= types
    for res in first:
        assert validation.validate(res) == [], res["resourceType"]


def test_every_third_patient_has_an_open_task_for_their_municipality() -> None:
    tasks = [r for r in synth.patient_history(3, observations=0) if r["resourceType"] == "Task"]
    assert len(tasks) == 1
    assert tasks[0]["status"] == "requested"
    assert tasks[0]["owner"]["reference"] == f"Organization/{synth.municipality_org(3)}"
    assert not [r for r in synth.patient_history(4, observations=0) if r["resourceType"] == "Task"]


@pytest.mark.parametrize("rtype", synth.CRUD_TYPES)
def test_crud_bodies_are_valid_resources_without_ids(rtype: str) -> None:
    body = synth.crud_body(rtype, 5, synth.patient_id(1))
    assert body["resourceType"] == rtype
    assert "id" not in body
    assert validation.validate(body) == []


def test_vitals_transaction_posts_the_requested_number_of_observations() -> None:
    bundle = synth.vitals_transaction(100, seed=1, patients=10)
    assert bundle["type"] == "transaction"
    assert len(bundle["entry"]) == 100
    assert {e["request"]["method"] for e in bundle["entry"]} == {"POST"}
    assert validation.validate(bundle) == []


def test_patient_facts_match_the_generated_patient() -> None:
    facts = synth.patient_facts(42)
    pat = synth.patient(42)
    assert pat["id"] == facts.id
    assert pat["name"][0]["family"] == facts.family
    assert pat["birthDate"] == facts.birth_date


WRK_LINE = (
    'WRKJSON {"requests":200,"duration_us":2000000,"bytes":1,"errors":{"connect":0,"read":0,"write":0,'
    '"status":4,"timeout":1},"latency_us":{"min":100,"mean":900.0,"max":9000,"stdev":10.0,"p50":800,"p75":900,'
    '"p90":1000,"p95":1500,"p99":4000,"p999":8000},"status":{"2xx":196,"3xx":0,"4xx":4,"5xx":0}}'
)


def test_wrk_statistics_line_becomes_a_sample_in_milliseconds() -> None:
    s = parse_wrk_output("Running 2s test\n" + WRK_LINE + "\n")
    assert s["throughput"] == 100.0
    assert s["p50_ms"] == 0.8
    assert s["p99_ms"] == 4.0
    assert s["errors"] == 5  # 4 error statuses + 1 timeout
    assert s["error_rate"] == pytest.approx(5 / 200)


def test_a_measurement_without_completed_requests_reports_no_latency() -> None:
    line = WRK_LINE.replace('"requests":200', '"requests":0')
    s = parse_wrk_output(line)
    assert s["throughput"] == 0
    assert s["p50_ms"] is None and s["p99_ms"] is None
    assert s["incomplete"] is True


def test_plan_lines_refuse_bodies_that_would_break_the_format(tmp_path: Path) -> None:
    write_plan([Req("POST", "/fhir/Patient", {"resourceType": "Patient"})], tmp_path)
    with pytest.raises(ValueError):
        write_plan([Req("POST", "/fhir/Patient", b'{"a":\n1}')], tmp_path)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []
    created = 0
    lock = threading.Lock()

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            type(self).created += 1
            n = type(self).created
            self.seen.append(("POST", self.path))
        self._answer(201, {"Location": f"http://127.0.0.1/fhir/Patient/p{n}/_history/1"})

    def do_DELETE(self) -> None:
        with self.lock:
            self.seen.append(("DELETE", self.path))
        self._answer(204)

    def do_GET(self) -> None:
        with self.lock:
            self.seen.append(("GET", self.path))
        self._answer(404 if self.path.endswith("missing") else 200)

    def log_message(self, *args: Any) -> None:
        pass


def need_wrk() -> None:
    """wrk must be there in CI (`make test` installs it); elsewhere its absence skips with the fix."""
    if shutil.which("wrk") is None:
        message = "wrk is not installed (apt-get install -y wrk; `make test` installs it when missing)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI requires it", pytrace=False)
        pytest.skip(message)


def test_plan_script_replays_the_plan_and_deletes_only_what_it_created(tmp_path: Path) -> None:
    need_wrk()
    _Recorder.seen = []
    _Recorder.created = 0
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        plan = write_plan(
            [
                Req("POST", "/fhir/Patient", {"resourceType": "Patient"}),
                Req(DELETE_CREATED, "-"),
                Req("GET", "/fhir/Patient/missing"),
            ],
            tmp_path,
        )
        sample, command = run_wrk(
            f"http://127.0.0.1:{server.server_port}", plan, connections=1, seconds=1, base_path="/fhir"
        )
    finally:
        server.shutdown()
    posts = [p for m, p in _Recorder.seen if m == "POST"]
    deletes = [p for m, p in _Recorder.seen if m == "DELETE"]
    gets = [p for m, p in _Recorder.seen if m == "GET"]
    assert posts and deletes and gets
    created = {f"/fhir/Patient/p{n}" for n in range(1, len(posts) + 1)}
    assert set(deletes) <= created  # every DELETE targets a Location the server handed out
    assert len(deletes) == len(set(deletes))  # and none twice
    assert len(gets) - 1 <= sample["status"]["4xx"] <= len(gets)  # the last answer may land after wrk stops
    assert sample["error_rate"] > 0  # the 404s count as errors
    assert "-c1" in command and "bench/lua/plan.lua" in command


_HEAD = 'process 1:"nara serve";Thread._bootstrap (threading.py:1002)'
_REQ = _HEAD + ";_execute (nara/server/app.py:93);create (nara/store/crud.py:250)"
COLLAPSED = "\n".join(
    [
        _REQ + ";check (nara/fhir/validation.py:205);match (re/__init__.py:166) 30",
        _REQ + ";execute (sqlalchemy/engine/base.py:1400);wait (psycopg/connection.py:900) 50",
        _HEAD + ";wait (threading.py:320) 20",
    ]
)


def test_profile_summary_attributes_samples_to_layers_and_our_functions(tmp_path: Path) -> None:
    path = tmp_path / "p.txt.gz"
    with gzip.open(path, "wt") as f:
        f.write(COLLAPSED)
    s = profiles.summarize(profiles.read_collapsed(path))
    assert s["samples"] == 100
    layers = {x["name"]: x["share"] for x in s["layers"]}
    assert layers["psycopg (PostgreSQL driver)"] == 0.5
    assert layers["nara.fhir.validation"] == 0.3  # re.match counts toward its caller
    assert layers["Python stdlib"] == 0.2
    inclusive = {x["name"]: x["share"] for x in s["own_inclusive"]}
    assert inclusive["nara.store.crud:create"] == 0.8
    assert "nara.server.app:_execute" not in inclusive  # a wrapper of every request says nothing
    assert profiles.top_cost(s).startswith("psycopg (PostgreSQL driver) 50% of samples")
