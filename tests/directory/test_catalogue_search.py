"""The service catalogue is searchable through the FHIR REST API (HealthcareService, Location)."""

from __future__ import annotations

import httpx

from nara.directory import admin, codes
from nara.directory import resources as r
from nara.store.store import Store

REGION = "SE2321000180-R001"
TYBBLE = "SE2321000180-E001"
KUMLA = "SE2321000180-E002"
WEEKDAYS = r.OpeningHours()


def seed(store: Store) -> None:
    orebro = r.Address("Tybblegatan 5", "70361", "Örebro", "Örebro", "Örebro län")
    kumla = r.Address("Storgatan 20", "69231", "Kumla", "Kumla", "Örebro län")
    with store.transaction() as tx:
        admin.add_organization(tx, r.care_provider(REGION, "Region Örebro län", "232100-0180"))
        admin.add_organization(tx, r.unit(TYBBLE, "Vårdcentralen Tybble", REGION, "vardcentral", address=orebro))
        admin.add_organization(tx, r.unit(KUMLA, "Vårdcentralen Kumla", REGION, "vardcentral", address=kumla))
        admin.add_location(tx, r.location("loc-tybble", "Vårdcentralen Tybble", TYBBLE, orebro, hours=WEEKDAYS))
        admin.add_location(tx, r.location("loc-kumla", "Vårdcentralen Kumla", KUMLA, kumla, hours=WEEKDAYS))
        admin.add_service(
            tx,
            r.service(
                "svc-tybble-diabetes",
                "Diabetesmottagning Tybble",
                TYBBLE,
                "primarvard",
                ["diabetesmottagning"],
                locations=["loc-tybble"],
                channels=["besok", "video"],
                hours=WEEKDAYS,
            ),
        )
        admin.add_service(
            tx,
            r.service(
                "svc-kumla-vaccination",
                "Vaccination Kumla",
                KUMLA,
                "primarvard",
                ["vaccination"],
                locations=["loc-kumla"],
                channels=["besok"],
            ),
        )


def ids(fhir: httpx.Client, query: str) -> set[str]:
    r = fhir.get(query)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_services_are_found_by_name_category_type_and_channel(fhir: httpx.Client, store: Store) -> None:
    seed(store)
    assert ids(fhir, "HealthcareService?name=diabetes") == {"svc-tybble-diabetes"}
    assert ids(fhir, f"HealthcareService?service-category={codes.SERVICE_CATEGORY}|primarvard") == {
        "svc-tybble-diabetes",
        "svc-kumla-vaccination",
    }
    assert ids(fhir, "HealthcareService?service-type=vaccination") == {"svc-kumla-vaccination"}
    assert ids(fhir, f"HealthcareService?characteristic={codes.SERVICE_CHANNEL}|video") == {"svc-tybble-diabetes"}
    assert ids(fhir, f"HealthcareService?organization=Organization/{KUMLA}") == {"svc-kumla-vaccination"}


def test_locations_are_found_by_city_and_services_by_location_city(fhir: httpx.Client, store: Store) -> None:
    seed(store)
    assert ids(fhir, "Location?address-city=kumla") == {"loc-kumla"}
    assert ids(fhir, "Location?address-city=Örebro") == {"loc-tybble"}
    assert ids(fhir, "HealthcareService?location.address-city=Örebro") == {"svc-tybble-diabetes"}


def test_ended_services_can_be_filtered_out_with_active(fhir: httpx.Client, store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.end_service(tx, "svc-kumla-vaccination")
    assert ids(fhir, "HealthcareService?active=true") == {"svc-tybble-diabetes"}


def test_units_are_found_by_type_and_under_their_care_provider(fhir: httpx.Client, store: Store) -> None:
    seed(store)
    assert ids(fhir, f"Organization?type={codes.UNIT_KIND}|vardcentral") == {TYBBLE, KUMLA}
    assert ids(fhir, f"Organization?partof=Organization/{REGION}") == {TYBBLE, KUMLA}
    assert ids(fhir, f"Organization?type={codes.ORGANIZATION_ROLE}|vardgivare") == {REGION}
