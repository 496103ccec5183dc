"""One person's record in the synthetic region, shaped by age: the resources and the unit that owns each.

Chronic conditions come at age-dependent prevalences (hypertension, type 2 diabetes, heart failure, COPD,
dementia) coded in ICD-10-SE and SNOMED CT; with them come medications (ATC), lab results (NPU), visits at the
listed health centre, hospital stays, care plans, municipal home health care and home care for older people,
consents and blocks (docs/security.md §3), guardians for children, and for some a home-monitoring series that
mostly follows physiology and sometimes deteriorates. Everything is drawn from one random stream per person.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import cache
from typing import Any
from zoneinfo import ZoneInfo

from nara.demo.organisation import RegionDirectory
from nara.demo.population import Person
from nara.directory.codes import canonical_base
from nara.fhir.identifiers import PERSONNUMMER

Owner = tuple[str | None, str | None]
Item = tuple[dict[str, Any], Owner]

BASE = canonical_base()
DEMO = f"{BASE}/CodeSystem/demo"
DEMO_USER = f"{BASE}/CodeSystem/demo-user"
EPISODE_TYPE = f"{BASE}/CodeSystem/episode-type"
CONSENT_KIND = f"{BASE}/CodeSystem/pdl-consent-kind"
INFORMATION_TYPE = f"{BASE}/CodeSystem/information-type"
SECURITY_LABEL = "http://hl7.se/fhir/ig/base/CodeSystem/SecurityLabel"
ICD10SE = "urn:oid:1.2.752.116.1.1.1.1.3"
SNOMED = "http://snomed.info/sct"
ATC = "http://www.whocc.no/atc"
NPU = "http://npu-terminology.org"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
COND_CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
COND_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
COND_CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
TZ = ZoneInfo("Europe/Stockholm")

SYNTHETIC_TAG = {"system": DEMO, "code": "synthetic", "display": "Syntetisk person (demodata)"}
GENERATED_PNR_TAG = {
    "system": DEMO,
    "code": "generated-personnummer",
    "display": "Personnumret är genererat, inte ett av Skatteverkets testpersonnummer",
}
DEMO_LOGIN_TAG = {"system": DEMO, "code": "demo-login", "display": "Demoinloggning"}

# condition key -> (ICD-10-SE code, Swedish display, SNOMED CT code, display)
CONDITIONS: dict[str, tuple[str, str, str, str]] = {
    "hypertension": ("I10", "Essentiell hypertoni", "38341003", "Hypertensive disorder"),
    "diabetes": ("E11.9", "Typ 2-diabetes utan komplikationer", "44054006", "Diabetes mellitus type 2"),
    "heart_failure": ("I50.9", "Hjärtsvikt, ospecificerad", "84114007", "Heart failure"),
    "copd": ("J44.9", "Kroniskt obstruktiv lungsjukdom, ospecificerad", "13645005", "Chronic obstructive lung disease"),
    "dementia": ("F03.9", "Ospecificerad demens", "52448006", "Dementia"),
}
# Prevalence per condition by age band (lower bound of the band -> share), in the order checked.
PREVALENCE: dict[str, tuple[tuple[int, float], ...]] = {
    "hypertension": ((85, 0.60), (75, 0.55), (65, 0.42), (45, 0.18), (30, 0.04), (0, 0.0)),
    "diabetes": ((75, 0.15), (65, 0.13), (45, 0.06), (30, 0.015), (0, 0.0)),
    "heart_failure": ((85, 0.16), (75, 0.08), (65, 0.03), (55, 0.01), (40, 0.002), (0, 0.0)),
    "copd": ((75, 0.09), (65, 0.07), (45, 0.03), (0, 0.0)),
    "dementia": ((85, 0.22), (75, 0.07), (65, 0.015), (0, 0.0)),
}
MEDICATIONS: dict[str, tuple[tuple[str, str, str], ...]] = {
    "hypertension": (("C09AA05", "Ramipril", "2,5 mg 1 tablett dagligen"),
                     ("C08CA01", "Amlodipin", "5 mg 1 tablett dagligen")),
    "diabetes": (("A10BA02", "Metformin", "500 mg 1 tablett 2 gånger dagligen"),),
    "heart_failure": (("C07AB07", "Bisoprolol", "2,5 mg 1 tablett dagligen"),
                      ("C03CA01", "Furosemid", "40 mg 1 tablett på morgonen"),
                      ("C09DX04", "Sakubitril och valsartan", "49 mg/51 mg 1 tablett 2 gånger dagligen")),
    "copd": (("R03BB04", "Tiotropiumbromid", "2 inhalationer 1 gång dagligen"),
             ("R03AK06", "Salmeterol och flutikason", "1 inhalation 2 gånger dagligen")),
    "dementia": (("N06DA02", "Donepezil", "5 mg 1 tablett till natten"),),
}  # fmt: skip
# NPU code -> (display, UCUM unit, mean, sd, decimals)
LABS: dict[str, tuple[str, str, float, float, int]] = {
    "NPU27300": ("B—Hemoglobin A1c (IFCC); subst.fr.", "mmol/mol", 52.0, 9.0, 0),
    "NPU18016": ("P—Kreatininium; subst.konc.", "umol/L", 85.0, 18.0, 0),
    "NPU03230": ("P—Kalium(I); subst.konc.", "mmol/L", 4.2, 0.35, 1),
    "NPU03429": ("P—Natrium(I); subst.konc.", "mmol/L", 140.0, 2.5, 0),
    "NPU21571": ("P—Natriuretisk peptid B prohormon N-terminal; massekonc.", "ng/L", 1400.0, 700.0, 0),
    "NPU28309": ("B—Hemoglobin; massekonc.", "g/L", 135.0, 12.0, 0),
}
LABS_FOR: dict[str, tuple[str, ...]] = {
    "diabetes": ("NPU27300", "NPU18016"),
    "hypertension": ("NPU18016", "NPU03230", "NPU03429"),
    "heart_failure": ("NPU21571", "NPU18016", "NPU03230", "NPU28309"),
    "copd": ("NPU28309",),
    "dementia": ("NPU28309",),
}
# Home monitoring: who is enrolled (share of people with the condition) and what they measure.
MONITORING_SHARE = {"heart_failure": 0.15, "copd": 0.08, "hypertension": 0.03, "diabetes": 0.04}
MONITORING_PARAMS = {
    "heart_failure": ("weight", "bp", "pulse", "spo2"),
    "copd": ("spo2", "pulse"),
    "hypertension": ("bp", "pulse"),
    "diabetes": ("glucose",),
}
DETERIORATION_SHARE = 0.2
EPISODE_TYPES = {
    "listning": "Listning på vårdcentral",
    "hemsjukvard": "Kommunal hemsjukvård",
    "hemtjanst": "Hemtjänst (SoL)",
    "lss": "Insats enligt LSS",
    "bistandsarende": "Biståndsärende",
    "egenmonitorering": "Egenmonitorering",
}


@dataclass
class RecordContext:
    directory: RegionDirectory
    as_of: date
    monitoring_days: int
    county: str


def prevalence(condition: str, age: int) -> float:
    for lower, share in PREVALENCE[condition]:
        if age >= lower:
            return share
    return 0.0


def ref(rtype: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rtype}/{rid}"}


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text:
        out["text"] = text
    return out


@cache
def _offset(day: date) -> str:
    """The Stockholm UTC offset on ``day`` (midday), as +01:00 / +02:00."""
    off = datetime.combine(day, time(12), TZ).utcoffset()
    assert off is not None
    minutes = int(off.total_seconds() // 60)
    return f"+{minutes // 60:02d}:{minutes % 60:02d}"


def stamp(day: date, hour: int, minute: int = 0) -> str:
    return f"{day.isoformat()}T{hour:02d}:{minute:02d}:00{_offset(day)}"


def quantity(value: float, unit: str, code: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": code or unit}


class PersonRecord:
    """Builds one person's resources; :meth:`build` returns them with their owners, Patient first."""

    def __init__(self, person: Person, ctx: RecordContext) -> None:
        self.p = person
        self.ctx = ctx
        self.d = ctx.directory
        self.today = ctx.as_of
        self.age = person.age_on(ctx.as_of)
        self.rng = random.Random(f"record/{person.id}")  # noqa: S311 (synthetic data, not secrets)
        self.items: list[Item] = []
        self.patient_ref = ref("Patient", person.id)
        self.scenario = person.scenario

    # ---- helpers ------------------------------------------------------------------------------
    def new_id(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def add(self, res: dict[str, Any], unit: str | None) -> dict[str, Any]:
        owner: Owner = self.d.owner(unit) if unit else (None, None)
        self.items.append((res, owner))
        return res

    def day_within(self, days_back_max: int, days_back_min: int = 0) -> date:
        return self.today - timedelta(days=self.rng.randint(days_back_min, max(days_back_min, days_back_max)))

    def staff(self, unit: str, *roles: str) -> str:
        candidates = [s for s in self.d.staff.get(unit, []) if s.role in roles] or self.d.staff.get(unit, [])
        return self.rng.choice(candidates).practitioner

    # ---- the record ---------------------------------------------------------------------------
    def build(self) -> list[Item]:
        self.patient()
        self.guardians()
        listing_start = self.listing()
        conditions = self.conditions()
        self.primary_care(conditions, listing_start)
        self.hospital(conditions)
        self.municipal(conditions)
        self.monitoring(conditions)
        self.block()
        return self.items

    def patient(self) -> None:
        p = self.p
        meta: dict[str, Any] = {"tag": [SYNTHETIC_TAG] + ([] if p.from_test_file else [GENERATED_PNR_TAG])}
        if self.scenario.get("demo_user"):
            meta["tag"] += [DEMO_LOGIN_TAG, coding(DEMO_USER, str(self.scenario["demo_user"]))]
        if p.protected:
            display = "Sekretessmarkering" if p.protected == "sekretessmarkering" else "Skyddad folkbokföring"
            meta["security"] = [coding(SECURITY_LABEL, p.protected, display)]
        muni = next(m for m in self.d.config.municipalities if m.code == p.municipality)
        res: dict[str, Any] = {
            "resourceType": "Patient",
            "id": p.id,
            "meta": meta,
            "identifier": [{"system": PERSONNUMMER, "value": p.personnummer}],
            "active": True,
            "name": [{"use": "official", "family": p.family, "given": [p.given], "text": f"{p.given} {p.family}"}],
        }
        if p.phone:
            res["telecom"] = [{"system": "phone", "value": p.phone, "use": "mobile"}]
        res["gender"] = p.sex
        res["birthDate"] = p.birth.isoformat()
        res["address"] = [
            {
                "use": "home",
                "type": "physical",
                "line": [p.line],
                "postalCode": p.postal_code,
                "city": p.town,
                "district": muni.name,
                "state": self.ctx.county,
                "country": "SE",
            }
        ]
        res["generalPractitioner"] = [ref("Organization", p.health_centre)]
        self.add(res, None)

    def guardians(self) -> None:
        if self.age >= 18:
            return
        adult = (
            self.p.birth.replace(year=self.p.birth.year + 18)
            if not (self.p.birth.month == 2 and self.p.birth.day == 29)
            else date(self.p.birth.year + 18, 3, 1)
        )
        for g in self.p.guardians:
            parent = "MTH" if g.sex == "female" else "FTH"
            res: dict[str, Any] = {
                "resourceType": "RelatedPerson",
                "id": self.new_id(),
                "identifier": [{"system": PERSONNUMMER, "value": g.personnummer}],
                "active": True,
                "patient": self.patient_ref,
                "relationship": [
                    concept(ROLE_CODE, "GUARD", "guardian"),
                    concept(ROLE_CODE, parent, "mother" if parent == "MTH" else "father"),
                ],
                "name": [{"family": g.family, "given": [g.given], "text": f"{g.given} {g.family}"}],
                "gender": g.sex,
                "period": {"start": self.p.birth.isoformat(), "end": adult.isoformat()},
            }
            demo = self.scenario.get("guardian_login")
            if demo and demo == g.personnummer:
                res["meta"] = {"tag": [DEMO_LOGIN_TAG, coding(DEMO_USER, "guardian")]}
            self.add(res, None)

    def episode(self, kind: str, unit: str, start: date, status: str = "active") -> dict[str, Any]:
        return self.add(
            {
                "resourceType": "EpisodeOfCare",
                "id": self.new_id(),
                "status": status,
                "type": [concept(EPISODE_TYPE, kind, EPISODE_TYPES[kind])],
                "patient": self.patient_ref,
                "managingOrganization": ref("Organization", unit),
                "period": {"start": start.isoformat()},
            },
            unit,
        )

    def listing(self) -> date:
        start = max(self.p.birth, self.today - timedelta(days=self.rng.randint(30, 15 * 365)))
        self.episode("listning", self.p.health_centre, start)
        return start

    def conditions(self) -> dict[str, dict[str, Any]]:
        forced = set(self.scenario.get("conditions", ()))  # type: ignore[call-overload]
        out: dict[str, dict[str, Any]] = {}
        hc = self.p.health_centre
        for key, (icd, icd_display, sct, sct_display) in CONDITIONS.items():
            chance = prevalence(key, self.age)
            if key == "heart_failure" and "hypertension" in out:
                chance *= 1.5
            if key not in forced and self.rng.random() >= chance:
                continue
            onset = self.day_within(min(20 * 365, max(60, (self.age - 30) * 365)), 60)
            onset = max(onset, self.p.birth)
            res = {
                "resourceType": "Condition",
                "id": self.new_id(),
                "clinicalStatus": concept(COND_CLINICAL, "active"),
                "verificationStatus": concept(COND_VERIFICATION, "confirmed"),
                "category": [concept(COND_CATEGORY, "problem-list-item", "Problem List Item")],
                "code": {
                    "coding": [coding(ICD10SE, icd, icd_display), coding(SNOMED, sct, sct_display)],
                    "text": icd_display,
                },
                "subject": self.patient_ref,
                "onsetDateTime": onset.isoformat(),
                "recordedDate": onset.isoformat(),
                "recorder": ref("Practitioner", self.staff(hc, "lakare")),
            }
            out[key] = self.add(res, hc)
            self.medications(key, onset, hc)
        return out

    def medications(self, condition: str, start: date, unit: str) -> None:
        options = MEDICATIONS[condition]
        chosen = options if condition == "heart_failure" else options[: 1 + (self.rng.random() < 0.35)]
        prescriber = self.staff(unit, "lakare")
        for atc, name, dosage in chosen:
            self.add(
                {
                    "resourceType": "MedicationRequest",
                    "id": self.new_id(),
                    "status": "active",
                    "intent": "order",
                    "medicationCodeableConcept": concept(ATC, atc, name, name),
                    "subject": self.patient_ref,
                    "authoredOn": max(start, self.today - timedelta(days=400)).isoformat(),
                    "requester": ref("Practitioner", prescriber),
                    "dosageInstruction": [{"text": dosage}],
                },
                unit,
            )

    def encounter(
        self,
        unit: str,
        cls: str,
        start: datetime,
        end: datetime | None,
        practitioner: str,
        text: str,
        status: str = "finished",
    ) -> dict[str, Any]:
        displays = {"AMB": "ambulatory", "IMP": "inpatient encounter", "HH": "home health", "VR": "virtual"}
        period: dict[str, str] = {"start": start.isoformat()}
        if end is not None:
            period["end"] = end.isoformat()
        res: dict[str, Any] = {
            "resourceType": "Encounter",
            "id": self.new_id(),
            "status": status,
            "class": coding(ACT_CODE, cls, displays[cls]),
            "type": [{"text": text}],
            "subject": self.patient_ref,
            "participant": [{"individual": ref("Practitioner", practitioner)}],
            "period": period,
            "serviceProvider": ref("Organization", unit),
        }
        if cls == "IMP" and end is not None:
            res["hospitalization"] = {"dischargeDisposition": {"text": "Hem"}}
        return self.add(res, unit)

    def visit_time(self, day: date) -> tuple[datetime, datetime]:
        start = datetime.combine(day, time(self.rng.randint(8, 15), self.rng.choice((0, 15, 30, 45))), TZ)
        return start, start + timedelta(minutes=30)

    def primary_care(self, conditions: dict[str, dict[str, Any]], listed: date) -> None:
        hc = self.p.health_centre
        visits = self.rng.randint(2, 4) if conditions else (1 if self.rng.random() < 0.3 else 0)
        days = sorted(max(listed, self.day_within(730, 1)) for _ in range(visits))
        for i, day in enumerate(days):
            start, end = self.visit_time(day)
            video = self.rng.random() < 0.2
            who = self.staff(hc, "lakare", "distriktsskoterska")
            text = "Videobesök" if video else ("Uppföljning kronisk sjukdom" if conditions else "Läkarbesök")
            enc = self.encounter(hc, "VR" if video else "AMB", start, end, who, text)
            # Check-up samples at the latest visit of the two years (and the first, unless the shape is lean).
            checkup = i == len(days) - 1 or (i == 0 and self.d.config.lab_checkups > 1)
            if not video and checkup:
                for code in sorted({c for key in conditions for c in LABS_FOR[key]}):
                    key = next(k for k in conditions if code in LABS_FOR[k])
                    self.lab(code, start, enc["id"], hc, key)
        if conditions:
            self.care_plan(
                hc,
                "Vårdplan: " + ", ".join(CONDITIONS[k][1].lower() for k in conditions),
                ["Regelbunden uppföljning på vårdcentralen", "Läkemedelsgenomgång en gång per år"],
                [c["id"] for c in conditions.values()],
                listed,
            )

    def lab(self, code: str, when: datetime, encounter: str, unit: str, condition: str) -> None:
        display, unit_code, mean, sd, decimals = LABS[code]
        if code == "NPU21571" and condition != "heart_failure":
            mean, sd = 150.0, 80.0
        value = max(mean * 0.2, self.rng.gauss(mean, sd))
        value = round(value, decimals) if decimals else float(round(value))
        self.add(
            {
                "resourceType": "Observation",
                "id": self.new_id(),
                "status": "final",
                "category": [concept(OBS_CATEGORY, "laboratory", "Laboratory")],
                "code": concept(NPU, code, display),
                "subject": self.patient_ref,
                "encounter": ref("Encounter", encounter),
                "effectiveDateTime": when.isoformat(),
                "valueQuantity": quantity(value, unit_code),
            },
            unit,
        )

    def care_plan(self, unit: str, title: str, activities: list[str], addresses: list[str], start: date) -> None:
        res: dict[str, Any] = {
            "resourceType": "CarePlan",
            "id": self.new_id(),
            "status": "active",
            "intent": "plan",
            "title": title,
            "subject": self.patient_ref,
            "period": {"start": start.isoformat()},
            "author": ref(
                "Practitioner",
                self.staff(
                    unit, "lakare", "sjukskoterska", "distriktsskoterska", "underskoterska", "biståndshandläggare"
                ),
            ),
            "activity": [{"detail": {"status": "in-progress", "description": a}} for a in activities],
        }
        if addresses:
            res["addresses"] = [ref("Condition", c) for c in addresses]
        self.add(res, unit)

    def hospital(self, conditions: dict[str, dict[str, Any]]) -> None:
        wards = self.d.wards_by_hospital[self.d.hospital_of[self.p.municipality]]
        forced = self.scenario.get("stay")
        chance = 0.0
        if self.age >= 65:
            chance = 0.08 + 0.25 * ("heart_failure" in conditions) + 0.1 * ("copd" in conditions)
        elif self.age >= 18:
            chance = 0.02
        stays = 1 if self.rng.random() < chance else 0
        current = self.age >= 65 and self.rng.random() < 0.004 + 0.015 * ("heart_failure" in conditions)
        if forced == "recent":
            stays, current = 0, False
        elif forced == "current":
            current = True
        ward_for = self._ward(wards, conditions)
        forced_ward = self.scenario.get("ward")
        if isinstance(forced_ward, str):
            ward_for = forced_ward
        for _ in range(stays):
            admitted = self.day_within(700, 40)
            self._stay(ward_for, admitted, admitted + timedelta(days=self.rng.randint(2, 9)))
        if forced == "recent":
            admitted = self.today - timedelta(days=14)
            self._stay(ward_for, admitted, self.today - timedelta(days=9))
        if current:
            self._stay(ward_for, self.today - timedelta(days=self.rng.randint(0, 6)), None)

    def _ward(self, wards: list[str], conditions: dict[str, dict[str, Any]]) -> str:
        names = {w: self.d.units[w].name for w in wards}
        for key, word in (("heart_failure", "Kardiolog"), ("copd", "Lung"), ("dementia", "Geriatrisk")):
            if key in conditions:
                match = [w for w, n in names.items() if n.startswith(word)]
                if match:
                    return match[0]
        return wards[0]

    def _stay(self, ward: str, admitted: date, discharged: date | None) -> None:
        start = datetime.combine(admitted, time(self.rng.randint(0, 23), self.rng.choice((0, 20, 40))), TZ)
        end = None if discharged is None else datetime.combine(discharged, time(self.rng.randint(9, 15)), TZ)
        status = "finished" if end is not None else "in-progress"
        self.encounter(ward, "IMP", start, end, self.staff(ward, "lakare"), "Inneliggande vård", status)

    def municipal(self, conditions: dict[str, dict[str, Any]]) -> None:
        muni = self.p.municipality
        units = self.d.municipal_units
        heavy = any(k in conditions for k in ("heart_failure", "dementia", "copd"))
        home_care_p = 0.0 if self.age < 65 else 0.05 if self.age < 80 else 0.22 if self.age < 90 else 0.45
        if "dementia" in conditions:
            home_care_p = min(0.9, home_care_p + 0.3)
        hhc_p = 0.0 if self.age < 70 else 0.03 if self.age < 80 else 0.10 if self.age < 90 else 0.2
        if heavy:
            hhc_p *= 2
        home_care = self.scenario.get("home_care", self.rng.random() < home_care_p)
        hhc = self.scenario.get("hhc", self.rng.random() < hhc_p)
        if hhc:
            unit = units[(muni, "hemsjukvard")]
            start = self.day_within(3 * 365, 30)
            self.episode("hemsjukvard", unit, start)
            for _ in range(self.rng.randint(2, 5)):
                s, e = self.visit_time(self.day_within(60, 1))
                self.encounter(unit, "HH", s, e, self.staff(unit, "sjukskoterska"), "Hembesök sjuksköterska")
            self.care_plan(unit, "Hemsjukvårdsplan", ["Läkemedelshantering", "Bedömning av hudstatus varje vecka"],
                           [], start)  # fmt: skip
            if self.scenario.get("consent_hhc", self.rng.random() < 0.7):
                self.consent(unit, start)
        if home_care:
            unit = units[(muni, "hemtjanst")]
            start = self.day_within(4 * 365, 30)
            self.episode("hemtjanst", unit, start)
            self.care_plan(unit, "Genomförandeplan hemtjänst", ["Hjälp med dusch två gånger per vecka",
                                                                 "Inköp och matdistribution", "Trygghetslarm"],
                           [], start)  # fmt: skip
            if self.rng.random() < 0.3:
                self.consent(unit, start)
        if self.scenario.get(
            "bistand", (home_care and self.rng.random() < 0.25) or (self.age >= 75 and self.rng.random() < 0.01)
        ):
            unit = units[(muni, "bistand")]
            self.episode("bistandsarende", unit, self.day_within(90, 1), "active" if home_care else "waitlist")
        if 5 <= self.age < 65 and self.rng.random() < 0.006:
            unit = units[(muni, "lss")]
            self.episode("lss", unit, self.day_within(10 * 365, 30))

    def consent(self, unit: str, start: date, employee: str | None = None) -> None:
        actors = [
            {"role": concept(PARTICIPATION, "IRCP", "information recipient"), "reference": ref("Organization", unit)}
        ]
        if employee:
            actors.append({"role": concept(PARTICIPATION, "IRCP", "information recipient"),
                           "reference": ref("Practitioner", employee)})  # fmt: skip
        self.add(
            {
                "resourceType": "Consent",
                "id": self.new_id(),
                "status": "active",
                "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
                "category": [concept(CONSENT_KIND, "svod-consent", "Samtycke till direktåtkomst (SVOD)")],
                "patient": self.patient_ref,
                "dateTime": stamp(start, 10),
                "provision": {"type": "permit", "period": {"start": start.isoformat()}, "actor": actors},
            },
            unit,
        )

    def block(self) -> None:
        forced = self.scenario.get("block")
        if forced is None and (self.age < 18 or self.rng.random() >= 0.003):
            return
        hc = self.p.health_centre
        provider = self.d.units[hc].provider
        custodian = forced if isinstance(forced, str) else (provider if provider != self.d.region else hc)
        default_exempt = ["lakemedel"] if self.rng.random() < 0.5 else []
        forced_exempt = self.scenario.get("block_exempt")
        exempt = [str(c) for c in forced_exempt] if isinstance(forced_exempt, list) else default_exempt
        provision: dict[str, Any] = {
            "type": "deny",
            "actor": [
                {"role": concept(PARTICIPATION, "CST", "custodian"), "reference": ref("Organization", custodian)}
            ],
        }
        if exempt:
            provision["provision"] = [{"type": "permit", "code": [concept(INFORMATION_TYPE, code) for code in exempt]}]
        self.add(
            {
                "resourceType": "Consent",
                "id": self.new_id(),
                "status": "active",
                "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
                "category": [concept(CONSENT_KIND, "block", "Spärr")],
                "patient": self.patient_ref,
                "dateTime": stamp(self.day_within(365, 1), 11),
                "provision": provision,
            },
            hc,
        )

    # ---- home monitoring ---------------------------------------------------------------------
    def monitoring(self, conditions: dict[str, dict[str, Any]]) -> None:
        forced = self.scenario.get("monitoring")
        enrolled = [
            k
            for k in MONITORING_SHARE
            if k in conditions and (forced or self.rng.random() < MONITORING_SHARE[k] * self.d.config.monitoring_scale)
        ]
        if not enrolled or forced is False:
            return
        params: list[str] = []
        for k in enrolled:
            params.extend(p for p in MONITORING_PARAMS[k] if p not in params)
        days = self.ctx.monitoring_days
        start = self.today - timedelta(days=days)
        hc = self.p.health_centre
        self.episode("egenmonitorering", hc, start)
        self.care_plan(
            hc,
            "Egenmonitorering: " + ", ".join(CONDITIONS[k][1].lower() for k in enrolled),
            ["Mät och rapportera värden varje morgon", "Kontakta vårdcentralen vid larm"],
            [conditions[k]["id"] for k in enrolled],
            start,
        )
        Series(self, params, enrolled, start, days).emit(hc)


class Series:
    """Daily home measurements: a personal baseline, slow drift, daily noise and, sometimes, a deterioration."""

    def __init__(self, rec: PersonRecord, params: list[str], conditions: list[str], start: date, days: int) -> None:
        self.rec = rec
        self.rng = rec.rng
        self.params = params
        self.start = start
        self.days = days
        age, male = rec.age, rec.p.sex == "male"
        self.sbp = self.rng.gauss(146 if "hypertension" in conditions else 128, 10)
        self.dbp = self.rng.gauss(86 if "hypertension" in conditions else 78, 6)
        self.pulse = self.rng.gauss(72, 7)
        self.weight = self.rng.gauss(84 if male else 70, 11) + (4 if "heart_failure" in conditions else 0)
        self.spo2 = self.rng.gauss(92.5, 1.2) if "copd" in conditions else self.rng.gauss(96.5, 0.8)
        self.glucose = self.rng.gauss(7.5, 1.0)
        self.age = age
        forced = rec.scenario.get("deteriorate")
        worsen = forced if isinstance(forced, bool) else self.rng.random() < DETERIORATION_SHARE
        # The day (index) a deterioration starts, and what kind.
        self.event_day = days - self.rng.randint(3, min(25, days - 1)) if worsen else None
        if forced is True:
            self.event_day = days - 3
        self.kind = conditions[0]

    def _effect(self, i: int) -> float:
        """0 before the event, rising to 1 over three days."""
        if self.event_day is None or i < self.event_day:
            return 0.0
        return min(1.0, (i - self.event_day + 1) / 3)

    def emit(self, unit: str) -> None:
        drift = 0.0
        for i in range(self.days):
            day = self.start + timedelta(days=i + 1)
            drift = 0.9 * drift + self.rng.gauss(0, 0.6)
            e = self._effect(i)
            when = stamp(day, 7, self.rng.randint(0, 50))
            hf, copd = self.kind == "heart_failure", self.kind == "copd"
            for param in self.params:
                if param == "bp":
                    sbp = self.sbp + 3 * drift + self.rng.gauss(0, 6) + e * (22 if self.kind == "hypertension" else 8)
                    dbp = self.dbp + 1.5 * drift + self.rng.gauss(0, 4) + e * (10 if self.kind == "hypertension" else 3)
                    self.bp(when, round(sbp), round(min(dbp, sbp - 25)), unit)
                elif param == "pulse":
                    value = self.pulse + drift + self.rng.gauss(0, 4) + e * (18 if (hf or copd) else 6)
                    self.vital(when, "8867-4", "Heart rate", quantity(round(value), "/min", "/min"), unit)
                elif param == "weight":
                    value = self.weight + 0.15 * drift + self.rng.gauss(0, 0.3) + e * (3.2 if hf else 0)
                    self.vital(when, "29463-7", "Body weight", quantity(round(value, 1), "kg"), unit)
                elif param == "spo2":
                    value = self.spo2 + 0.3 * drift + self.rng.gauss(0, 0.7) - e * (6 if copd else 3 if hf else 0)
                    value = min(100.0, value)
                    self.vital(when, "59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry",
                               quantity(round(value), "%"), unit)  # fmt: skip
                elif param == "glucose":
                    for hour, meal in ((7, 0.0), (18, 1.8)):
                        value = self.glucose + meal + 0.4 * drift + self.rng.gauss(0, 1.1) + e * 6
                        if self.event_day is not None and self.rng.random() < 0.03:
                            value = self.rng.uniform(3.0, 3.9)  # a hypo now and then
                        self.vital(stamp(day, hour, self.rng.randint(0, 50)), "14743-9",
                                   "Glucose [Moles/volume] in Capillary blood by Glucometer",
                                   quantity(round(max(2.5, value), 1), "mmol/L"), unit)  # fmt: skip

    def _obs(self, when: str, code: str, display: str) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "id": self.rec.new_id(),
            "status": "final",
            "category": [concept(OBS_CATEGORY, "vital-signs", "Vital Signs")],
            "code": concept(LOINC, code, display),
            "subject": self.rec.patient_ref,
            "effectiveDateTime": when,
            "performer": [self.rec.patient_ref],
        }

    def vital(self, when: str, code: str, display: str, value: dict[str, Any], unit: str) -> None:
        obs = self._obs(when, code, display)
        obs["valueQuantity"] = value
        self.rec.add(obs, unit)

    def bp(self, when: str, sbp: int, dbp: int, unit: str) -> None:
        obs = self._obs(when, "85354-9", "Blood pressure panel with all children optional")
        obs["component"] = [
            {
                "code": concept(LOINC, "8480-6", "Systolic blood pressure"),
                "valueQuantity": quantity(sbp, "mmHg", "mm[Hg]"),
            },
            {
                "code": concept(LOINC, "8462-4", "Diastolic blood pressure"),
                "valueQuantity": quantity(dbp, "mmHg", "mm[Hg]"),
            },
        ]
        self.rec.add(obs, unit)


def person_record(person: Person, ctx: RecordContext) -> list[Item]:
    return PersonRecord(person, ctx).build()
