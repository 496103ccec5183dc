"""Builders of directory resources in the shape docs/security.md §2 fixes (pure functions, no store).

The admin operations in :mod:`nara.directory.admin` accept any resource of that shape; these builders are
the convenient way to make one. Every builder normalises HSA-ids (R-ID-2) and uses the HSA-id as the FHIR id
of organisations, staff and assignments.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from nara.directory import codes
from nara.fhir.identifiers import ORGANISATION_NUMBER, hsa_identifier, normalize_hsa_id, normalize_organisation_number

WEEKDAYS = ("mon", "tue", "wed", "thu", "fri")


@dataclass(frozen=True, slots=True)
class Address:
    line: str
    postal_code: str
    city: str
    municipality: str | None = None  # kommun, stored in Address.district
    county: str | None = None  # län, stored in Address.state

    def to_fhir(self, use: str = "work") -> dict[str, Any]:
        out: dict[str, Any] = {"use": use, "line": [self.line], "postalCode": self.postal_code, "city": self.city}
        if self.municipality:
            out["district"] = self.municipality
        if self.county:
            out["state"] = self.county
        out["country"] = "SE"
        return out


@dataclass(frozen=True, slots=True)
class OpeningHours:
    days: tuple[str, ...] = WEEKDAYS
    opens: str = "08:00:00"
    closes: str = "17:00:00"
    all_day: bool = False

    def service_time(self) -> dict[str, Any]:
        if self.all_day:
            return {"daysOfWeek": list(self.days), "allDay": True}
        return {"daysOfWeek": list(self.days), "availableStartTime": self.opens, "availableEndTime": self.closes}

    def location_hours(self) -> dict[str, Any]:
        if self.all_day:
            return {"daysOfWeek": list(self.days), "allDay": True}
        return {"daysOfWeek": list(self.days), "openingTime": self.opens, "closingTime": self.closes}


def _telecom(phone: str | None, email: str | None = None, url: str | None = None) -> list[dict[str, str]]:
    out = []
    if phone:
        out.append({"system": "phone", "value": phone, "use": "work"})
    if email:
        out.append({"system": "email", "value": email, "use": "work"})
    if url:
        out.append({"system": "url", "value": url, "use": "work"})
    return out


def care_provider(
    hsa_id: str,
    name: str,
    org_number: str,
    role: str = codes.CARE_PROVIDER,
    *,
    address: Address | None = None,
    phone: str | None = None,
    municipality_code: str | None = None,
) -> dict[str, Any]:
    """A vårdgivare or omsorgsgivare (``role``) with its HSA-id and organisation number."""
    hsa = normalize_hsa_id(hsa_id)
    identifiers: list[dict[str, Any]] = [
        hsa_identifier(hsa),
        {"system": ORGANISATION_NUMBER, "value": normalize_organisation_number(org_number)},
    ]
    if municipality_code:
        identifiers.append({"system": codes.MUNICIPALITY_CODE, "value": municipality_code})
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": hsa,
        "identifier": identifiers,
        "active": True,
        "type": [{"coding": [codes.coding(codes.ORGANIZATION_ROLE, role, codes.ORGANIZATION_ROLES)]}],
        "name": name,
    }
    if phone:
        org["telecom"] = _telecom(phone)
    if address:
        org["address"] = [address.to_fhir()]
    return org


def unit(
    hsa_id: str,
    name: str,
    part_of: str,
    kind: str,
    *,
    address: Address | None = None,
    phone: str | None = None,
    alias: list[str] | None = None,
) -> dict[str, Any]:
    """A unit (vårdenhet, home care unit, ...) under ``part_of`` (the HSA-id of its provider or parent unit)."""
    hsa = normalize_hsa_id(hsa_id)
    org: dict[str, Any] = {
        "resourceType": "Organization",
        "id": hsa,
        "identifier": [hsa_identifier(hsa)],
        "active": True,
        "type": [
            {"coding": [codes.coding(codes.ORGANIZATION_ROLE, codes.UNIT, codes.ORGANIZATION_ROLES)]},
            {"coding": [codes.coding(codes.UNIT_KIND, kind, codes.UNIT_KINDS)]},
        ],
        "name": name,
        "partOf": {"reference": f"Organization/{normalize_hsa_id(part_of)}"},
    }
    if alias:
        org["alias"] = alias
    if phone:
        org["telecom"] = _telecom(phone)
    if address:
        org["address"] = [address.to_fhir()]
    return org


def practitioner(
    hsa_id: str,
    given: str,
    family: str,
    *,
    gender: str | None = None,
    personnummer: str | None = None,
    phone: str | None = None,
) -> dict[str, Any]:
    """A member of staff identified by a personal HSA-id (optionally also by personnummer)."""
    hsa = normalize_hsa_id(hsa_id)
    identifiers: list[dict[str, Any]] = [hsa_identifier(hsa)]
    if personnummer:
        identifiers.append({"system": "http://electronichealth.se/identifier/personnummer", "value": personnummer})
    res: dict[str, Any] = {
        "resourceType": "Practitioner",
        "id": hsa,
        "identifier": identifiers,
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given], "text": f"{given} {family}"}],
    }
    if gender:
        res["gender"] = gender
    if phone:
        res["telecom"] = _telecom(phone)
    return res


def assignment(
    hsa_id: str,
    practitioner_hsa_id: str,
    unit_hsa_id: str,
    role: str,
    purpose: str,
    rights: list[str],
    start: date,
    end: date | None = None,
    *,
    active: bool = True,
) -> dict[str, Any]:
    """A medarbetaruppdrag: ``PractitionerRole`` with purpose and rights extensions (docs/security.md §2)."""
    hsa = normalize_hsa_id(hsa_id)
    period: dict[str, str] = {"start": start.isoformat()}
    if end is not None:
        period["end"] = end.isoformat()
    return {
        "resourceType": "PractitionerRole",
        "id": hsa,
        "extension": [
            {"url": codes.ASSIGNMENT_PURPOSE_URL, "valueString": purpose},
            *({"url": codes.ASSIGNMENT_RIGHT_URL, "valueString": r} for r in rights),
        ],
        "identifier": [hsa_identifier(hsa)],
        "active": active,
        "period": period,
        "practitioner": {"reference": f"Practitioner/{normalize_hsa_id(practitioner_hsa_id)}"},
        "organization": {"reference": f"Organization/{normalize_hsa_id(unit_hsa_id)}"},
        "code": [{"coding": [codes.coding(codes.STAFF_ROLE, role, codes.STAFF_ROLES)]}],
    }


def location(
    location_id: str,
    name: str,
    managing_unit: str,
    address: Address,
    *,
    hours: OpeningHours | None = None,
    phone: str | None = None,
    latitude: float | None = None,
    longitude: float | None = None,
) -> dict[str, Any]:
    """Where a unit receives people: address, opening hours, position."""
    res: dict[str, Any] = {
        "resourceType": "Location",
        "id": location_id,
        "status": "active",
        "name": name,
        "mode": "instance",
        "address": address.to_fhir(),
        "physicalType": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/location-physical-type",
                    "code": "bu",
                    "display": "Building",
                }
            ]
        },
        "managingOrganization": {"reference": f"Organization/{normalize_hsa_id(managing_unit)}"},
    }
    if phone:
        res["telecom"] = _telecom(phone)
    if latitude is not None and longitude is not None:
        res["position"] = {"latitude": round(latitude, 5), "longitude": round(longitude, 5)}
    if hours is not None:
        res["hoursOfOperation"] = [hours.location_hours()]
    return res


def service(
    service_id: str,
    name: str,
    unit_hsa_id: str,
    category: str,
    types: list[str],
    *,
    locations: list[str] | None = None,
    channels: list[str] | None = None,
    hours: OpeningHours | None = None,
    phone: str | None = None,
    url: str | None = None,
    comment: str | None = None,
    appointment_required: bool = True,
) -> dict[str, Any]:
    """A catalogue entry: what a unit offers, where, when and through which channels (video, phone, ...)."""
    res: dict[str, Any] = {
        "resourceType": "HealthcareService",
        "id": service_id,
        "active": True,
        "providedBy": {"reference": f"Organization/{normalize_hsa_id(unit_hsa_id)}"},
        "category": [{"coding": [codes.coding(codes.SERVICE_CATEGORY, category, codes.SERVICE_CATEGORIES)]}],
        "type": [{"coding": [codes.coding(codes.SERVICE_TYPE, t, codes.SERVICE_TYPES)]} for t in types],
        "name": name,
        "appointmentRequired": appointment_required,
    }
    if locations:
        res["location"] = [{"reference": f"Location/{loc}"} for loc in locations]
    if comment:
        res["comment"] = comment
    telecom = _telecom(phone, url=url)
    if telecom:
        res["telecom"] = telecom
    if channels:
        res["characteristic"] = [
            {"coding": [codes.coding(codes.SERVICE_CHANNEL, c, codes.SERVICE_CHANNELS)]} for c in channels
        ]
    if hours is not None:
        res["availableTime"] = [hours.service_time()]
    return res
