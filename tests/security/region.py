"""A small region for the access-policy tests, built through the FHIR API.

Two care providers: the region (units: health centre VC, hospital ward AVD, and a unit with no care
relationships, TOM) and a municipality (home health care HSV). Staff act through assignments with
the rights the tests need; patients have care relationships, consents, blocks and proxies as the
tests set up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import orjson

from nara.security.actors import PURPOSE_CARE, Assignment
from tests.conftest import token

NARA = "https://nara.se/fhir"
HSA = "urn:oid:1.2.752.29.4.19"
PNR = "http://electronichealth.se/identifier/personnummer"
JSON = {"Content-Type": "application/fhir+json"}

REGION, MUNI = "SE2321000032-REG", "SE2120000000-KOM"
VC, AVD, TOM, HSV = "SE2321000032-VC1", "SE2321000032-AVD", "SE2321000032-TOM", "SE2120000000-HSV"

ADULT_PNR = "195002032380"  # Luhn-valid test number; born 1950-02-03


def assignment(*rights: str, **fields: Any) -> Assignment:
    """A staff assignment at the health centre (VC) of the region, built directly rather than from a token, with
    ``rights`` (``Läsa;alla;SJF``, say); ``fields`` set others (its id, say)."""
    values: dict[str, Any] = {
        "id": "SE2321000032-A001",
        "role_id": "role-1",
        "unit": VC,
        "unit_name": "Vårdcentralen",
        "provider": REGION,
        "provider_name": "Region",
        "provider_kind": "vardgivare",
        "purpose": PURPOSE_CARE,
        "rights": rights,
    }
    return Assignment(**{**values, **fields})


def luhn_pnr(born: date, serial: int) -> str:
    """A Luhn-valid 12-digit personnummer for a date of birth (test helper)."""
    ten = born.strftime("%y%m%d") + f"{serial:03d}"
    total = 0
    for i, ch in enumerate(ten):
        prod = int(ch) * (2 if i % 2 == 0 else 1)
        total += prod // 10 + prod % 10
    return born.strftime("%Y") + ten[2:] + str((10 - total % 10) % 10)


@dataclass
class Staff:
    hsa: str
    assignment: str
    practitioner: str
    unit: str

    def token(self, **kw: Any) -> str:
        return token(self.hsa, "staff", assignment=self.assignment, **kw)


@dataclass
class Region:
    fhir: httpx.Client
    staff: dict[str, Staff] = field(default_factory=dict)
    patients: dict[str, str] = field(default_factory=dict)  # name -> Patient id
    pnr: dict[str, str] = field(default_factory=dict)  # name -> personnummer

    def put(self, res: dict[str, Any]) -> dict[str, Any]:
        r = self.fhir.put(f"{res['resourceType']}/{res['id']}", content=orjson.dumps(res), headers=JSON)
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]

    def post(self, res: dict[str, Any], bearer: str | None = None) -> dict[str, Any]:
        headers = dict(JSON)
        if bearer:
            headers["Authorization"] = f"Bearer {bearer}"
        r = self.fhir.post(res["resourceType"], content=orjson.dumps(res), headers=headers)
        assert r.status_code == 201, r.text
        return r.json()  # type: ignore[no-any-return]

    def as_(self, bearer: str) -> httpx.Client:
        """A client sending this bearer token (same server)."""
        return httpx.Client(
            base_url=str(self.fhir.base_url),
            timeout=30,
            headers={"Accept": "application/fhir+json", "Authorization": f"Bearer {bearer}"},
        )


def org(oid: str, name: str, role: str, part_of: str | None = None) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Organization",
        "id": oid,
        "identifier": [{"system": HSA, "value": oid}],
        "active": True,
        "type": [{"coding": [{"system": f"{NARA}/CodeSystem/organization-role", "code": role}]}],
        "name": name,
    }
    if part_of:
        res["partOf"] = {"reference": f"Organization/{part_of}"}
    return res


def build_region(fhir: httpx.Client) -> Region:
    reg = Region(fhir)
    for res in (
        org(REGION, "Region Örebro län", "vardgivare"),
        org(MUNI, "Kumla kommun", "vardgivare"),
        org(VC, "Vårdcentralen Kumla", "vardenhet", REGION),
        org(AVD, "Medicinavdelning 3, USÖ", "vardenhet", REGION),
        org(TOM, "Ögonmottagningen", "vardenhet", REGION),
        org(HSV, "Hemsjukvården Kumla", "vardenhet", MUNI),
    ):
        reg.put(res)

    def staff(
        key: str,
        unit: str,
        rights: list[str],
        purpose: str = "Vård och behandling",
        roles: tuple[str, ...] = ("lakare",),
        family: str = "Svensson",
        pnr: str | None = None,
        address: str | None = None,
    ) -> None:
        hsa = f"SE2321000032-P{key.upper()}"
        prac: dict[str, Any] = {
            "resourceType": "Practitioner",
            "id": f"prac-{key}",
            "identifier": [{"system": HSA, "value": hsa}],
            "name": [{"family": family, "given": [key.capitalize()]}],
        }
        if pnr:
            prac["identifier"].append({"system": PNR, "value": pnr})
        if address:
            prac["address"] = [{"line": [address], "city": "Kumla"}]
        reg.put(prac)
        assignment = f"{hsa}-U"
        reg.put(
            {
                "resourceType": "PractitionerRole",
                "id": f"role-{key}",
                "active": True,
                "identifier": [{"system": HSA, "value": assignment}],
                "practitioner": {"reference": f"Practitioner/prac-{key}"},
                "organization": {"reference": f"Organization/{unit}"},
                "code": [{"coding": [{"system": f"{NARA}/CodeSystem/staff-role", "code": r}]} for r in roles],
                "extension": [{"url": f"{NARA}/StructureDefinition/assignment-purpose", "valueString": purpose}]
                + [{"url": f"{NARA}/StructureDefinition/assignment-right", "valueString": x} for x in rights],
            }
        )
        reg.staff[key] = Staff(hsa, assignment, f"prac-{key}", unit)

    full = ["Läsa;alla;SJF", "Skriva;alla;VE"]
    staff("vc", VC, full)  # district physician at the health centre
    staff("vc2", VC, full, family="Berg")  # a colleague at the same unit
    staff("avd", AVD, ["Läsa;alla;VG", "Skriva;alla;VE"])  # ward nurse: own provider only
    staff("avdsjf", AVD, full)  # ward physician with SJF
    staff("tom", TOM, full)  # no care relationships at this unit
    staff("hsv", HSV, full)  # municipal nurse
    staff("hsvve", HSV, ["Läsa;alla;VE", "Skriva;alla;VE"])  # municipal nurse without SJF
    staff("qa", VC, ["Läsa;alla;VG"], purpose="Kvalitetssäkring")
    staff("audit", VC, ["Läsa;logg;VG"], purpose="Logggranskning", roles=("auditor",))
    staff("auditkom", HSV, ["Läsa;logg;VG"], purpose="Logggranskning", roles=("auditor",))  # the municipality's
    staff("admin", VC, ["Skriva;katalog;VG"], purpose="Administration", roles=("admin",))
    staff("self", VC, full, family="Andersson", pnr=ADULT_PNR, address="Storgatan 1")

    def patient(name: str, pnr: str, family: str, **extra: Any) -> None:
        res = {
            "resourceType": "Patient",
            "id": f"pat-{name}",
            "identifier": [{"system": PNR, "value": pnr}],
            "name": [{"family": family, "given": [name.capitalize()]}],
            **extra,
        }
        reg.put(res)
        reg.patients[name] = res["id"]
        reg.pnr[name] = pnr

    today = date.today()
    patient(
        "anna", ADULT_PNR, "Andersson", birthDate="1950-02-03", address=[{"line": ["Storgatan 1"], "city": "Kumla"}]
    )
    patient(
        "child",
        luhn_pnr(today.replace(year=today.year - 8) - timedelta(days=10), 123),
        "Ek",
        birthDate=(today.replace(year=today.year - 8) - timedelta(days=10)).isoformat(),
    )
    patient(
        "teen",
        luhn_pnr(today.replace(year=today.year - 15) - timedelta(days=10), 246),
        "Ek",
        birthDate=(today.replace(year=today.year - 15) - timedelta(days=10)).isoformat(),
    )
    patient(
        "hidden",
        luhn_pnr(date(1970, 5, 5), 357),
        "Dold",
        birthDate="1970-05-05",
        address=[{"line": ["Hemlig väg 7"], "city": "Örebro"}],
        meta={
            "security": [
                {"system": "http://hl7.se/fhir/ig/base/CodeSystem/SecurityLabel", "code": "sekretessmarkering"}
            ]
        },
    )
    reg.pnr["guardian"] = luhn_pnr(date(1985, 3, 3), 468)
    for child in ("child", "teen"):
        reg.put(
            {
                "resourceType": "RelatedPerson",
                "id": f"guard-{child}",
                "active": True,
                "patient": {"reference": f"Patient/pat-{child}"},
                "relationship": [
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "GUARD"}]}
                ],
                "identifier": [{"system": PNR, "value": reg.pnr["guardian"]}],
            }
        )

    # Care relationships: Anna is listed at the health centre, admitted to the ward, and receives home
    # health care; the hidden patient is listed at the health centre.
    for unit, pid in ((VC, "anna"), (HSV, "anna"), (VC, "hidden"), (VC, "child"), (VC, "teen")):
        reg.put(episode_of_care(f"eoc-{pid}-{unit[-3:].lower()}", f"pat-{pid}", unit))
    reg.put(
        {
            "resourceType": "Encounter",
            "id": "enc-anna-avd",
            "status": "in-progress",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "IMP"},
            "subject": {"reference": "Patient/pat-anna"},
            "serviceProvider": {"reference": f"Organization/{AVD}"},
        }
    )
    return reg


def episode_of_care(eoc_id: str, patient_id: str, unit: str) -> dict[str, Any]:
    """An active episode of care at ``unit``: the patient's care relationship there."""
    return {
        "resourceType": "EpisodeOfCare",
        "id": eoc_id,
        "status": "active",
        "patient": {"reference": f"Patient/{patient_id}"},
        "managingOrganization": {"reference": f"Organization/{unit}"},
    }


def observation(patient_id: str, code: str, value: float, text: str = "") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": code}], "text": text or code},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-11-01T08:00:00+01:00",
        "valueQuantity": {"value": value, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
    }


def consent(patient_id: str, kind: str, provision: dict[str, Any], status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": f"{NARA}/CodeSystem/pdl-consent-kind", "code": kind}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "dateTime": "2026-01-01T00:00:00Z",
        "provision": provision,
    }


def actor(role: str, ref: str) -> dict[str, Any]:
    return {
        "role": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": role}]},
        "reference": {"reference": ref},
    }


def ids(bundle: dict[str, Any], mode: str = "match") -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode}
