"""Generating the demo region into a store (SQLite and PostgreSQL): demo users, access data, external data."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
from sqlalchemy import func, select
from typer.testing import CliRunner

from nara.cli import app
from nara.demo.generate import Options, generate, is_empty
from nara.demo.users import demo_users
from nara.fhir.identifiers import parse_personal_identity
from nara.store.schema import resource
from nara.store.store import Store
from tests.conftest import Backend, shared_data_dir

AS_OF = date(2026, 11, 22)


def numbers() -> Path | None:
    path = shared_data_dir() / "testpersonnummer.txt"
    return path if path.exists() else None


def small(patients: int = 300) -> Options:
    return Options(patients=patients, seed=5, as_of=AS_OF, personnummer_file=numbers())


def count(store: Store, rtype: str) -> int:
    query = select(func.count()).where(resource.c.res_type == rtype, resource.c.deleted.is_(False))
    with store.engine.connect() as conn:
        return int(conn.execute(query).scalar_one())


def test_generated_region_lists_the_eight_demo_users_in_order(store: Store) -> None:
    assert is_empty(store)
    summary = generate(store, small())
    assert not is_empty(store)
    assert summary.people == 300 == count(store, "Patient")
    types = ("Patient", "Observation", "EpisodeOfCare", "Encounter", "Condition", "CarePlan", "MedicationRequest",
             "Consent", "RelatedPerson", "Organization", "Practitioner", "PractitionerRole", "Location",
             "HealthcareService")  # fmt: skip
    assert summary.resources + summary.directory_resources == sum(count(store, t) for t in types)
    users = demo_users(store, today=AS_OF)
    assert [u.key for u in users] == [
        "citizen", "guardian", "district-nurse", "municipal-nurse", "hospital-physician", "social-care-officer",
        "auditor", "administrator",
    ]  # fmt: skip
    by = {u.key: u for u in users}
    assert by["citizen"].kind == "citizen" and parse_personal_identity(by["citizen"].sub)
    guardian = by["guardian"]
    assert guardian.kind == "proxy" and guardian.patient is not None
    assert parse_personal_identity(guardian.patient).age_on(AS_OF) < 13
    with store.transaction(write=False) as tx:
        for u in users[2:]:
            assert u.kind == "staff" and u.assignment
            role = tx.read("PractitionerRole", u.assignment).resource()
            assert role["active"] is True
            assert role["practitioner"]["reference"] == f"Practitioner/{u.sub}"
            unit = tx.read("Organization", role["organization"]["reference"].split("/")[1]).resource()
            assert unit["active"] is True and u.unit == unit["name"]


def test_the_demo_citizen_has_care_relationships_with_every_demo_care_unit(store: Store) -> None:
    rules = pytest.importorskip("nara.security.schema")
    generate(store, small())
    users = {u.key: u for u in demo_users(store, today=AS_OF)}
    with store.transaction(write=False) as tx:
        citizen = tx.match(
            "Patient", f"identifier=http://electronichealth.se/identifier/personnummer|{users['citizen'].sub}"
        )
        assert len(citizen) == 1
        units = {
            r.unit
            for r in tx.conn.execute(
                select(rules.care_relation.c.unit).where(rules.care_relation.c.patient_id == citizen[0].res_id)
            )
        }
        consents = {
            r.unit
            for r in tx.conn.execute(
                select(rules.pdl_rule.c.unit).where(
                    rules.pdl_rule.c.patient_id == citizen[0].res_id, rules.pdl_rule.c.kind == "consent"
                )
            )
        }
    staff_units = {
        tx_unit
        for key in ("district-nurse", "municipal-nurse", "hospital-physician", "social-care-officer")
        for tx_unit in [_unit_of(store, users[key].assignment)]
    }
    assert staff_units <= units
    assert _unit_of(store, users["municipal-nurse"].assignment) in consents


def _unit_of(store: Store, assignment: str | None) -> str:
    assert assignment
    with store.transaction(write=False) as tx:
        return str(tx.read("PractitionerRole", assignment).resource()["organization"]["reference"].split("/")[1])


def test_directory_entries_are_owned_by_nobody_and_records_by_their_unit(store: Store) -> None:
    generate(store, small(200))
    with store.engine.connect() as conn:
        rows = conn.execute(
            select(resource.c.res_type, resource.c.owner_org, resource.c.owner_unit).where(
                resource.c.res_type.in_(["Condition", "Encounter", "Observation"])
            )
        ).all()
    assert rows and all(org and unit for _, org, unit in rows)


def test_synthea_import_works_alongside_the_synthetic_region(
    backend: Backend, store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NARA_DATABASE_URL", raising=False)  # the command sets it; restored after the test
    folder = shared_data_dir() / "synthea-r4"
    if not folder.exists():
        pytest.skip(f"{folder} not present")
    generate(store, small(200))
    files = sorted(folder.glob("*.json"))[:3]
    result = CliRunner().invoke(app, ["import", *map(str, files), "--database-url", backend.url])
    assert result.exit_code == 0, result.output
    assert count(store, "Patient") == 203
    assert len(demo_users(store, today=AS_OF)) == 8
    with store.transaction(write=False) as tx:
        american = tx.match("Patient", "address-country=US", limit=10)
        swedish = tx.match("Patient", "address-country=SE", limit=300)
        labels = "http://hl7.se/fhir/ig/base/CodeSystem/SecurityLabel"
        protected = tx.match("Patient", f"_security={labels}|sekretessmarkering,{labels}|skyddadFolkbokforing", 300)
    assert len(american) == 3
    # A protected-identity patient's address is not searchable (R-ID-3); every other Swede is found by it.
    assert len(swedish) == 200 - len(protected)
