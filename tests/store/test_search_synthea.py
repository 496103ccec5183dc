"""Search on externally written data: Synthea transaction Bundles loaded through the transaction path.

Expected answers are computed from the Bundles' JSON directly (not through Nära), after mapping the
``urn:uuid:`` references to the ids the transaction assigned. Skipped when the shared data is absent.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
import pytest

from nara.config import Settings
from nara.fhir.query import QueryParser, parse_pairs
from nara.server.batch import TransactionProcessor
from nara.server.dispatch import Context
from nara.store.search import Searcher
from nara.store.store import Store
from tests.conftest import shared_data_dir
from tests.store.search_fixtures import idset, search

LOINC = "http://loinc.org"
BUNDLES = 3


@dataclass
class Loaded:
    store: Store
    # per bundle: (patient id, resources of the bundle with their assigned ids and resolved references)
    patients: list[tuple[str, list[dict[str, Any]]]]


def _resolve(value: Any, ids: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: (ids.get(v, v) if k == "reference" else _resolve(v, ids)) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, ids) for v in value]
    return value


@pytest.fixture
def synthea(store: Store) -> Loaded:
    files = sorted((shared_data_dir() / "synthea-r4").glob("*.json"))[:BUNDLES]
    if not files:
        pytest.skip("no Synthea bundles in the shared data folder")
    ctx = Context(base_url="http://nara.test/fhir", settings=Settings(), prefer_return="minimal")
    patients = []
    for f in files:
        bundle = orjson.loads(f.read_bytes())
        with store.transaction() as tx:
            response = TransactionProcessor(tx, ctx).run(bundle)
        ids: dict[str, str] = {}
        resources = []
        for entry, answer in zip(bundle["entry"], response["entry"], strict=True):
            rtype, rid = answer["response"]["location"].split("/")[:2]
            ids[entry["fullUrl"]] = f"{rtype}/{rid}"
            resources.append({**entry["resource"], "id": rid})
        resources = [_resolve(r, ids) for r in resources]
        pid = next(r["id"] for r in resources if r["resourceType"] == "Patient")
        patients.append((pid, resources))
    return Loaded(store, patients)


def of_type(resources: list[dict[str, Any]], rtype: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == rtype]


def has_code(res: dict[str, Any], code: str, key: str = "code") -> bool:
    return any(c.get("code") == code for c in res.get(key, {}).get("coding", []))


def test_patient_by_name_birthdate_and_identifier(synthea: Loaded) -> None:
    for pid, resources in synthea.patients:
        pat = of_type(resources, "Patient")[0]
        family = pat["name"][0]["family"]
        assert pid in idset(synthea.store, "Patient", f"name={family.upper()}&birthdate={pat['birthDate']}")
        ident = pat["identifier"][0]
        assert idset(synthea.store, "Patient", f"identifier={ident['system']}|{ident['value']}") == {pid}


def test_observations_by_patient_and_code_sorted_by_date(synthea: Loaded) -> None:
    pid, resources = synthea.patients[0]
    for code in ("8302-2", "29463-7", "55284-4"):
        expected = [o for o in of_type(resources, "Observation") if has_code(o, code)]
        result = search(synthea.store, "Observation", f"patient={pid}&code={LOINC}|{code}&_sort=-date&_count=20")
        assert {m.res_id for m in result.matches} == {o["id"] for o in expected}
        assert result.total == len(expected)
        dates = [m.resource()["effectiveDateTime"] for m in result.matches]
        assert dates == sorted(dates, reverse=True)


def test_blood_pressure_composite_and_chain(synthea: Loaded) -> None:
    high = set()
    for _, resources in synthea.patients:
        for o in of_type(resources, "Observation"):
            for comp in o.get("component", []):
                if has_code(comp, "8480-6") and comp["valueQuantity"]["value"] > 120:
                    high.add(o["id"])
    assert idset(synthea.store, "Observation", f"component-code-value-quantity={LOINC}|8480-6$gt120") == high
    _, resources = synthea.patients[1]
    family = of_type(resources, "Patient")[0]["name"][0]["family"]
    chained = idset(synthea.store, "Observation", f"subject:Patient.family={family}&code={LOINC}|29463-7")
    assert chained >= {o["id"] for o in of_type(resources, "Observation") if has_code(o, "29463-7")}


def test_encounters_conditions_and_revinclude(synthea: Loaded) -> None:
    pid, resources = synthea.patients[0]
    encounters = {e["id"] for e in of_type(resources, "Encounter")}
    assert idset(synthea.store, "Encounter", f"patient={pid}&date=ge1900") == encounters
    active = {c["id"] for c in of_type(resources, "Condition") if has_code(c, "active", "clinicalStatus")}
    assert idset(synthea.store, "Condition", f"patient=Patient/{pid}&clinical-status=active") == active
    result = search(synthea.store, "Patient", f"_id={pid}&_revinclude=Encounter:patient")
    assert {st.res_id for st in result.included} == encounters


def test_everything_and_lastn_on_synthea(synthea: Loaded) -> None:
    pid, resources = synthea.patients[2]
    shared = {"Organization", "Practitioner", "Location", "PractitionerRole", "Medication"}
    own = {r["id"] for r in resources if r["resourceType"] not in shared}
    seen: list[str] = []
    cursor = None
    with synthea.store.transaction(write=False) as tx:
        while True:
            page = Searcher(tx).everything(pid, count=50, cursor=cursor)
            seen += [m.res_id for m in page.matches]
            cursor = page.next_cursor
            if cursor is None:
                break
        vital = [
            o
            for o in of_type(resources, "Observation")
            if any(c.get("code") == "vital-signs" for cat in o.get("category", []) for c in cat.get("coding", []))
        ]
        q = QueryParser().parse("Observation", parse_pairs(f"patient={pid}&category=vital-signs"))
        latest = Searcher(tx).lastn(q, 1).matches
    assert set(seen) == own and len(seen) == len(own)
    per_code = Counter(o["code"]["coding"][0]["code"] for o in vital)
    assert len(latest) == len(per_code)
    for st in latest:
        res = st.resource()
        same_code = [o for o in vital if o["code"]["coding"][0]["code"] == res["code"]["coding"][0]["code"]]
        assert res["effectiveDateTime"] == max(o["effectiveDateTime"] for o in same_code)
