"""Property test: the SQL search compiler agrees with a slow, obviously-correct Python evaluator.

Hypothesis builds random resources of twelve types and random queries over their parameters (every
parameter type, modifiers, prefixes, OR values, AND of two criteria, chains, _has and _sort), stores
the resources, runs each query through the store (paging through every page with a small _count)
and compares the ids with what a direct evaluation of the R4 search rules over the resources'
JSON gives. The evaluator below reads the JSON itself and shares no code with the index extraction
or the compiler; date ranges are half-open intervals computed with zoneinfo, numbers are Decimals.

Each example tags its resources with a run code (and its ids with a prefix), and every query is
ANDed with that tag, so examples share the database without seeing each other's data.
"""

from __future__ import annotations

import itertools
import os
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nara.store.store import Store
from tests.store.search_fixtures import load, search

RUN_SYSTEM = "urn:nara:test-run"
STOCKHOLM = ZoneInfo("Europe/Stockholm")
EXAMPLES = int(os.environ.get("NARA_PROPERTY_EXAMPLES", "40"))
_runs = itertools.count()

NAMES = ["Åsa", "asa", "Anna", "Andersson", "Öberg", "Berg", "Ann-Marie", "Ek"]
SYSTEMS = ["http://loinc.org", "http://snomed.info/sct", None]
CODES = ["1", "2", "A"]
UNITS = [("http://unitsofmeasure.org", "mm[Hg]"), ("http://unitsofmeasure.org", "kg"), (None, None)]
URIS = ["http://a.se/fhir", "http://a.se/fhir/ValueSet/x", "http://a.se/fhir/ValueSet/x/y", "urn:oid:1.2"]
OFFSETS = ["Z", "+01:00", "+02:00", "-05:00"]
PREFIXES = ["eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]
CLASS_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


# ---- random values ------------------------------------------------------------------------------
@st.composite
def fhir_date(draw: st.DrawFn, query: bool = False) -> str:
    """A date, dateTime or instant of random precision (times always carry a zone, as FHIR requires).

    Minute precision exists only in search values (a stored dateTime with a time has seconds)."""
    y = draw(st.sampled_from([2025, 2026]))
    mo = draw(st.sampled_from([1, 2, 12]))
    d = draw(st.sampled_from([1, 2, 28]))
    precision = draw(st.sampled_from(["year", "month", "day", "second", "fraction"] + (["minute"] if query else [])))
    if precision == "year":
        return f"{y}"
    if precision == "month":
        return f"{y}-{mo:02d}"
    if precision == "day":
        return f"{y}-{mo:02d}-{d:02d}"
    h, mi, s = draw(st.sampled_from([0, 1, 12, 23])), draw(st.sampled_from([0, 59])), draw(st.sampled_from([0, 30]))
    tz = draw(st.sampled_from(OFFSETS))
    if precision == "minute":
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}{tz}"
    if precision == "second":
        return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{tz}"
    return f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}.{draw(st.sampled_from(['5', '25', '125']))}{tz}"


decimals = st.sampled_from([0, 5, 10, 25, 50, 100, 105, 150, 200, 250]).map(
    lambda n: (Decimal(n) / 100).normalize() if n else Decimal(0)
)


def coding(draw: st.DrawFn) -> dict[str, Any]:
    c: dict[str, Any] = {"code": draw(st.sampled_from(CODES))}
    system = draw(st.sampled_from(SYSTEMS))
    if system:
        c["system"] = system
    return c


def concept(draw: st.DrawFn) -> dict[str, Any]:
    return {"coding": [coding(draw) for _ in range(draw(st.integers(1, 2)))]}


def quantity(draw: st.DrawFn) -> dict[str, Any]:
    system, code = draw(st.sampled_from(UNITS))
    q: dict[str, Any] = {"value": float(draw(decimals))}
    if system:
        q.update(system=system, code=code, unit=code)
    return q


def period(draw: st.DrawFn) -> dict[str, Any]:
    p = {}
    if draw(st.booleans()):
        p["start"] = draw(fhir_date())
    if draw(st.booleans()) or not p:
        p["end"] = draw(fhir_date())
    return p


def maybe(draw: st.DrawFn, key: str, value: Callable[[], Any], out: dict[str, Any]) -> None:
    if draw(st.booleans()):
        out[key] = value()


# ---- resources ----------------------------------------------------------------------------------
Builder = Callable[[st.DrawFn, str, list[str]], dict[str, Any]]


def b_patient(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Patient", "id": rid}
    names = []
    for _ in range(draw(st.integers(0, 2))):
        n: dict[str, Any] = {}
        maybe(draw, "family", lambda: draw(st.sampled_from(NAMES)), n)
        givens = draw(st.lists(st.sampled_from(NAMES), max_size=2))
        if givens:
            n["given"] = givens
        if n:
            names.append(n)
    if names:
        res["name"] = names
    maybe(draw, "gender", lambda: draw(st.sampled_from(["male", "female", "other"])), res)
    maybe(draw, "birthDate", lambda: draw(fhir_date().filter(lambda v: "T" not in v)), res)
    maybe(draw, "active", lambda: draw(st.booleans()), res)
    maybe(draw, "identifier", lambda: [{**coding_to_identifier(coding(draw))}], res)
    return res


def coding_to_identifier(c: dict[str, Any]) -> dict[str, Any]:
    return {k if k == "system" else "value": v for k, v in c.items()}


def b_practitioner(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Practitioner", "id": rid}
    maybe(draw, "name", lambda: [{"family": draw(st.sampled_from(NAMES))}], res)
    maybe(draw, "identifier", lambda: [coding_to_identifier(coding(draw))], res)
    maybe(draw, "active", lambda: draw(st.booleans()), res)
    return res


def b_organization(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Organization", "id": rid}
    maybe(draw, "name", lambda: draw(st.sampled_from(NAMES)), res)
    maybe(draw, "identifier", lambda: [coding_to_identifier(coding(draw))], res)
    maybe(draw, "active", lambda: draw(st.booleans()), res)
    return res


def subject(draw: st.DrawFn, people: list[str]) -> dict[str, Any]:
    return {"reference": draw(st.sampled_from([f"Patient/{p}" for p in people] + [f"Group/{people[0]}"]))}


def b_observation(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": rid,
        "status": draw(st.sampled_from(["final", "preliminary", "amended"])),
        "code": concept(draw),
    }
    maybe(draw, "subject", lambda: subject(draw, people), res)
    kind = draw(st.sampled_from(["none", "dateTime", "period"]))
    if kind == "dateTime":
        res["effectiveDateTime"] = draw(fhir_date())
    elif kind == "period":
        res["effectivePeriod"] = period(draw)
    maybe(draw, "valueQuantity", lambda: quantity(draw), res)
    comps = [{"code": concept(draw), "valueQuantity": quantity(draw)} for _ in range(draw(st.integers(0, 2)))]
    if comps:
        res["component"] = comps
    return res


def b_condition(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Condition", "id": rid, "subject": subject(draw, people)}
    maybe(draw, "code", lambda: concept(draw), res)
    maybe(draw, "onsetDateTime", lambda: draw(fhir_date()), res)
    status = draw(st.sampled_from(["active", "resolved", None]))
    if status:
        res["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": status}]}
    return res


def b_encounter(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": rid,
        "status": draw(st.sampled_from(["planned", "finished", "in-progress"])),
        "class": {"system": CLASS_SYSTEM, "code": draw(st.sampled_from(["AMB", "IMP", "HH"]))},
    }
    maybe(draw, "subject", lambda: subject(draw, people), res)
    maybe(draw, "period", lambda: period(draw), res)
    return res


def b_medication_request(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": draw(st.sampled_from(["active", "stopped"])),
        "intent": draw(st.sampled_from(["order", "plan"])),
        "subject": subject(draw, people),
        "medicationCodeableConcept": concept(draw),
    }
    maybe(draw, "authoredOn", lambda: draw(fhir_date()), res)
    return res


def b_procedure(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Procedure",
        "id": rid,
        "status": draw(st.sampled_from(["completed", "preparation"])),
        "subject": subject(draw, people),
    }
    maybe(draw, "code", lambda: concept(draw), res)
    kind = draw(st.sampled_from(["none", "dateTime", "period"]))
    if kind == "dateTime":
        res["performedDateTime"] = draw(fhir_date())
    elif kind == "period":
        res["performedPeriod"] = period(draw)
    return res


def b_immunization(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Immunization",
        "id": rid,
        "status": draw(st.sampled_from(["completed", "not-done"])),
        "vaccineCode": concept(draw),
        "patient": {"reference": f"Patient/{draw(st.sampled_from(people))}"},
        "occurrenceDateTime": draw(fhir_date()),
    }


def b_risk(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "RiskAssessment", "id": rid, "status": "final"}
    res["subject"] = subject(draw, people)
    preds = [{"probabilityDecimal": float(draw(decimals))} for _ in range(draw(st.integers(0, 2)))]
    if preds:
        res["prediction"] = preds
    return res


def b_valueset(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "ValueSet", "id": rid, "status": draw(st.sampled_from(["active", "draft"]))}
    maybe(draw, "url", lambda: draw(st.sampled_from(URIS)), res)
    maybe(draw, "name", lambda: draw(st.sampled_from(NAMES)), res)
    return res


def b_location(draw: st.DrawFn, rid: str, people: list[str]) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": "Location", "id": rid}
    maybe(draw, "name", lambda: draw(st.sampled_from(NAMES)), res)
    maybe(draw, "status", lambda: draw(st.sampled_from(["active", "suspended"])), res)
    maybe(draw, "address", lambda: {"city": draw(st.sampled_from(NAMES))}, res)
    return res


BUILDERS: dict[str, Builder] = {
    "Patient": b_patient,
    "Practitioner": b_practitioner,
    "Organization": b_organization,
    "Observation": b_observation,
    "Condition": b_condition,
    "Encounter": b_encounter,
    "MedicationRequest": b_medication_request,
    "Procedure": b_procedure,
    "Immunization": b_immunization,
    "RiskAssessment": b_risk,
    "ValueSet": b_valueset,
    "Location": b_location,
}


# ---- the reference evaluator: values of each parameter, read straight from the JSON ----------------
def norm(s: str) -> str:
    return " ".join(
        "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c)).casefold().split()
    )


def interval(value: str) -> tuple[datetime, datetime]:
    """The half-open UTC interval [start, end) a FHIR date value stands for."""
    date_part, _, time_part = value.partition("T")
    pieces = [int(x) for x in date_part.split("-")]
    if not time_part:
        y, m, d = [*pieces, 1, 1][:3]
        start = datetime(y, m, d, tzinfo=STOCKHOLM)
        if len(pieces) == 1:
            end = datetime(y + 1, 1, 1, tzinfo=STOCKHOLM)
        elif len(pieces) == 2:
            end = datetime(y + (m == 12), m % 12 + 1, 1, tzinfo=STOCKHOLM)
        else:
            end = datetime.combine(start.date() + timedelta(days=1), datetime.min.time(), STOCKHOLM)
        return start.astimezone(UTC), end.astimezone(UTC)
    tz = "Z" if time_part.endswith("Z") else time_part[-6:]
    clock = time_part[:-1] if tz == "Z" else time_part[:-6]
    offset = timedelta(0) if tz == "Z" else (1 if tz[0] == "+" else -1) * timedelta(hours=int(tz[1:3]))
    hms, _, frac = clock.partition(".")
    parts = [int(x) for x in hms.split(":")]
    y, m, d = pieces
    start = datetime(y, m, d, parts[0], parts[1], parts[2] if len(parts) > 2 else 0, tzinfo=UTC) - offset
    if frac:
        start += timedelta(microseconds=int(frac.ljust(6, "0")))
        width = timedelta(microseconds=10 ** (6 - len(frac)))
    else:
        width = timedelta(seconds=1) if len(parts) > 2 else timedelta(minutes=1)
    return start, start + width


EARLIEST = datetime(1, 1, 1, tzinfo=UTC)
LATEST = datetime(9999, 12, 31, tzinfo=UTC)


def period_interval(p: dict[str, Any]) -> tuple[datetime, datetime]:
    """A Period's interval; one whose start is after its end (invalid in R4) spans both values.

    The intervals are half-open, so a start that begins exactly where the end's value ends (start 2026,
    end 2025) is already after the end: the test is ``lo >= hi``.
    """
    lo, hi = (interval(p["start"])[0] if "start" in p else EARLIEST, interval(p["end"])[1] if "end" in p else LATEST)
    if lo >= hi:
        (s_lo, s_hi), (e_lo, e_hi) = interval(p["start"]), interval(p["end"])
        return min(s_lo, e_lo), max(s_hi, e_hi)
    return lo, hi


def codes_of(cc: Any) -> list[tuple[str | None, str]]:
    return [(c.get("system"), c["code"]) for c in (cc or {}).get("coding", [])]


def ref_of(r: Any) -> list[tuple[str, str]]:
    if not r or "reference" not in r:
        return []
    t, i = r["reference"].split("/")
    return [(t, i)]


def dates_of(res: dict[str, Any], stem: str) -> list[tuple[datetime, datetime]]:
    if f"{stem}DateTime" in res:
        return [interval(res[f"{stem}DateTime"])]
    if f"{stem}Period" in res:
        return [period_interval(res[f"{stem}Period"])]
    return []


def qty(q: dict[str, Any]) -> tuple[Decimal, str | None, str | None]:
    return Decimal(repr(q["value"])), q.get("system"), q.get("code")


@dataclass
class Param:
    kind: str
    values: Callable[[dict[str, Any]], list[Any]]


def subject_param(key: str = "subject") -> Param:
    return Param("reference", lambda r: ref_of(r.get(key)))


def patient_param(key: str = "subject") -> Param:
    return Param("reference", lambda r: [x for x in ref_of(r.get(key)) if x[0] == "Patient"])


def human_names(r: dict[str, Any], part: str | None = None) -> list[str]:
    out = []
    for n in r.get("name", []):
        if part in (None, "family") and "family" in n:
            out.append(n["family"])
        if part in (None, "given"):
            out.extend(n.get("given", []))
    return out


PARAMS: dict[str, dict[str, Param]] = {
    "Patient": {
        "name": Param("string", lambda r: human_names(r)),
        "family": Param("string", lambda r: human_names(r, "family")),
        "given": Param("string", lambda r: human_names(r, "given")),
        "gender": Param("token", lambda r: [(None, r["gender"])] if "gender" in r else []),
        "birthdate": Param("date", lambda r: [interval(r["birthDate"])] if "birthDate" in r else []),
        "active": Param("token", lambda r: [(None, str(r["active"]).lower())] if "active" in r else []),
        "identifier": Param("token", lambda r: [(i.get("system"), i["value"]) for i in r.get("identifier", [])]),
    },
    "Practitioner": {
        "name": Param("string", lambda r: human_names(r)),
        "identifier": Param("token", lambda r: [(i.get("system"), i["value"]) for i in r.get("identifier", [])]),
        "active": Param("token", lambda r: [(None, str(r["active"]).lower())] if "active" in r else []),
    },
    "Organization": {
        "name": Param("string", lambda r: [r["name"]] if "name" in r else []),
        "identifier": Param("token", lambda r: [(i.get("system"), i["value"]) for i in r.get("identifier", [])]),
        "active": Param("token", lambda r: [(None, str(r["active"]).lower())] if "active" in r else []),
    },
    "Observation": {
        "status": Param("token", lambda r: [(None, r["status"])]),
        "code": Param("token", lambda r: codes_of(r.get("code"))),
        "combo-code": Param(
            "token",
            lambda r: codes_of(r.get("code")) + [x for c in r.get("component", []) for x in codes_of(c["code"])],
        ),
        "subject": subject_param(),
        "patient": patient_param(),
        "date": Param("date", lambda r: dates_of(r, "effective")),
        "value-quantity": Param("quantity", lambda r: [qty(r["valueQuantity"])] if "valueQuantity" in r else []),
        "component-code-value-quantity": Param(
            "composite",
            lambda r: [(code, qty(c["valueQuantity"])) for c in r.get("component", []) for code in codes_of(c["code"])],
        ),
    },
    "Condition": {
        "subject": subject_param(),
        "patient": patient_param(),
        "code": Param("token", lambda r: codes_of(r.get("code"))),
        "onset-date": Param("date", lambda r: dates_of(r, "onset")),
        "clinical-status": Param("token", lambda r: codes_of(r.get("clinicalStatus"))),
    },
    "Encounter": {
        "status": Param("token", lambda r: [(None, r["status"])]),
        "class": Param("token", lambda r: [(r["class"]["system"], r["class"]["code"])]),
        "subject": subject_param(),
        "date": Param("date", lambda r: [period_interval(r["period"])] if "period" in r else []),
    },
    "MedicationRequest": {
        "status": Param("token", lambda r: [(None, r["status"])]),
        "intent": Param("token", lambda r: [(None, r["intent"])]),
        "subject": subject_param(),
        "code": Param("token", lambda r: codes_of(r.get("medicationCodeableConcept"))),
        "authoredon": Param("date", lambda r: [interval(r["authoredOn"])] if "authoredOn" in r else []),
    },
    "Procedure": {
        "status": Param("token", lambda r: [(None, r["status"])]),
        "subject": subject_param(),
        "code": Param("token", lambda r: codes_of(r.get("code"))),
        "date": Param("date", lambda r: dates_of(r, "performed")),
    },
    "Immunization": {
        "status": Param("token", lambda r: [(None, r["status"])]),
        "vaccine-code": Param("token", lambda r: codes_of(r.get("vaccineCode"))),
        "patient": subject_param("patient"),
        "date": Param("date", lambda r: dates_of(r, "occurrence")),
    },
    "RiskAssessment": {
        "probability": Param(
            "number", lambda r: [Decimal(repr(p["probabilityDecimal"])) for p in r.get("prediction", [])]
        ),
        "subject": subject_param(),
    },
    "ValueSet": {
        "url": Param("uri", lambda r: [r["url"]] if "url" in r else []),
        "name": Param("string", lambda r: [r["name"]] if "name" in r else []),
        "status": Param("token", lambda r: [(None, r["status"])]),
    },
    "Location": {
        "name": Param("string", lambda r: [r["name"]] if "name" in r else []),
        "status": Param("token", lambda r: [(None, r["status"])] if "status" in r else []),
        "address-city": Param("string", lambda r: [r["address"]["city"]] if "address" in r else []),
    },
}
TARGETS = {"subject": ("Patient", "Group"), "patient": ("Patient",)}


# ---- matching rules (R4 search.html), one value at a time ----------------------------------------
def token_match(raw: str, values: list[tuple[str | None, str]]) -> bool:
    if "|" not in raw:
        return any(code == raw for _, code in values)
    system, code = raw.split("|", 1)
    if not system:
        return any(s is None and c == code for s, c in values)
    if not code:
        return any(s == system for s, _ in values)
    return any(s == system and c == code for s, c in values)


def range_match(prefix: str, lo: Any, hi: Any, qlo: Any, qhi: Any) -> bool:
    """Stored [lo, hi) against the query's [qlo, qhi), both half-open."""
    inside = lo >= qlo and hi <= qhi
    return {
        "eq": inside,
        "ne": not inside,
        "gt": hi > qhi,
        "lt": lo < qlo,
        "ge": hi > qhi or inside,
        "le": lo < qlo or inside,
        "sa": lo >= qhi,
        "eb": hi <= qlo,
    }[prefix]


def number_match(prefix: str, v: Decimal, raw: str) -> bool:
    q = Decimal(raw)
    half = Decimal(5) * Decimal(10) ** (q.as_tuple().exponent - 1)  # type: ignore[operator]
    inside = q - half <= v < q + half
    return {
        "eq": inside,
        "ne": not inside,
        "gt": v > q,
        "lt": v < q,
        "ge": v >= q,
        "le": v <= q,
        "sa": v > q,
        "eb": v < q,
    }[prefix]


def quantity_match(raw: str, values: list[tuple[Decimal, str | None, str | None]]) -> bool:
    prefix, rest = raw[:2], raw[2:]
    number, *unit = rest.split("|")
    ok = [v for v in values if number_match(prefix, v[0], number)]
    if unit:
        system, code = unit
        ok = [v for v in ok if (not system or v[1] == system) and (not code or v[2] == code)]
    return bool(ok)


def value_match(kind: str, modifier: str | None, raw: str, values: list[Any], targets: tuple[str, ...]) -> bool:
    if kind == "string":
        if modifier == "exact":
            return raw in values
        if modifier == "contains":
            return any(norm(raw) in norm(v) for v in values)
        return any(norm(v).startswith(norm(raw)) for v in values)
    if kind == "token":
        return token_match(raw, values)
    if kind == "date":
        qlo, qhi = interval(raw[2:])
        return any(range_match(raw[:2], lo, hi, qlo, qhi) for lo, hi in values)
    if kind == "number":
        return any(number_match(raw[:2], v, raw[2:]) for v in values)
    if kind == "quantity":
        return quantity_match(raw, values)
    if kind == "reference":
        if "/" in raw:
            t, i = raw.split("/")
            return (t, i) in values and t in targets
        wanted = (modifier,) if modifier else targets
        return any(i == raw and t in wanted for t, i in values)
    if kind == "uri":
        if modifier == "below":
            return any(v == raw or v.startswith(raw.rstrip("/") + "/") for v in values)
        if modifier == "above":
            return any(raw == v or raw.startswith(v.rstrip("/") + "/") for v in values)
        return raw in values
    if kind == "composite":
        code_part, value_part = raw.split("$")
        return any(token_match(code_part, [c]) and quantity_match(value_part, [q]) for c, q in values)
    raise AssertionError(kind)


@dataclass
class Crit:
    """One generated criterion: ``name`` as sent, and how to evaluate it."""

    name: str
    value: str
    check: Callable[[dict[str, Any], dict[tuple[str, str], dict[str, Any]]], bool]


def simple_check(rtype: str, param: str, modifier: str | None, raw: str) -> Callable[..., bool]:
    p = PARAMS[rtype][param]
    targets = TARGETS.get(param, ("Patient",))

    def check(res: dict[str, Any], world: dict[tuple[str, str], dict[str, Any]]) -> bool:
        values = p.values(res)
        if modifier == "missing":
            return (not values) == (raw == "true")
        hit = any(value_match(p.kind, modifier, v, values, targets) for v in raw.split(","))
        return not hit if modifier == "not" else hit

    return check


# ---- random queries -------------------------------------------------------------------------------
@st.composite
def search_value(
    draw: st.DrawFn, kind: str, param: str, people: list[str], dates: tuple[str, ...] = ()
) -> tuple[str | None, str]:
    """(modifier, one value) for a parameter of ``kind`` (dates often taken from the data: edges matter)."""
    if kind == "string":
        name = draw(st.sampled_from(NAMES))
        modifier = draw(st.sampled_from([None, None, "exact", "contains"]))
        if modifier is None:
            name = name[: draw(st.integers(1, len(name)))]
        elif modifier == "contains":
            start = draw(st.integers(0, len(name) - 1))
            name = name[start : start + draw(st.integers(1, 3))]
        return modifier, name
    if kind == "token":
        modifier = draw(st.sampled_from([None, None, "not"]))
        pool = {
            "gender": ["male", "female", "other"],
            "active": ["true", "false"],
            "status": ["final", "preliminary", "amended", "planned", "finished", "active", "stopped", "completed"],
            "intent": ["order", "plan"],
            "class": [f"{CLASS_SYSTEM}|AMB", "IMP", "HH"],
            "clinical-status": [f"{CLINICAL}|active", "resolved", f"{CLINICAL}|"],
        }.get(param)
        if pool:
            return modifier, draw(st.sampled_from(pool))
        system = draw(st.sampled_from(SYSTEMS))
        code = draw(st.sampled_from(CODES))
        form = draw(st.sampled_from(["code", "system|code", "|code", "system|"]))
        if form == "code" or (system is None and form != "|code"):
            return modifier, code
        if form == "|code":
            return modifier, f"|{code}"
        return modifier, f"{system}|{code}" if form == "system|code" else f"{system}|"
    if kind == "date":
        value = draw(st.sampled_from(dates)) if dates and draw(st.booleans()) else draw(fhir_date(query=True))
        return None, draw(st.sampled_from(PREFIXES)) + value
    if kind == "number":
        return None, draw(st.sampled_from(PREFIXES)) + str(draw(decimals))
    if kind == "quantity":
        number = draw(st.sampled_from(PREFIXES)) + str(draw(decimals))
        system, code = draw(st.sampled_from(UNITS))
        unit = draw(st.sampled_from(["", "full", "code"])) if system else ""
        return None, number + (f"|{system}|{code}" if unit == "full" else f"||{code}" if unit == "code" else "")
    if kind == "reference":
        who = draw(st.sampled_from(people))
        form = draw(st.sampled_from(["typed", "id", "modifier", "group"]))
        if form == "typed":
            return None, f"Patient/{who}"
        if form == "group":
            return None, f"Group/{people[0]}"
        return ("Patient" if form == "modifier" else None), who
    if kind == "uri":
        return draw(st.sampled_from([None, "below", "above"])), draw(st.sampled_from([*URIS, "http://a.se"]))
    if kind == "composite":
        system, code = draw(st.sampled_from(SYSTEMS)), draw(st.sampled_from(CODES))
        value = draw(st.sampled_from(PREFIXES)) + str(draw(decimals))
        return None, (f"{system}|{code}" if system else code) + "$" + value
    raise AssertionError(kind)


@st.composite
def criterion(draw: st.DrawFn, rtype: str, people: list[str], ids: list[str], dates: tuple[str, ...]) -> Crit:
    special = draw(st.integers(0, 9))
    if rtype == "Observation" and special == 0:  # chain through the subject
        modifier, value = draw(search_value("string", "name", people))
        inner = simple_check("Patient", "name", modifier, value)

        def chain(res: dict[str, Any], world: dict[tuple[str, str], dict[str, Any]]) -> bool:
            return any(
                t == "Patient" and (t, i) in world and inner(world[(t, i)], world)
                for t, i in ref_of(res.get("subject"))
            )

        return Crit("subject:Patient.name" + (f":{modifier}" if modifier else ""), value, chain)
    if rtype == "Patient" and special == 0:  # reverse chain from Observations
        _, value = draw(search_value("token", "code", people))
        inner = simple_check("Observation", "code", None, value)

        def has(res: dict[str, Any], world: dict[tuple[str, str], dict[str, Any]]) -> bool:
            return any(
                o["resourceType"] == "Observation"
                and ("Patient", res["id"]) in PARAMS["Observation"]["patient"].values(o)
                and inner(o, world)
                for o in world.values()
            )

        return Crit("_has:Observation:patient:code", value, has)
    if special == 1:
        wanted = draw(st.lists(st.sampled_from(ids), min_size=1, max_size=2))
        return Crit("_id", ",".join(wanted), lambda res, world: res["id"] in wanted)
    param = draw(st.sampled_from(sorted(PARAMS[rtype])))
    kind = PARAMS[rtype][param].kind
    if draw(st.integers(0, 7)) == 0:
        value = draw(st.sampled_from(["true", "false"]))
        return Crit(f"{param}:missing", value, simple_check(rtype, param, "missing", value))
    modifier, first = draw(search_value(kind, param, people, dates))
    values = [first]
    if draw(st.booleans()):
        more_modifier, more = draw(search_value(kind, param, people, dates))
        if more_modifier == modifier:
            values.append(more)
    raw = ",".join(v.replace(",", r"\,") for v in values)
    return Crit(param + (f":{modifier}" if modifier else ""), raw, simple_check(rtype, param, modifier, raw))


@dataclass
class Case:
    run: str
    resources: list[dict[str, Any]]
    queries: list[tuple[str, list[Crit], tuple[str, bool] | None]]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    run = f"r{next(_runs)}x{draw(st.integers(0, 10**6))}"
    people = [f"{run}-p{i}" for i in range(draw(st.integers(1, 3)))]
    resources = [b_patient(draw, p, people) for p in people]
    types = draw(st.lists(st.sampled_from(sorted(BUILDERS)), min_size=1, max_size=2, unique=True))
    n = 0
    for rtype in types:
        for _ in range(draw(st.integers(2, 8))):
            if rtype == "Patient":
                break
            resources.append(BUILDERS[rtype](draw, f"{run}-{n}", people))
            n += 1
    for res in resources:
        res["meta"] = {"tag": [{"system": RUN_SYSTEM, "code": run}]}
    queries = []
    for _ in range(draw(st.integers(8, 20))):
        rtype = draw(st.sampled_from(sorted({r["resourceType"] for r in resources})))
        ids = [r["id"] for r in resources if r["resourceType"] == rtype]
        dates = tuple(sorted(set(date_strings([r for r in resources if r["resourceType"] == rtype]))))
        crits = [draw(criterion(rtype, people, ids, dates)) for _ in range(draw(st.sampled_from([1, 1, 1, 2])))]
        sort = None
        sortable = [p for p, d in PARAMS[rtype].items() if d.kind in ("string", "date")]
        if sortable and draw(st.booleans()):
            sort = (draw(st.sampled_from(sortable)), draw(st.booleans()))
        queries.append((rtype, crits, sort))
    return Case(run, resources, queries)


def date_strings(value: Any) -> list[str]:
    """The date-looking strings anywhere in some JSON."""
    if isinstance(value, dict):
        return [s for v in value.values() for s in date_strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in date_strings(v)]
    return [value] if isinstance(value, str) and value[:4].isdigit() and value[:2] == "20" else []


def sort_key(rtype: str, param: str, descending: bool, res: dict[str, Any]) -> Any:
    p = PARAMS[rtype][param]
    values = p.values(res)
    if p.kind == "string":
        keys = [norm(v) for v in values]
        return (max(keys) if descending else min(keys)) if keys else ""
    if not values:
        return EARLIEST
    return max(hi for _, hi in values) if descending else min(lo for lo, _ in values)


def all_pages(store: Store, rtype: str, query: str) -> list[str]:
    found: list[str] = []
    result = search(store, rtype, query, strict=True)
    found += [m.res_id for m in result.matches]
    while result.next_cursor:
        result = search(store, rtype, f"{query}&_cursor={result.next_cursor}", strict=True)
        found += [m.res_id for m in result.matches]
    return found


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=cases())
def test_sql_compiler_agrees_with_reference_evaluator(store_once: Store, case: Case) -> None:
    load(store_once, *case.resources)
    world = {(r["resourceType"], r["id"]): r for r in case.resources}
    for rtype, crits, sort in case.queries:
        pairs = [(c.name, c.value) for c in crits] + [("_tag", f"{RUN_SYSTEM}|{case.run}"), ("_count", "3")]
        if sort:
            pairs.append(("_sort", ("-" if sort[1] else "") + sort[0]))
        query = urlencode(pairs)
        expected = {
            r["id"] for r in case.resources if r["resourceType"] == rtype and all(c.check(r, world) for c in crits)
        }
        got = all_pages(store_once, rtype, query)
        assert len(got) == len(set(got)), f"{rtype}?{query}: a page repeated a match"
        assert set(got) == expected, f"{rtype}?{query}"
        if sort:
            param, desc = sort
            keys = [sort_key(rtype, param, desc, world[(rtype, i)]) for i in got]
            assert keys == sorted(keys, reverse=desc), f"{rtype}?{query}: order"


@pytest.fixture
def store_once(store: Store) -> Store:
    """The store, emptied once per test (examples keep apart by their run tag)."""
    return store
