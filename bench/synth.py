"""Deterministic synthetic FHIR R4 data for the benchmarks.

Everything here is a pure function of its arguments (and a seed): the same call gives the same JSON,
so two runs, or two servers, are measured on identical data. Patients get Swedish-looking names and
(where ``../shared/data/testpersonnummer.txt`` exists) a test personnummer; their histories hold
encounters, conditions, vital-sign series, a medication request, a care plan and, for every third
patient, an open home-care Task owned by a municipality. Ids are client-assigned (``bench-...``) and
written with PUT entries in transaction Bundles, so the search scenarios know what to ask for without
depending on server-assigned ids.

This is a benchmark fixture, not the demo-region generator (``nara demo``), which is built elsewhere.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PERSONNUMMER = "http://electronichealth.se/identifier/personnummer"
UCUM = "http://unitsofmeasure.org"

GIVEN_F = ("Anna", "Eva", "Maria", "Karin", "Kristina", "Lena", "Sara", "Ingrid", "Elin", "Astrid", "Märta", "Linnéa")
GIVEN_M = ("Lars", "Erik", "Karl", "Anders", "Johan", "Per", "Nils", "Olof", "Gustav", "Sven", "Åke", "Björn")
FAMILY = (
    "Andersson",
    "Johansson",
    "Karlsson",
    "Nilsson",
    "Eriksson",
    "Larsson",
    "Olsson",
    "Persson",
    "Svensson",
    "Gustafsson",
    "Lindqvist",
    "Öberg",
    "Åström",
    "Bergström",
    "Lundgren",
    "Sjöberg",
)
MUNICIPALITIES = ("Kiruna", "Gällivare", "Luleå", "Piteå", "Boden", "Kalix", "Arjeplog", "Jokkmokk")
CITIES = ("Kiruna", "Gällivare", "Luleå", "Piteå", "Boden", "Kalix")

# (code, display, unit, ucum code, low, high) of single-value vital signs; blood pressure is separate.
VITALS = (
    ("8867-4", "Heart rate", "/min", "/min", 52, 110),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", "%", 88, 100),
    ("29463-7", "Body weight", "kg", "kg", 48, 120),
    ("8310-5", "Body temperature", "Cel", "Cel", 36, 39),
    ("9279-1", "Respiratory rate", "/min", "/min", 10, 26),
)
BP_CODE = "85354-9"
CONDITIONS = (
    ("38341003", "Hypertensive disorder"),
    ("44054006", "Diabetes mellitus type 2"),
    ("84114007", "Heart failure"),
    ("13645005", "Chronic obstructive lung disease"),
    ("26929004", "Alzheimer's disease"),
)
EPOCH = datetime(2024, 1, 1, tzinfo=UTC)
HISTORY_DAYS = 365


def _ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


def _shared_data_dir() -> Path:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    return Path(os.environ.get("NARA_SHARED_DATA", str(default)))


@cache
def _test_personnummer() -> tuple[str, ...]:
    path = _shared_data_dir() / "testpersonnummer.txt"
    if not path.exists():
        return ()
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())


# ---- ids -------------------------------------------------------------------------------------------
def patient_id(i: int) -> str:
    return f"bench-pat-{i:06d}"


def org_id(i: int) -> str:
    return f"bench-org-{i:03d}"


def practitioner_id(i: int) -> str:
    return f"bench-prac-{i:03d}"


N_ORGS = len(MUNICIPALITIES) + 4  # municipalities first, then region care units
N_PRACTITIONERS = 20


def municipality_org(i: int) -> str:
    """The municipality (home-care provider) responsible for patient ``i``."""
    return org_id(i % len(MUNICIPALITIES))


# ---- shared resources --------------------------------------------------------------------------
def organization(i: int) -> dict[str, Any]:
    if i < len(MUNICIPALITIES):
        name, kind = f"{MUNICIPALITIES[i]} kommun, hemtjänst", "govt"
    else:
        name, kind = f"Region Norrbotten, vårdcentral {CITIES[i % len(CITIES)]} {i}", "prov"
    return {
        "resourceType": "Organization",
        "id": org_id(i),
        "active": True,
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type", "code": kind}]}],
        "name": name,
    }


def practitioner(i: int) -> dict[str, Any]:
    rng = random.Random(f"prac-{i}")
    female = i % 2 == 0
    return {
        "resourceType": "Practitioner",
        "id": practitioner_id(i),
        "active": True,
        "name": [{"family": rng.choice(FAMILY), "given": [rng.choice(GIVEN_F if female else GIVEN_M)]}],
        "gender": "female" if female else "male",
    }


def directory_bundle() -> dict[str, Any]:
    """Organizations and practitioners every patient history refers to."""
    resources = [organization(i) for i in range(N_ORGS)] + [practitioner(i) for i in range(N_PRACTITIONERS)]
    return transaction(resources, method="PUT")


# ---- patients and histories --------------------------------------------------------------------
@dataclass(frozen=True)
class PatientFacts:
    """What the search scenarios need to know about a generated patient."""

    id: str
    family: str
    given: str
    birth_date: str


def patient_facts(i: int) -> PatientFacts:
    rng = random.Random(f"patient-{i}")
    female = rng.random() < 0.5
    given = rng.choice(GIVEN_F if female else GIVEN_M)
    family = rng.choice(FAMILY)
    birth = datetime(1925, 1, 1) + timedelta(days=rng.randrange(0, 365 * 80))
    return PatientFacts(patient_id(i), family, given, birth.strftime("%Y-%m-%d"))


def patient(i: int) -> dict[str, Any]:
    facts = patient_facts(i)
    rng = random.Random(f"patient-{i}")
    female = rng.random() < 0.5
    res: dict[str, Any] = {
        "resourceType": "Patient",
        "id": facts.id,
        "active": True,
        "name": [{"use": "official", "family": facts.family, "given": [facts.given]}],
        "gender": "female" if female else "male",
        "birthDate": facts.birth_date,
        "address": [{"city": CITIES[i % len(CITIES)], "country": "SE"}],
        "managingOrganization": {"reference": f"Organization/{org_id(len(MUNICIPALITIES) + i % 4)}"},
    }
    numbers = _test_personnummer()
    if numbers:
        res["identifier"] = [{"system": PERSONNUMMER, "value": numbers[i % len(numbers)]}]
    return res


def vital_observation(pid: str, when: datetime, rng: random.Random, kind: int | None = None) -> dict[str, Any]:
    """One vital-sign Observation (no id) for patient ``pid``: a value series or a blood pressure."""
    kind = rng.randrange(len(VITALS) + 1) if kind is None else kind
    base: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBS_CATEGORY, "code": "vital-signs", "display": "Vital Signs"}]}],
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": _ts(when),
    }
    if kind == len(VITALS):
        base["code"] = {"coding": [{"system": LOINC, "code": BP_CODE, "display": "Blood pressure panel"}]}
        base["component"] = [
            _component("8480-6", "Systolic blood pressure", rng.randint(100, 180)),
            _component("8462-4", "Diastolic blood pressure", rng.randint(60, 105)),
        ]
        return base
    code, display, unit, ucum, lo, hi = VITALS[kind]
    value = round(rng.uniform(lo, hi), 1)
    base["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}]}
    base["valueQuantity"] = {"value": value, "unit": unit, "system": UCUM, "code": ucum}
    return base


def _component(code: str, display: str, value: int) -> dict[str, Any]:
    return {
        "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
        "valueQuantity": {"value": value, "unit": "mm[Hg]", "system": UCUM, "code": "mm[Hg]"},
    }


def patient_history(i: int, observations: int = 30) -> list[dict[str, Any]]:
    """Patient ``i`` and their history (about ``observations`` + 10 resources), all with client ids."""
    rng = random.Random(f"history-{i}")
    pid = patient_id(i)
    subject = {"reference": f"Patient/{pid}"}
    unit = {"reference": f"Organization/{org_id(len(MUNICIPALITIES) + i % 4)}"}
    out: list[dict[str, Any]] = [patient(i)]
    encounters: list[dict[str, Any]] = []
    for e in range(3):
        start = EPOCH + timedelta(days=rng.randrange(HISTORY_DAYS), hours=rng.randrange(8, 16))
        enc = {
            "resourceType": "Encounter",
            "id": f"{pid}-enc-{e}",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject,
            "serviceProvider": unit,
            "participant": [{"individual": {"reference": f"Practitioner/{practitioner_id(rng.randrange(20))}"}}],
            "period": {"start": _ts(start), "end": _ts(start + timedelta(minutes=30))},
        }
        encounters.append(enc)
    out += encounters
    for c in range(2):
        code, display = CONDITIONS[(i + c) % len(CONDITIONS)]
        out.append(
            {
                "resourceType": "Condition",
                "id": f"{pid}-cond-{c}",
                "clinicalStatus": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]
                },
                "code": {"coding": [{"system": SNOMED, "code": code, "display": display}]},
                "subject": subject,
                "encounter": {"reference": f"Encounter/{encounters[c]['id']}"},
                "recordedDate": encounters[c]["period"]["start"],
            }
        )
    for o in range(observations):
        when = EPOCH + timedelta(minutes=rng.randrange(HISTORY_DAYS * 24 * 60))
        obs = vital_observation(pid, when, rng)
        obs["id"] = f"{pid}-obs-{o}"
        out.append(obs)
    out.append(medication_request(pid, rng))
    out.append(care_plan(pid, i))
    if i % 3 == 0:
        out.append(task(pid, i))
    return out


def medication_request(pid: str, rng: random.Random, rid: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid or f"{pid}-medreq-0",
        "status": "active",
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.whocc.no/atc", "code": "C09AA05", "display": "Ramipril"}]
        },
        "subject": {"reference": f"Patient/{pid}"},
        "authoredOn": _ts(EPOCH + timedelta(days=rng.randrange(HISTORY_DAYS))),
        "dosageInstruction": [{"text": "1 tablett dagligen"}],
    }
    return res


def care_plan(pid: str, i: int, rid: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "id": rid or f"{pid}-careplan-0",
        "status": "active",
        "intent": "plan",
        "title": "Egenmonitorering av blodtryck",
        "subject": {"reference": f"Patient/{pid}"},
        "period": {"start": _ts(EPOCH + timedelta(days=i % 90))},
    }


def task(pid: str, i: int, rid: str | None = None) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "id": rid or f"{pid}-task-0",
        "status": "requested",
        "intent": "order",
        "description": "Hemsjukvård: blodtryckskontroll efter utskrivning",
        "for": {"reference": f"Patient/{pid}"},
        "owner": {"reference": f"Organization/{municipality_org(i)}"},
        "authoredOn": _ts(EPOCH + timedelta(days=i % HISTORY_DAYS)),
    }


# ---- bodies for write scenarios ----------------------------------------------------------------
CRUD_TYPES = (
    "Patient",
    "Observation",
    "Encounter",
    "Condition",
    "MedicationRequest",
    "CarePlan",
    "Organization",
    "Practitioner",
)


def crud_body(rtype: str, n: int, pid: str) -> dict[str, Any]:
    """A fresh resource of ``rtype`` (no id) for create/update load; ``pid`` is an existing patient."""
    rng = random.Random(f"crud-{rtype}-{n}")
    if rtype == "Patient":
        res = patient(1_000_000 + n)
    elif rtype == "Observation":
        res = vital_observation(pid, EPOCH + timedelta(minutes=n), rng)
    elif rtype == "Encounter":
        res = patient_history(0, observations=0)[1]
        res["subject"] = {"reference": f"Patient/{pid}"}
    elif rtype == "Condition":
        res = patient_history(0, observations=0)[4]
        res.pop("encounter")
        res["subject"] = {"reference": f"Patient/{pid}"}
    elif rtype == "MedicationRequest":
        res = medication_request(pid, rng)
    elif rtype == "CarePlan":
        res = care_plan(pid, n)
    elif rtype == "Organization":
        res = organization(len(MUNICIPALITIES) + n % 4)
        res["name"] = f"{res['name']} ({n})"
    elif rtype == "Practitioner":
        res = practitioner(n)
    else:
        raise ValueError(f"no CRUD body for {rtype}")
    res.pop("id", None)
    return res


def transaction(resources: list[dict[str, Any]], method: str = "PUT") -> dict[str, Any]:
    """A transaction Bundle: PUT to ``Type/id`` (resources carry ids) or POST (server ids)."""
    entries = []
    for res in resources:
        if method == "PUT":
            entries.append({"resource": res, "request": {"method": "PUT", "url": f"{res['resourceType']}/{res['id']}"}})
        else:
            entries.append({"resource": res, "request": {"method": "POST", "url": res["resourceType"]}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def vitals_transaction(n: int, seed: int, patients: int) -> dict[str, Any]:
    """A transaction of ``n`` vital-sign Observations (POST) spread over the first ``patients`` patients."""
    rng = random.Random(f"vitals-{seed}")
    obs = [
        vital_observation(patient_id(rng.randrange(patients)), EPOCH + timedelta(minutes=rng.randrange(10**6)), rng)
        for _ in range(n)
    ]
    return transaction(obs, method="POST")
