"""The benchmark scenarios. Each takes a :class:`Bench` (run record, target, settings, data state).

HTTP scenarios use only standard FHIR interactions against ``target.base_url`` (with the optional
bearer token), so they measure any FHIR R4 server; the physical baselines talk to the local
PostgreSQL directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import shutil
import statistics
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from bench import fhirclient, pgbaseline, profiles, synth
from bench.loadgen import DELETE_CREATED, Req, run_wrk, write_plan
from bench.results import Run, Scenario, loadavg
from bench.target import ROOT, NaraServer, Target, dev_idp_env, free_port, reset_database

TX_SIZE = 100  # entries in the vital-signs transaction of issue 2
INGEST_BATCH = 5  # Observations in a home-monitoring batch
MIN_REQUESTS = 20  # fewer completed requests in a repetition than this: too few for percentiles
EXTENDED_SECONDS = 8  # ... so the measurement is run for this long instead


@dataclass
class Settings:
    """How long and how big: quick mode keeps the whole run under ten minutes on 2 cores."""

    mode: str = "quick"
    seconds: int = 2  # one wrk measurement
    reps: int = 3
    crud_connections: tuple[int, ...] = (1, 8, 32, 64)
    single_connections: tuple[int, ...] = (1, 8, 32)
    tx_connections: tuple[int, ...] = (1, 4)
    search_connections: int = 8
    growth_base: int = 10  # patients at 1x
    growth_factors: tuple[int, ...] = (1, 4, 16, 64)
    observations_per_patient: int = 20
    deep_page: int = 5
    deep_at_every_step: bool = False
    ingest_seconds: int = 30
    ingest_slice: int = 5
    ingest_connections: int = 32
    ingest_devices: int = 200
    synthea_files: int = 4
    import_clients: tuple[int, ...] = (1, 8)
    copy_resources: int = 10_000
    load_via: str = "bulk"  # growth data for a suite-started Nära: "bulk" (nara.store.bulk) or "http"
    profile: bool = True
    profile_seconds: int = 2


@dataclass
class DataState:
    """What has been loaded into the target, so scenarios can ask for things that exist."""

    patients: int = 0
    resources: int = 0
    loaded: list[dict[str, Any]] = field(default_factory=list)

    def describe(self) -> str:
        return f"{self.patients:,} patients, {self.resources:,} resources loaded by the suite"


@dataclass
class Bench:
    run: Run
    target: Target
    settings: Settings
    label: str  # e.g. "nara-postgresql"
    work_dir: Path
    data: DataState = field(default_factory=DataState)
    rng: random.Random = field(default_factory=lambda: random.Random(20240601))

    # ---- helpers -------------------------------------------------------------------------------
    def path(self, relative: str) -> str:
        return f"{self.target.base_path}/{relative.lstrip('/')}"

    def wrk(
        self, requests: list[Req], connections: int, seconds: int | None = None, min_requests: int = 0
    ) -> Callable[[], tuple[dict[str, Any], str]]:
        """A runner for one repetition. A repetition that completes fewer than MIN_REQUESTS requests (a slow
        query) is run again for EXTENDED_SECONDS, and so are the later repetitions of the same measurement."""
        plan = write_plan(requests, self.work_dir)
        state = {"seconds": seconds or self.settings.seconds}

        def once() -> tuple[dict[str, Any], str]:
            return run_wrk(
                self.target.origin,
                plan,
                connections=connections,
                seconds=state["seconds"],
                base_path=self.target.base_path,
                token=self.target.token,
            )

        def runner() -> tuple[dict[str, Any], str]:
            sample, command = once()
            longer = max(EXTENDED_SECONDS, self.settings.seconds)
            if sample["requests"] < (min_requests or MIN_REQUESTS) and state["seconds"] < longer:
                state["seconds"] = longer
                sample, command = once()
                sample["extended"] = True
            return sample, command

        return runner

    @contextlib.contextmanager
    def profiled(self, sc: Scenario, name: str, seconds: int | None = None) -> Iterator[None]:
        """Profile the server (when the suite started it) while the block runs an extra, untimed load."""
        server = self.target.server
        if not self.settings.profile or server is None or server.proc is None:
            yield
            return
        seconds = seconds or self.settings.profile_seconds
        raw = self.run.artifact_dir / "profiles" / f"{self.label}-{name}.txt"
        proc = profiles.start(server.proc.pid, seconds, raw)
        time.sleep(0.5)
        try:
            yield
        finally:
            try:
                gz = profiles.finish(proc, raw, timeout=seconds + 60)
                summary = profiles.summarize(profiles.read_collapsed(gz))
                summary["file"] = str(gz.relative_to(self.run.results_dir))
                summary["top_cost"] = profiles.top_cost(summary)
                profs = sc.record.setdefault("profiles", {})
                profs[name] = summary
                if sc.record["profile"] is None:
                    sc.record["profile"] = summary
            except profiles.ProfilerError as e:
                sc.record["extra"]["profile_error"] = str(e)

    def profile_wrk(self, sc: Scenario, name: str, requests: list[Req], connections: int) -> None:
        if not self.settings.profile or self.target.server is None:
            return
        secs = self.settings.profile_seconds
        before = self.db_counters()
        with self.profiled(sc, name, secs):
            sample, _ = self.wrk(requests, connections, seconds=secs)()
        self.record_db_work(sc, name, before, sample["requests"])

    def db_counters(self) -> dict[str, int] | None:
        server = self.target.server
        if server is None or not server.database_url.startswith("postgresql"):
            return None
        try:
            return pgbaseline.database_counters(server.database_url.rsplit("/", 1)[1])
        except Exception as e:  # a busy shared PostgreSQL (too many clients) must not fail the scenario
            print(f"   (no database counters: {str(e).splitlines()[0]})", flush=True)
            return None

    def record_db_work(self, sc: Scenario, name: str, before: dict[str, int] | None, units: int) -> None:
        """Database work per request (or per resource) during the profiled run, from pg_stat_database."""
        if before is None or not units:
            return
        time.sleep(1.5)  # PostgreSQL publishes backend statistics at most once a second
        after = self.db_counters()
        if after is None:
            return
        per = {k: round((after[k] - before[k]) / units, 2) for k in before}
        sc.record.setdefault("db_work", {})[name] = {"units": units, **per}


def per_second(sample: dict[str, Any], factor: float, key: str = "requests_per_s") -> dict[str, Any]:
    """Turn a requests/s sample into resources/s (each request carrying ``factor`` resources)."""
    sample[key] = sample["throughput"]
    sample["throughput"] = sample["throughput"] * factor
    return sample


# ---- generator ceiling -----------------------------------------------------------------------------
def noop(b: Bench) -> None:
    with b.run.scenario("noop", "Load generator ceiling: no-op endpoint", b.label) as sc:
        if not b.target.noop_url:
            sc.skip("the target has no no-op endpoint (pass --noop-url)")
            return
        path = urlsplit(b.target.noop_url).path
        sc.record["data_size"] = "none (GET /noop answers {} without touching the database)"
        for c in (1, 8, 64):
            sc.measure(
                f"{c} connections",
                b.wrk([Req("GET", path)], c),
                reps=b.settings.reps,
                unit="requests/s",
                params={"connections": c},
            )


# ---- physical baselines ----------------------------------------------------------------------------
def baselines(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "baseline",
        "PostgreSQL physical baselines",
        "postgresql",
        "COPY, single-row INSERT commits and primary-key reads straight into PostgreSQL (scratch database)",
    ) as sc:
        pgbaseline.reset_scratch()
        pgbaseline.create_nara_schema()
        rng = random.Random(7)
        obs = [
            synth.vital_observation(synth.patient_id(rng.randrange(1000)), synth.EPOCH + timedelta(minutes=i), rng)
            for i in range(s.copy_resources)
        ]
        payload = pgbaseline.CopyPayload(obs)
        size = f"{payload.count:,} vital-sign Observations ({payload.index_row_count:,} search-index rows)"
        sc.record["data_size"] = size
        for variant, text in pgbaseline.COPY_VARIANTS.items():
            sc.measure(
                f"COPY into {text}",
                partial(_copy, payload, variant),
                reps=s.reps,
                unit="resources/s",
                params={"variant": variant},
                group="copy",
            )
        synthea = synthea_resources(limit=s.synthea_files)
        if synthea:
            spay = pgbaseline.CopyPayload(synthea)
            for variant in ("bare", "full"):
                sc.measure(
                    f"COPY of the Synthea resources into {pgbaseline.COPY_VARIANTS[variant]}",
                    partial(_copy, spay, variant),
                    reps=s.reps,
                    unit="resources/s",
                    params={"variant": variant, "data": "synthea"},
                    data_size=f"{spay.count:,} Synthea resources ({spay.index_row_count:,} search-index rows)",
                    group="copy-synthea",
                )
        # leave the copied rows in place: point reads use them
        pgbaseline.copy_once(payload, "resource")
        for c in s.single_connections:
            sc.measure(
                f"point reads by primary key, {c} clients",
                partial(pgbaseline.point_reads, payload.count, c, s.seconds),
                reps=s.reps,
                unit="reads/s",
                params={"connections": c},
                group="point-read",
            )
        for c in s.single_connections:
            sc.measure(
                f"single-row INSERT commits, {c} clients",
                partial(pgbaseline.insert_commits, obs[0], c, s.seconds),
                reps=s.reps,
                unit="commits/s",
                params={"connections": c},
                group="insert",
            )
        pgbaseline.drop_scratch()


def _copy(payload: pgbaseline.CopyPayload, variant: str) -> tuple[dict[str, Any], str]:
    return pgbaseline.copy_once(payload, variant), f"psycopg COPY ... FROM STDIN ({payload.count} rows per table)"


def synthea_dir() -> Path:
    return synth._shared_data_dir() / "synthea-r4"


def synthea_files(limit: int) -> list[Path]:
    d = synthea_dir()
    return sorted(d.glob("*.json"))[:limit] if d.is_dir() else []


def synthea_resources(limit: int) -> list[dict[str, Any]]:
    out = []
    for f in synthea_files(limit):
        bundle = orjson.loads(f.read_bytes())
        out += [e["resource"] for e in bundle.get("entry", []) if "resource" in e]
    return out


# ---- data for reads, searches and growth -----------------------------------------------------------
def load_patients(b: Bench, upto: int) -> dict[str, Any]:
    """Load patients [current, upto) with their histories.

    Through the FHIR API (one transaction Bundle per patient, 4 parallel clients), or, for a Nära the
    suite started itself and unless ``--load-via http``, with Nära's bulk loader straight into its
    database (the same rows as the API path, written with COPY) followed by ANALYZE: the growth curve
    measures queries at a size, not loading.
    """
    first = b.data.patients
    if upto <= first:
        return {}
    bulk = b.settings.load_via == "bulk" and b.target.server is not None
    t0 = time.perf_counter()
    if bulk:
        assert b.target.server is not None
        loaded = bulk_load(b.target.server.database_url, first, upto, b.settings.observations_per_patient)
    else:
        if first == 0:
            b.data.resources += fhirclient.load_bundles(b.target, [synth.directory_bundle()], concurrency=1).resources
        bundles = [
            synth.transaction(synth.patient_history(i, b.settings.observations_per_patient)) for i in range(first, upto)
        ]
        loaded = fhirclient.load_bundles(b.target, bundles, concurrency=4).resources
    seconds = time.perf_counter() - t0
    b.data.patients = upto
    b.data.resources += loaded
    step = {
        "patients": upto,
        "resources": b.data.resources,
        "method": "Nära bulk loader (COPY) + ANALYZE" if bulk else "FHIR transaction Bundles, 4 clients",
        "seconds": round(seconds, 2),
        "resources_per_s": round(loaded / seconds, 1) if seconds else None,
    }
    b.data.loaded.append(step)
    return step


def bulk_load(database_url: str, first: int, upto: int, observations: int) -> int:
    """Patients [first, upto) (and, when first is 0, the directory) through nara.store.bulk."""
    from nara.store.bulk import BulkLoader
    from nara.store.store import Store

    store = Store.from_url(database_url, pool_size=2)
    try:
        with BulkLoader(store, method="PUT") as loader:
            if first == 0:
                loader.add_all(e["resource"] for e in synth.directory_bundle()["entry"])
            for i in range(first, upto):
                loader.add_all(synth.patient_history(i, observations))
        loader.analyze()
        return loader.stats.resources
    finally:
        store.dispose()


@dataclass(frozen=True)
class Query:
    id: str
    title: str
    make: Callable[[random.Random, int], str]  # (rng, patients) -> relative URL
    deep: bool = False  # has enough matches for deep pages


def _q(value: str) -> str:
    return quote(value, safe="")


def _latest_vitals(rng: random.Random, n: int) -> str:
    pid = synth.patient_id(rng.randrange(n))
    code = rng.choice(synth.VITALS)[0]
    return f"Observation?patient={pid}&code={_q(synth.LOINC + '|' + code)}&_sort=-date&_count=20"


def _lastn(rng: random.Random, n: int) -> str:
    return f"Observation/$lastn?patient={synth.patient_id(rng.randrange(n))}&category=vital-signs"


def _code_date(rng: random.Random, n: int) -> str:
    start = synth.EPOCH + timedelta(days=rng.randrange(0, 300))
    end = start + timedelta(days=30)
    return (
        f"Observation?code={_q(synth.LOINC + '|' + synth.BP_CODE)}"
        f"&date=ge{start:%Y-%m-%d}&date=lt{end:%Y-%m-%d}&_count=20"
    )


def _name_birthdate(rng: random.Random, n: int) -> str:
    facts = synth.patient_facts(rng.randrange(n))
    return f"Patient?name={_q(facts.family)}&birthdate={facts.birth_date}"


def _open_tasks(rng: random.Random, n: int) -> str:
    org = synth.municipality_org(rng.randrange(n))
    return f"Task?status=requested&owner=Organization/{org}&_count=10"


def _everything(rng: random.Random, n: int) -> str:
    return f"Patient/{synth.patient_id(rng.randrange(n))}/$everything"


QUERIES = (
    Query("latest-vitals", "A patient's latest vitals (patient, code, _sort=-date, _count=20)", _latest_vitals),
    Query("lastn", "Observation/$lastn?patient=X&category=vital-signs", _lastn),
    Query("code-date", "Observations by code and 30-day date range", _code_date, deep=True),
    Query("name-birthdate", "Patients by family name and birth date", _name_birthdate),
    Query("open-tasks", "A municipality's open Tasks (status=requested, owner)", _open_tasks, deep=True),
    Query("everything", "Patient/X/$everything", _everything),
)


def availability(b: Bench, q: Query) -> str | None:
    """None when the query answers 200, otherwise why it is not available."""
    rel = q.make(random.Random(1), max(b.data.patients, 1))
    resp = fhirclient.get(b.target, rel)
    if resp.status_code == 200:
        return None
    detail = ""
    with contextlib.suppress(ValueError, KeyError, IndexError, TypeError):
        detail = resp.json()["issue"][0].get("diagnostics", "")
    return f"HTTP {resp.status_code} {detail[:160]}".strip()


def read_requests(b: Bench, count: int = 400) -> list[Req]:
    rng = random.Random(11)
    out = []
    for _ in range(count):
        i = rng.randrange(b.data.patients)
        pid = synth.patient_id(i)
        if rng.random() < 0.25:
            out.append(Req("GET", b.path(f"Patient/{pid}")))
        else:
            out.append(
                Req("GET", b.path(f"Observation/{pid}-obs-{rng.randrange(b.settings.observations_per_patient)}"))
            )
    return out


def query_requests(b: Bench, q: Query, count: int = 200) -> list[Req]:
    rng = random.Random(f"{q.id}-{b.data.patients}")
    return [Req("GET", b.path(q.make(rng, b.data.patients))) for _ in range(count)]


def deep_requests(b: Bench, q: Query, samples: int = 4) -> tuple[list[Req], int]:
    rng = random.Random(f"deep-{q.id}")
    urls, depth = [], 0
    for _ in range(samples):
        url, page = fhirclient.deep_page(b.target, q.make(rng, b.data.patients), b.settings.deep_page)
        if url and page >= 3:
            parts = urlsplit(url)
            urls.append(parts.path + ("?" + parts.query if parts.query else ""))
            depth = max(depth, page)
    return [Req("GET", u) for u in urls], depth


def growth_and_search(b: Bench) -> None:
    """Load 1x..64x data; at each step measure reads and the search mix; deep pages at the last step."""
    s = b.settings
    steps = [s.growth_base * f for f in s.growth_factors]
    growth_desc = (
        f"Data grows {s.growth_factors[0]}x..{s.growth_factors[-1]}x ({steps[0]:,} to {steps[-1]:,} patients, "
        f"each with about {s.observations_per_patient + 10} resources), "
        + (
            "loaded with Nära's bulk loader and ANALYZEd"
            if s.load_via == "bulk" and b.target.server is not None
            else "loaded as one transaction Bundle per patient"
        )
        + f"; reads and first pages at {s.search_connections} connections"
    )
    with b.run.scenario("growth", "Growth curve: reads and searches at 1x to 64x data", b.label, growth_desc) as growth:
        search = None
        available: dict[str, str | None] = {}
        for factor, patients in zip(s.growth_factors, steps, strict=True):
            step = load_patients(b, patients)
            print(f"   loaded {b.data.describe()} ({step.get('resources_per_s')} resources/s)", flush=True)
            size = b.data.describe()
            conns = s.search_connections
            growth.measure(
                f"{factor}x read by id",
                b.wrk(read_requests(b), conns),
                reps=s.reps,
                unit="requests/s",
                params={"factor": factor, "patients": patients, "query": "read", "connections": conns},
                data_size=size,
                group="read",
            )
            for q in QUERIES:
                if q.id not in available:
                    available[q.id] = availability(b, q)
                if available[q.id] is not None:
                    continue
                growth.measure(
                    f"{factor}x {q.id}",
                    b.wrk(query_requests(b, q), conns),
                    reps=s.reps,
                    unit="requests/s",
                    params={"factor": factor, "patients": patients, "query": q.id, "connections": conns},
                    data_size=size,
                    group=q.id,
                )
                if s.deep_at_every_step and q.deep:
                    reqs, depth = deep_requests(b, q)
                    if reqs:
                        growth.measure(
                            f"{factor}x {q.id} page {depth}",
                            b.wrk(reqs, conns),
                            reps=s.reps,
                            unit="requests/s",
                            params={"factor": factor, "patients": patients, "query": q.id, "page": depth},
                            data_size=size,
                            group=f"{q.id} deep page",
                        )
        growth.record["extra"]["loads"] = b.data.loaded
        growth.record["extra"]["not_available"] = {k: v for k, v in available.items() if v}
        growth.record["data_size"] = b.data.describe()
        ratios = {}
        first_factor, last_factor = s.growth_factors[0], s.growth_factors[-1]
        for group in dict.fromkeys(m["group"] for m in growth.record["measurements"]):
            ms = [m for m in growth.record["measurements"] if m["group"] == group]
            ends = (ms[0]["params"]["factor"], ms[-1]["params"]["factor"]) if ms else None
            if ends != (first_factor, last_factor):
                continue  # e.g. no deep pages at 1x: no ratio to publish
            if ms[0]["summary"]["p50_ms"] and ms[-1]["summary"]["p50_ms"]:
                ratios[group] = {
                    "p50": ms[-1]["summary"]["p50_ms"] / ms[0]["summary"]["p50_ms"],
                    "p95": ms[-1]["summary"]["p95_ms"] / ms[0]["summary"]["p95_ms"],
                    "throughput": ms[-1]["summary"]["throughput"] / ms[0]["summary"]["throughput"],
                }
        growth.record["extra"]["ratio_last_first"] = ratios
        search = growth

    with b.run.scenario(
        "search",
        "Search mix: first and deep pages",
        b.label,
        f"Everyday queries at {s.search_connections} connections on the largest growth step; deep pages are reached "
        "by following Bundle.link[next].",
    ) as sc:
        sc.record["data_size"] = b.data.describe()
        conns = s.search_connections
        for q in QUERIES:
            reason = available.get(q.id)
            if reason is not None:
                sc.record["extra"].setdefault("not_available", {})[q.id] = reason
                continue
            first = [m for m in search.record["measurements"] if m["group"] == q.id]
            if first:
                last = dict(first[-1])
                last["label"] = f"{q.id} first page"
                last["group"] = q.id
                last["params"] = {**last["params"], "page": "first"}
                sc.record["measurements"].append(last)
            if q.deep:
                reqs, depth = deep_requests(b, q)
                if not reqs:
                    sc.record["extra"].setdefault("no_deep_pages", []).append(q.id)
                    continue
                sc.measure(
                    f"{q.id} page {depth}",
                    b.wrk(reqs, conns),
                    reps=s.reps,
                    unit="requests/s",
                    params={"query": q.id, "page": depth, "connections": conns},
                    group=q.id,
                )
        mix = [r for q in QUERIES if available.get(q.id) is None for r in query_requests(b, q, 50)]
        if mix:
            b.profile_wrk(sc, "search-mix", mix, conns)


# ---- writes ----------------------------------------------------------------------------------------
def ensure_patients(b: Bench) -> None:
    """Write scenarios refer to existing patients (a server may check references): load the 1x set if empty."""
    if b.data.patients == 0:
        load_patients(b, b.settings.growth_base)


def observation_creates(b: Bench, count: int = 500) -> list[Req]:
    rng = random.Random(21)
    n = max(b.data.patients, 1)
    return [
        Req(
            "POST",
            b.path("Observation"),
            synth.vital_observation(synth.patient_id(rng.randrange(n)), synth.EPOCH + timedelta(minutes=i), rng),
        )
        for i in range(count)
    ]


def creates_and_reads(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "create", "Single creates (POST Observation)", b.label, "One vital-sign Observation per request"
    ) as sc:
        ensure_patients(b)
        sc.record["data_size"] = b.data.describe()
        reqs = observation_creates(b)
        for c in s.single_connections:
            sc.measure(f"{c} connections", b.wrk(reqs, c), reps=s.reps, unit="requests/s", params={"connections": c})
        b.profile_wrk(sc, "create", reqs, 8)
    with b.run.scenario(
        "read", "Reads by id (GET Patient/id, Observation/id)", b.label, "Random existing resources, 1 in 4 a Patient"
    ) as sc:
        sc.record["data_size"] = b.data.describe()
        reqs = read_requests(b)
        for c in s.single_connections:
            sc.measure(f"{c} connections", b.wrk(reqs, c), reps=s.reps, unit="requests/s", params={"connections": c})
        b.profile_wrk(sc, "read", reqs, 8)


def crud_plan(b: Bench, length: int = 2000) -> list[Req]:
    """30% create, 40% read, 20% update, 10% delete (of resources created in the same run)."""
    rng = random.Random(31)
    n = max(b.data.patients, 1)
    obs = b.settings.observations_per_patient
    out: list[Req] = []

    def existing(rtype: str) -> str:
        i = rng.randrange(n)
        pid = synth.patient_id(i)
        return {
            "Patient": pid,
            "Observation": f"{pid}-obs-{rng.randrange(obs)}",
            "Encounter": f"{pid}-enc-{rng.randrange(3)}",
            "Condition": f"{pid}-cond-{rng.randrange(2)}",
            "MedicationRequest": f"{pid}-medreq-0",
            "CarePlan": f"{pid}-careplan-0",
            "Organization": synth.org_id(rng.randrange(synth.N_ORGS)),
            "Practitioner": synth.practitioner_id(rng.randrange(synth.N_PRACTITIONERS)),
        }[rtype]

    for k in range(length):
        rtype = synth.CRUD_TYPES[k % len(synth.CRUD_TYPES)]
        roll = rng.random()
        pid = synth.patient_id(rng.randrange(n))
        if roll < 0.30:
            out.append(Req("POST", b.path(rtype), synth.crud_body(rtype, k, pid)))
        elif roll < 0.70:
            out.append(Req("GET", b.path(f"{rtype}/{existing(rtype)}")))
        elif roll < 0.90:
            rid = existing(rtype)
            body = synth.crud_body(rtype, k, pid)
            body["id"] = rid
            out.append(Req("PUT", b.path(f"{rtype}/{rid}"), body))
        else:
            out.append(Req(DELETE_CREATED, "-"))
    return out


def crud(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "crud",
        "CRUD mix over eight resource types",
        b.label,
        "Patient, Observation, Encounter, Condition, MedicationRequest, CarePlan, Organization, Practitioner: "
        "30% create, 40% read, 20% update (PUT), 10% delete of resources created earlier in the same run",
    ) as sc:
        ensure_patients(b)
        sc.record["data_size"] = b.data.describe()
        plan = crud_plan(b)
        for c in s.crud_connections:
            sc.measure(f"{c} connections", b.wrk(plan, c), reps=s.reps, unit="requests/s", params={"connections": c})
        b.profile_wrk(sc, "crud", plan, 8)


def transaction_bundle(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "transaction",
        f"{TX_SIZE}-entry transaction Bundle of vital-sign Observations",
        b.label,
        f"POST [base] with a transaction of {TX_SIZE} Observations (POST entries); throughput in resources/s",
    ) as sc:
        ensure_patients(b)
        sc.record["data_size"] = b.data.describe()
        n = b.data.patients
        reqs = [
            Req("POST", b.target.base_path or "/", synth.vitals_transaction(TX_SIZE, seed, n)) for seed in range(20)
        ]
        for c in s.tx_connections:
            # throughput is the figure here: a few Bundles per repetition are enough
            runner = b.wrk(reqs, c, seconds=max(s.seconds, 5), min_requests=4)
            sc.measure(
                f"{c} connections",
                partial(_scaled, runner, TX_SIZE),
                reps=s.reps,
                unit="resources/s",
                params={"connections": c, "entries": TX_SIZE},
            )
        b.profile_wrk(sc, "transaction", reqs, 2)


def _scaled(runner: Callable[[], tuple[dict[str, Any], str]], factor: float) -> tuple[dict[str, Any], str]:
    sample, cmd = runner()
    return per_second(sample, factor), cmd


def synthea_import(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "synthea-import",
        "Bundle import: Synthea patient transaction Bundles",
        b.label,
        "Each file of ../shared/data/synthea-r4 is one transaction Bundle, POSTed to the base by N parallel clients "
        "(async httpx); resources/s over the whole set",
    ) as sc:
        files = synthea_files(s.synthea_files)
        if not files:
            sc.skip(f"no Synthea bundles in {synthea_dir()} (set NARA_SHARED_DATA)")
            return
        bodies = [f.read_bytes() for f in files]
        counts = [len(orjson.loads(x).get("entry", [])) for x in bodies]
        size = f"{len(files)} Bundles, {sum(counts):,} resources per import (on top of {b.data.describe()})"
        sc.record["data_size"] = size
        command = f"python -m bench.run (async httpx client, POST {b.target.base_url}, {len(files)} Bundles)"
        for clients in s.import_clients:

            def one(c: int = clients) -> tuple[dict[str, Any], str]:
                out = asyncio.run(fhirclient.post_bundles(b.target, bodies, counts, c))
                b.data.resources += out.resources
                return out.sample(), command + f", {c} clients"

            sc.measure(f"{clients} clients", one, reps=s.reps, unit="resources/s", params={"clients": clients})
        if s.profile and b.target.server is not None:
            before = b.db_counters()
            with b.profiled(sc, "synthea-import", seconds=s.profile_seconds):
                out = asyncio.run(fhirclient.post_bundles(b.target, bodies[: max(4, len(bodies) // 4)], counts, 2))
            b.record_db_work(sc, "synthea-import", before, out.resources)


def ingest_plan(b: Bench, length: int = 1000) -> tuple[list[Req], float]:
    """Home monitoring: 80% single Observations, 20% small transaction batches, from many devices."""
    rng = random.Random(41)
    n = max(b.data.patients, 1)
    devices = b.settings.ingest_devices
    out, resources = [], 0
    for k in range(length):
        dev = rng.randrange(devices)
        pid = synth.patient_id(dev % n)
        when = synth.EPOCH + timedelta(days=400, minutes=k)

        def obs(j: int = 0, dev: int = dev, pid: str = pid, when: Any = when) -> dict[str, Any]:
            o = synth.vital_observation(pid, when + timedelta(seconds=j), rng)
            o["device"] = {"identifier": {"system": "urn:oid:1.2.752.0.0.1", "value": f"bench-device-{dev:05d}"}}
            return o

        if rng.random() < 0.8:
            out.append(Req("POST", b.path("Observation"), obs()))
            resources += 1
        else:
            bundle = synth.transaction([obs(j) for j in range(INGEST_BATCH)], method="POST")
            out.append(Req("POST", b.target.base_path or "/", bundle))
            resources += INGEST_BATCH
    return out, resources / length


def ingest(b: Bench) -> None:
    s = b.settings
    with b.run.scenario(
        "ingest",
        "Home-monitoring ingest (sustained)",
        b.label,
        f"{s.ingest_devices} devices post single vital-sign Observations (80%) and {INGEST_BATCH}-Observation "
        f"transaction batches (20%) on {s.ingest_connections} connections for {s.ingest_seconds}s, measured in "
        f"{s.ingest_slice}s slices; server memory and database size sampled between slices",
    ) as sc:
        ensure_patients(b)
        sc.record["data_size"] = b.data.describe()
        plan, per_request = ingest_plan(b)
        runner = b.wrk(plan, s.ingest_connections, seconds=s.ingest_slice)
        timeline = []
        samples = []
        command = ""
        start = time.monotonic()
        slices = max(3, s.ingest_seconds // s.ingest_slice)
        for _ in range(slices):
            sample, command = runner()
            per_second(sample, per_request)
            samples.append(sample)
            point = {
                "t_s": round(time.monotonic() - start, 1),
                "resources_per_s": round(sample["throughput"], 1),
                "p99_ms": sample["p99_ms"],
                "error_rate": sample["error_rate"],
                "server_rss_mib": round(b.target.server.rss_bytes() / 2**20, 1) if b.target.server else None,
                "database_mib": database_mib(b),
            }
            timeline.append(point)
            print(
                f"   t={point['t_s']}s {point['resources_per_s']}/s p99={point['p99_ms']}ms "
                f"rss={point['server_rss_mib']}MiB",
                flush=True,
            )
        sc.add(
            f"{s.ingest_connections} connections, {slices} slices of {s.ingest_slice}s",
            samples,
            command,
            unit="resources/s",
            params={"connections": s.ingest_connections, "resources_per_request": round(per_request, 2)},
        )
        sc.record["extra"]["timeline"] = timeline
        b.profile_wrk(sc, "ingest", plan, s.ingest_connections)


def database_mib(b: Bench) -> float | None:
    server = b.target.server
    if server is None or not server.database_url.startswith("postgresql"):
        if server is not None and server.database_url.startswith("sqlite"):
            path = Path(server.database_url.split("///", 1)[1])
            total = sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.exists())
            return round(total / 2**20, 1)
        return None
    import psycopg

    db = server.database_url.rsplit("/", 1)[1]
    with psycopg.connect(pgbaseline.pg_url("postgres"), autocommit=True) as conn:
        row = conn.execute("SELECT pg_database_size(%s)", (db,)).fetchone()
    return round(row[0] / 2**20, 1) if row else None


# ---- security overhead and the patient's log extract --------------------------------------------
SECURITY_DB = "nara_bench_security"
SECURITY_PATIENTS = 600
SECURITY_SECONDS = 5  # per repetition, at least (two seconds leave one GC pause or checkpoint in charge)


@dataclass
class SecurityFixture:
    """A demo region on its own database, served by its own Nära, and a staff member's view of it."""

    server: NaraServer
    base_url: str
    unaudited: NaraServer  # the same app and database, reads not audited (bench.unaudited_server)
    staff_token: str
    superuser_token: str
    data: SecurityData  # the staff member and what she may see


def generate_security_region(url: str, patients: int = SECURITY_PATIENTS) -> None:
    """Empty the database at ``url`` and generate the demo region on it (`nara generate`)."""
    import subprocess
    import sys

    reset_database(url)
    nara = Path(sys.executable).with_name("nara")
    cmd = [str(nara), "generate", "--patients", str(patients), "--database-url", url]
    gen = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=ROOT)
    if gen.returncode != 0:
        raise RuntimeError(f"nara generate failed: {gen.stderr[-300:]}")


@dataclass
class SecurityData:
    """The demo region's district nurse and what she may see: the data of the security scenario's requests."""

    nurse: Any  # nara.demo.users.DemoUser
    reads: list[str]  # Observation ids she may read (own unit, care relationship)
    patients: list[str]  # patients with a care relationship at her unit
    codes: dict[str, str]  # patient -> a LOINC/NPU code present in their record


def security_data(url: str) -> SecurityData:
    """Find the district nurse's patients and observations (care relationships from the access-rule index)."""
    from sqlalchemy import text

    from nara.demo.users import demo_users
    from nara.store.store import Store

    store = Store.from_url(url)
    try:
        nurse = next(u for u in demo_users(store) if u.key == "district-nurse")
        with store.engine.connect() as conn:
            unit = conn.execute(
                text("SELECT res_id FROM resource WHERE res_type = 'Organization' AND content::text LIKE :n"),
                {"n": f'%"name": "{nurse.unit}"%'},
            ).scalar_one()
            patient_rows = conn.execute(
                text("SELECT DISTINCT patient_id FROM care_relation WHERE unit = :u ORDER BY patient_id"), {"u": unit}
            ).all()
            pats = [r[0] for r in patient_rows]
            reads = [
                r[0]
                for r in conn.execute(
                    text(
                        "SELECT res_id FROM resource WHERE res_type = 'Observation' AND owner_unit = :u "
                        "AND patient_id = ANY(:p) AND NOT deleted ORDER BY rid LIMIT 400"
                    ),
                    {"u": unit, "p": pats},
                )
            ]
            codes = {
                r[0]: r[1]
                for r in conn.execute(
                    text(
                        "SELECT DISTINCT ON (patient_id) patient_id, code FROM sp_token WHERE res_type = "
                        "'Observation' AND param = 'code' AND patient_id = ANY(:p) AND code IS NOT NULL"
                    ),
                    {"p": pats},
                )
            }
    finally:
        store.dispose()
    if not reads or not pats:
        raise RuntimeError(f"the demo region has no data for {nurse.name}'s unit")
    return SecurityData(nurse, reads, pats, codes)


def security_requests(data: SecurityData, path: Callable[[str], str]) -> tuple[list[Req], list[Req]]:
    """The scenario's reads by id and patient-scoped searches (``path`` makes a request path of a FHIR path)."""
    rng = random.Random(7)
    reads = [Req("GET", path(f"Observation/{rng.choice(data.reads)}")) for _ in range(300)]
    searches = []
    for _ in range(200):
        p = rng.choice(data.patients)
        searches.append(Req("GET", path(f"Observation?patient={p}&_count=20")))
        code = data.codes.get(p)
        if code:
            searches.append(Req("GET", path(f"Observation?patient={p}&code={code}&_sort=-date&_count=20")))
    return reads, searches


def security_tokens(key_file: Path, nurse: Any) -> tuple[str, str]:
    """Tokens of the development IdP's key in ``key_file``: the district nurse's, and a superuser's (a system
    client: policy off, audited)."""
    from nara.security import devidp

    key = devidp.signing_key(key_file)
    staff = devidp.mint(key, nurse.sub, "staff", assignment=nurse.assignment, name=nurse.name, ttl=12 * 3600)
    superuser = devidp.mint(key, "nara-bench-superuser", "system", name="superuser (policy off)", ttl=12 * 3600)
    return staff, superuser


def security_fixture(b: Bench, patients: int = SECURITY_PATIENTS) -> SecurityFixture:
    """Generate the demo region (`nara generate`), start Nära on it with the development IdP, and find the
    district nurse's patients and observations (care relationships from the access-rule index)."""
    url = pgbaseline.pg_url(SECURITY_DB)
    generate_security_region(url, patients)
    key_file = b.work_dir / "security-idp-key.json"
    env = dev_idp_env(key_file)
    # One worker: the figures compare the cost of a request. With two, where wrk's keep-alive connections land
    # decides the result (measured: the same superuser reads 956/s with all 8 connections on one worker,
    # 1,900/s with 4 on each; uvicorn's workers race to accept, and one often takes most of a burst).
    server = NaraServer(url, free_port(), 1, b.work_dir / "security-server.log", env=env)
    server.start(fresh=False)
    unaudited = NaraServer(
        url, free_port(), 1, b.work_dir / "security-unaudited.log", env=env, module="bench.unaudited_server"
    )
    unaudited.start(fresh=False)
    try:
        data = security_data(url)
    except Exception:
        server.stop()
        unaudited.stop()
        raise
    staff, superuser = security_tokens(key_file, data.nurse)
    return SecurityFixture(server, server.base_url, unaudited, staff, superuser, data)


def security(b: Bench, staff_token: str | None, superuser_token: str | None) -> None:
    """The same reads and searches as a staff member (full policy and audit), as a superuser (a system client:
    policy off, still audited) and as a superuser on a twin server that writes no read audit; and the
    patient's log extract with many audit records stored. Against another server, pass --staff-token and
    --superuser-token (the audit-free twin is Nära's only)."""
    s = b.settings
    with b.run.scenario(
        "security",
        "Security overhead: a staff member under the full policy and audit vs a superuser",
        b.label,
        "Reads by id of observations the staff member may see, and patient-scoped searches "
        "(Observation?patient=X&_count=20; Observation?patient=X&code=Y&_sort=-date&_count=20): as the demo "
        "region's district nurse (care relationship, consent and block checks inside the SQL, one audit record "
        "per request), as a superuser (system client, policy off, audited), and as the superuser on a twin "
        "server without read audit; one worker each, repetitions taken in turn",
    ) as sc:
        if b.target.server is None and not (staff_token and superuser_token):
            sc.skip("another server: pass --staff-token and --superuser-token")
            return
        fx = security_fixture(b) if b.target.server is not None else None
        try:
            base = fx.base_url if fx else b.target.base_url
            tokens = {
                "superuser": fx.superuser_token if fx else superuser_token,
                "staff": fx.staff_token if fx else staff_token,
            }
            target = Target("nara-security", base, database="postgresql", server=fx.server if fx else None)
            sub = Bench(b.run, target, s, b.label, b.work_dir)
            bare: Bench | None = None
            if fx:
                twin = Target("nara-security-unaudited", fx.unaudited.base_url, database="postgresql")
                twin.token = tokens["superuser"]
                bare = Bench(b.run, twin, s, b.label, b.work_dir)
            reads: list[Req] = []
            searches: list[Req] = []
            if fx:
                reads, searches = security_requests(fx.data, sub.path)
            sc.record["data_size"] = (
                f"demo region, {SECURITY_PATIENTS} people; {len(fx.data.patients)} with a care relationship at the "
                f"staff member's unit"
                if fx
                else "as given"
            )
            seconds = max(s.seconds, SECURITY_SECONDS)
            conns = s.search_connections
            results: dict[str, dict[str, float]] = {}
            cpu: dict[str, dict[str, dict[str, float | None]]] = {}
            for kind, reqs in (("read", reads), ("search", searches)):
                runners: dict[str, Callable[[], tuple[dict[str, Any], str]]] = {}
                if bare is not None:
                    runners["unaudited"] = bare.wrk(reqs, conns, seconds=seconds)
                runners["superuser"] = sub.wrk(reqs, conns, seconds=seconds)
                runners["staff"] = sub.wrk(reqs, conns, seconds=seconds)
                samples: dict[str, list[dict[str, Any]]] = {who: [] for who in runners}
                commands: dict[str, str] = {}
                for _ in range(s.reps):  # in turn, so that drift (the audit tables growing) hits all alike
                    for who, runner in runners.items():
                        if who != "unaudited":
                            target.token = tokens[who]
                        load = loadavg()
                        server = (fx.unaudited if who == "unaudited" else fx.server) if fx else None
                        cpu0 = cpu_reading(server)
                        sample, commands[who] = runner()
                        sample.update(cpu_per_request(cpu0, cpu_reading(server), sample))
                        sample["loadavg_1m"] = load[0] if load else None
                        samples[who].append(sample)
                cpu[kind] = {who: median_cpu(rows) for who, rows in samples.items()}
                for who in runners:
                    label = {
                        "unaudited": "superuser, server without read audit",
                        "superuser": "superuser",
                        "staff": "staff",
                    }[who]
                    m = sc.add(
                        f"{kind}, {label}, {conns} connections",
                        samples[who],
                        commands[who],
                        unit="requests/s",
                        params={"actor": who, "kind": kind, "connections": conns, "seconds": seconds},
                    )
                    summary = m.get("summary", {})
                    results.setdefault(kind, {})[who] = float(summary.get("throughput") or 0)
                    results[kind][f"{who}_p95"] = float(summary.get("p95_ms") or 0)

            def cost(v: dict[str, float], who: str, base_who: str) -> dict[str, float | None]:
                return {
                    "throughput": round(1 - v[who] / v[base_who], 3) if v.get(base_who) else None,
                    "p95": round(v[f"{who}_p95"] / v[f"{base_who}_p95"] - 1, 3) if v.get(f"{base_who}_p95") else None,
                }

            sc.record["extra"]["cpu_per_request"] = cpu
            # The policy's cost: staff against the audited superuser (both write an audit record).
            sc.record["extra"]["overhead"] = {kind: cost(v, "staff", "superuser") for kind, v in results.items()}
            if bare is not None:
                # The audit record's own cost, and policy plus audit against a superuser with neither.
                sc.record["extra"]["audit_overhead"] = {
                    kind: cost(v, "superuser", "unaudited") for kind, v in results.items()
                }
                sc.record["extra"]["total_overhead"] = {
                    kind: cost(v, "staff", "unaudited") for kind, v in results.items()
                }
            if fx:
                audit_extract(sc, sub, fx, b.settings.mode == "long")
                audit_chain(sc, b.settings.mode == "long", b.settings.reps)
        finally:
            if fx:
                fx.server.stop()
                fx.unaudited.stop()


def cpu_reading(server: NaraServer | None) -> tuple[float, float | None] | None:
    """CPU seconds used so far by ``server``'s processes and by the security database's PostgreSQL backends."""
    if server is None:
        return None
    return server.cpu_seconds(), pgbaseline.backend_cpu_seconds(SECURITY_DB)


def cpu_per_request(
    before: tuple[float, float | None] | None, after: tuple[float, float | None] | None, sample: dict[str, Any]
) -> dict[str, float]:
    """Milliseconds of CPU per request of a wrk repetition (``sample``) between two readings: the server's
    processes' (its worker and, under ``nara serve``, its audit sealer) and PostgreSQL's. The database figure
    counts every backend of the database, so a sealer still catching up is included. A repetition that wrk
    had to extend ran twice, its CPU covering both runs and its request count only the second: no figure."""
    requests = sample.get("requests") or 0
    if before is None or after is None or not requests or sample.get("extended"):
        return {}
    out = {"server_cpu_ms": round((after[0] - before[0]) * 1000 / requests, 4)}
    if before[1] is not None and after[1] is not None:
        out["db_cpu_ms"] = round((after[1] - before[1]) * 1000 / requests, 4)
    return out


def median_cpu(samples: list[dict[str, Any]]) -> dict[str, float | None]:
    """The median CPU per request over repetitions (it shows where a request's cost lies; like throughput, it
    moves with the machine's state between runs)."""
    out: dict[str, float | None] = {}
    for key in ("server_cpu_ms", "db_cpu_ms"):
        values = [float(x[key]) for x in samples if x.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
    return out


def audit_extract(sc: Any, sub: Bench, fx: SecurityFixture, long: bool) -> None:
    """Load many audit records (5 years, spread over the region's patients) with COPY, then time
    Patient/{id}/$log-extract for random patients (target: p95 < 200 ms with 10 million records)."""
    import psycopg

    rows = 10_000_000 if long else 1_000_000
    db = SECURITY_DB
    # A region-sized population: the records spread over 10,000 patients (about 1,000 per patient over five
    # years with 10 million records), the demo region's patients among them.
    patients = fx.data.patients + [f"bench-patient-{i}" for i in range(10_000 - len(fx.data.patients))]
    t0 = time.monotonic()
    with psycopg.connect(pgbaseline.pg_url(db), autocommit=True) as conn:
        # Generated server-side in one statement; the events get placeholder chain values far above the sealer's
        # range (a benchmark database), so the sealer leaves them alone. Every event touches one patient.
        conn.execute(
            "WITH ev AS (INSERT INTO audit_event (recorded_at, action, outcome, actor_kind, user_id, user_name, "
            "unit_id, provider_id, resource_type, request, patient_count, chain_seq, prev_hash, hash) "
            "SELECT now() - (g %% 157680000) * interval '1 second', 'read', 'permit', 'staff', 'SE' || (g %% 5000), "
            "'Staff ' || (g %% 5000), 'unit-' || (g %% 300), 'provider-' || (g %% 20), 'Observation', "
            "'GET Observation', 1, 1000000000000 + g, 'x', 'y' FROM generate_series(0, %s - 1) g "
            "RETURNING seq, recorded_at, unit_id, provider_id) "
            "INSERT INTO audit_access (seq, recorded_at, patient_id, owner_org, owner_unit, access_type, protected) "
            "SELECT seq, recorded_at, (%s::text[])[1 + (seq %% %s)], provider_id, unit_id, 'own-unit', false FROM ev",
            (rows, patients, len(patients)),
        )
        # VACUUM as well: records up to five years old have long been vacuumed in a running system; without it the
        # first read of each freshly loaded page also writes its hint bits (measured: a cold extract 100-135 ms
        # instead of 10-50 ms).
        conn.execute("VACUUM (ANALYZE) audit_event")
        conn.execute("VACUUM (ANALYZE) audit_access")
        total = conn.execute("SELECT count(*) FROM audit_event").fetchone()
    load_s = time.monotonic() - t0
    sc.record["extra"]["audit_extract_load"] = {
        "audit_records": int(total[0]) if total else rows,
        "per_patient": round(rows / max(len(patients), 1)),
        "load_seconds": round(load_s, 1),
    }
    rng = random.Random(11)
    # The demo patients' own logs grew during the load above; the extract is timed on the loaded population.
    loaded = patients[len(fx.data.patients) :]
    reqs = [Req("GET", sub.path(f"Patient/{rng.choice(loaded)}/$log-extract")) for _ in range(100)]
    sub.target.token = fx.superuser_token
    sc.measure(
        f"log extract, {rows:,} audit records, 4 connections",
        sub.wrk(reqs, 4),
        reps=sub.settings.reps,
        unit="requests/s",
        params={"kind": "log-extract", "audit_records": rows, "connections": 4},
    )


AUDIT_CHAIN_DB = "nara_bench_audit_chain"


def audit_chain(sc: Any, long: bool, reps: int) -> None:
    """Sealing and verifying the audit hash chain on a database of its own (no server's sealer in the way).

    Each repetition writes a backlog of unsealed records as requests write them (one event and one access row
    each, realistic field lengths), then times ``audit.seal`` until the backlog is chained, as the sealer does;
    then the read-audit outbox's drain, which chains reads' records as it inserts them (``outbox_drain``); and
    ``audit.verify`` (``nara audit verify``) over the whole chain so far."""
    import psycopg

    from nara.security import audit
    from nara.store.database import create_engine
    from nara.store.migrate import upgrade

    per_rep = 200_000 if long else 50_000
    url = pgbaseline.pg_url(AUDIT_CHAIN_DB)
    reset_database(url)
    engine = create_engine(url, pool_size=2)
    try:
        upgrade(engine)
        sealing: list[dict[str, Any]] = []
        draining: list[dict[str, Any]] = []
        verifying: list[dict[str, Any]] = []
        for _ in range(reps):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(
                    "WITH ev AS (INSERT INTO audit_event (recorded_at, action, outcome, actor_kind, user_id, "
                    "user_name, assignment_id, unit_id, provider_id, purpose, client_id, resource_type, resource_id, "
                    "request, patient_count) SELECT now() AT TIME ZONE 'UTC', 'read', 'permit', 'staff', "
                    "'SE2321000016-P' || lpad((g %% 5000)::text, 5, '0'), 'Staff Member ' || (g %% 5000), "
                    "'SE2321000016-P' || lpad((g %% 5000)::text, 5, '0') || '-U', 'SE2321000016-E' || (g %% 300), "
                    "'SE2321000016-VG', 'Vård och behandling', 'nara-web', 'Observation', md5(g::text), "
                    "'GET /fhir/Observation/' || md5(g::text), 1 FROM generate_series(1, %s) g "
                    "RETURNING seq, recorded_at, unit_id, provider_id) "
                    "INSERT INTO audit_access (seq, recorded_at, patient_id, owner_org, owner_unit, access_type, "
                    "protected) SELECT seq, recorded_at, md5((seq %% 100000)::text), provider_id, unit_id, 'own-unit', "
                    "false FROM ev",
                    (per_rep,),
                )
            cpu0 = pgbaseline.backend_cpu_seconds(AUDIT_CHAIN_DB)
            t0 = time.perf_counter()
            sealed = 0
            while (n := audit.seal(engine)) > 0:
                sealed += n
            seconds = time.perf_counter() - t0
            cpu1 = pgbaseline.backend_cpu_seconds(AUDIT_CHAIN_DB)
            sealing.append(
                {
                    "throughput": sealed / seconds,
                    "requests": sealed,
                    "seconds": round(seconds, 3),
                    # PostgreSQL's own work for the sealing (reading the backlog, the chain UPDATE, its guard)
                    "db_cpu_ms_per_record": (
                        round((cpu1 - cpu0) * 1000 / sealed, 4) if cpu0 is not None and cpu1 is not None else None
                    ),
                }
            )
            draining.append(outbox_drain(engine, per_rep))
            t0 = time.perf_counter()
            report = audit.verify(engine)
            seconds = time.perf_counter() - t0
            if not report.ok:
                raise RuntimeError(f"the benchmark's audit chain does not verify: {report}")
            verifying.append({"throughput": report.checked / seconds, "requests": report.checked, "seconds": seconds})
    finally:
        engine.dispose()
    db_cpu = [x["db_cpu_ms_per_record"] for x in sealing if x.get("db_cpu_ms_per_record") is not None]
    sc.record["extra"]["audit_chain"] = {
        "records_per_repetition": per_rep,
        "seal_ms_per_record": round(statistics.median(1000 / x["throughput"] for x in sealing), 4),
        "seal_db_cpu_ms_per_record": round(statistics.median(db_cpu), 4) if db_cpu else None,
        "verify_records_per_s": round(statistics.median(x["throughput"] for x in verifying)),
        "drain_batch": OUTBOX_DRAIN_RECORDS,
        "drain_ms_per_record": round(statistics.median(1000 / x["throughput"] for x in draining), 4),
        "drain_cpu_ms_per_record": round(statistics.median(x["cpu_ms_per_record"] for x in draining), 4),
        "drain_db_cpu_ms_per_record": (
            round(statistics.median(x["db_cpu_ms_per_record"] for x in draining), 4)
            if all(x.get("db_cpu_ms_per_record") is not None for x in draining)
            else None
        ),
    }
    size = f"{per_rep:,} new records per repetition, one access row each"
    where = "bench/scenarios.py audit_chain, in the benchmark's process"
    sc.add(
        f"audit sealing (audit.seal until no backlog), {per_rep:,} records",
        sealing,
        f"audit.seal(engine) in a loop ({where})",
        unit="records/s",
        params={"kind": "audit-seal", "records": per_rep},
        data_size=size,
    )
    sc.add(
        f"audit outbox drain, chained as inserted ({OUTBOX_DRAIN_RECORDS} records a drain), {per_rep:,} records",
        draining,
        f"audit_outbox.drain(engine, spool) after every {OUTBOX_DRAIN_RECORDS} Outbox.append ({where})",
        unit="records/s",
        params={"kind": "audit-outbox-drain", "records": per_rep, "per_drain": OUTBOX_DRAIN_RECORDS},
        data_size=f"{per_rep:,} staff reads' records, one access row each",
    )
    sc.add(
        "audit chain verification (audit.verify, as nara audit verify)",
        verifying,
        f"audit.verify(engine) ({where})",
        unit="records/s",
        params={"kind": "audit-verify"},
        data_size=f"the whole chain: {per_rep:,} to {per_rep * reps:,} records",
    )


# A drain every 0.2 s (NARA_AUDIT_DRAIN_SECONDS) at 1,000 reads a second: what nara serve's sealer takes at once.
OUTBOX_DRAIN_RECORDS = 200


def outbox_drain(engine: Any, records: int) -> dict[str, Any]:
    """How the read-audit outbox's drain (nara serve's sealer) takes reads' records into the log, chaining them
    as it inserts them: ``records`` staff reads appended with ``Outbox.append`` and drained every
    OUTBOX_DRAIN_RECORDS; the drains' time, their CPU in this process and PostgreSQL's (the appends excluded)."""
    import tempfile

    from nara.security import audit, audit_outbox
    from nara.security.actors import Actor, Assignment

    unit = Assignment(
        "SE2321000016-P00042-U", "role-1", "SE2321000016-E0017", "Vårdcentralen Norr", "SE2321000016-VG",
        "Region", "vardgivare", "Vård och behandling", ("Läsa;alla;SJF",), ("sjukskoterska",),
    )  # fmt: skip
    nurse = Actor("staff", "SE2321000016-P00042", "Staff Member 42", assignment=unit, practitioner="p-42")
    spool = Path(tempfile.mkdtemp(prefix="nara-bench-outbox-"))
    box = audit_outbox.Outbox(spool, lambda: audit_outbox.database_tag(engine))
    seconds = cpu = 0.0
    drained = 0
    cpu0 = pgbaseline.backend_cpu_seconds(AUDIT_CHAIN_DB)
    try:
        for start in range(0, records, OUTBOX_DRAIN_RECORDS):
            for i in range(start, min(start + OUTBOX_DRAIN_RECORDS, records)):
                rid = f"{i:08x}-bench"
                rec = audit.AuditRecord(
                    "read", "permit", nurse, "Observation", rid, f"GET Observation/{rid}",
                    accesses=[audit.Access(f"patient-{i % 100_000}", unit.provider, unit.unit, "own-unit")],
                )  # fmt: skip
                box.append(rec, audit.now_utc())
            t0, c0 = time.perf_counter(), time.process_time()
            drained += audit_outbox.drain(engine, spool)
            seconds += time.perf_counter() - t0
            cpu += time.process_time() - c0
    finally:
        box.close()
        audit_outbox.drain(engine, spool)  # removes the finished file
        shutil.rmtree(spool, ignore_errors=True)
    cpu1 = pgbaseline.backend_cpu_seconds(AUDIT_CHAIN_DB)
    if drained != records:
        raise RuntimeError(f"the outbox drain took {drained} of {records} records")
    return {
        "throughput": drained / seconds,
        "requests": drained,
        "seconds": round(seconds, 3),
        "cpu_ms_per_record": round(cpu * 1000 / drained, 4),
        # The database CPU covers the appends' time too; appending needs none.
        "db_cpu_ms_per_record": round((cpu1 - cpu0) * 1000 / drained, 4) if cpu0 is not None and cpu1 else None,
    }


# ---- scale run (long mode; needs the demo-region generator's output) --------------------------
def scale(b: Bench, population: int, source: Path | None) -> None:
    with b.run.scenario(
        "scale",
        f"Scale run: {population:,} people",
        b.label,
        "The synthetic region (target: 1.4 million people and at least 10 million Observations) loaded with "
        "`nara import`; load time, database size, then reads and searches on patients found through the API",
    ) as sc:
        if source is None or not source.exists():
            sc.skip(
                "no scale data folder: the 1.4-million-person region is generated straight into PostgreSQL with "
                "`nara generate --region skane --patients 1400000` (time in bench/records) and measured there with "
                "`python -m bench.scale_probe`; pass --scale-source DIR to load an export with `nara import` instead"
            )
            return
        server = b.target.server
        if server is None:
            sc.skip("the scale run loads with `nara import` and so needs the suite to start Nära itself")
            return
        import subprocess
        import sys

        nara = Path(sys.executable).with_name("nara")
        cmd = [str(nara), "import", str(source), "--database-url", server.database_url]
        t0 = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        seconds = time.monotonic() - t0
        sc.record["extra"]["load"] = {
            "command": " ".join(cmd).replace(str(ROOT) + "/", ""),
            "seconds": round(seconds, 1),
            "exit_code": proc.returncode,
            "database_mib": database_mib(b),
            "output_tail": proc.stdout[-1000:],
        }
        if proc.returncode not in (0, 2):
            raise RuntimeError(f"nara import failed ({proc.returncode}): {proc.stderr[-300:]}")
        sc.record["data_size"] = f"{population:,} people from {source}"
        # The generator's ids are not known here: take patients from the server itself.
        resp = fhirclient.get(b.target, "Patient?_count=200&_elements=id")
        ids = [e["resource"]["id"] for e in resp.json().get("entry", [])] if resp.status_code == 200 else []
        if not ids:
            raise RuntimeError(f"no Patients found after loading {source}")
        rng = random.Random(51)
        conns = b.settings.search_connections
        templates = {
            "read": "Patient/{id}",
            "latest-observations": "Observation?patient={id}&_sort=-date&_count=20",
            "everything": "Patient/{id}/$everything",
        }
        for name, template in templates.items():
            reqs = [Req("GET", b.path(template.format(id=rng.choice(ids)))) for _ in range(200)]
            probe = fhirclient.get(b.target, template.format(id=ids[0]))
            if probe.status_code != 200:
                sc.record["extra"].setdefault("not_available", {})[name] = f"HTTP {probe.status_code}"
                continue
            sc.measure(
                name,
                b.wrk(reqs, conns),
                reps=b.settings.reps,
                unit="requests/s",
                params={"query": name, "connections": conns},
            )
