"""Directory admin operations and their validation, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

import pytest

from nara.directory import admin, codes
from nara.directory import resources as r
from nara.fhir.identifiers import HSA_ID, HSA_ID_RIV
from nara.fhir.outcome import FhirError
from nara.fhir.validation import validate
from nara.store.store import Store

REGION = "SE2321000180-R001"
HC = "SE2321000180-E001"
WARD_PARENT = "SE2321000180-E100"
DR = "SE2321000180-P001"
ASSIGNMENT = "SE2321000180-M001"
ADDRESS = r.Address("Storgatan 1", "70210", "Örebro", "Örebro", "Örebro län")


def seed(store: Store) -> None:
    with store.transaction() as tx:
        admin.add_organization(tx, r.care_provider(REGION, "Region Test", "232100-0180"))
        admin.add_organization(tx, r.unit(HC, "Vårdcentralen Test", REGION, "vardcentral", address=ADDRESS))
        admin.add_practitioner(tx, r.practitioner(DR, "Karin", "Lind", gender="female"))


def care_assignment(hsa: str = ASSIGNMENT, unit: str = HC, rights: list[str] | None = None) -> dict:
    return r.assignment(
        hsa, DR, unit, "lakare", codes.PURPOSE_CARE, rights or ["Läsa;alla;SJF", "Skriva;alla;VE"], date(2024, 1, 1)
    )


def expect_error(
    fn: Callable[..., object], *args: object, status: int = 400, expression: str | None = None, **kwargs: object
) -> FhirError:
    with pytest.raises(FhirError) as info:
        fn(*args, **kwargs)
    assert info.value.status == status
    if expression is not None:
        assert expression in info.value.issues[0].expression
    return info.value


def test_added_directory_resources_are_valid_r4_with_hsa_ids_as_fhir_ids(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        role = admin.add_assignment(tx, care_assignment())
        for rtype, rid in (("Organization", REGION), ("Organization", HC), ("Practitioner", DR)):
            res = tx.read(rtype, rid).resource()
            assert validate(res) == []
            assert res["identifier"][0] == {"system": HSA_ID, "value": rid}
    assert validate(role) == []
    assert role["id"] == ASSIGNMENT
    assert role["active"] is True
    purposes = [e["valueString"] for e in role["extension"] if e["url"] == codes.ASSIGNMENT_PURPOSE_URL]
    assert purposes == ["Vård och behandling"]


def test_r_id_2_hsa_id_under_the_riv_oid_is_stored_under_one_system(store: Store) -> None:
    org = r.care_provider("se2321000180-r002", "Kommun Test", "212000-1234".replace("1234", "1231"))
    org["identifier"][0] = {"system": HSA_ID_RIV, "value": "se2321000180-r002"}
    org["id"] = "SE2321000180-R002"
    with store.transaction() as tx:
        stored = admin.add_organization(tx, org)
    assert stored["identifier"][0] == {"system": HSA_ID, "value": "SE2321000180-R002"}


def test_provider_without_organisation_number_is_rejected(store: Store) -> None:
    org = r.care_provider(REGION, "Region Test", "232100-0180")
    org["identifier"] = org["identifier"][:1]
    with store.transaction() as tx:
        expect_error(admin.add_organization, tx, org, expression="Organization.identifier")


def test_organisation_number_with_a_wrong_check_digit_is_rejected(store: Store) -> None:
    org = r.care_provider(REGION, "Region Test", "232100-0180")
    org["identifier"][1]["value"] = "232100-0181"
    with store.transaction() as tx:
        err = expect_error(admin.add_organization, tx, org, expression="Organization.identifier[1].value")
    assert "Luhn" in err.issues[0].diagnostics


def test_unit_under_a_missing_parent_is_rejected(store: Store) -> None:
    with store.transaction() as tx:
        err = expect_error(
            admin.add_organization,
            tx,
            r.unit(HC, "VC", "SE2321000180-X999", "vardcentral"),
            expression="Organization.partOf",
        )
    assert "does not exist" in err.issues[0].diagnostics


def test_unit_needs_a_care_provider_above_it(store: Store) -> None:
    plain = {"resourceType": "Organization", "id": "plain", "name": "Not in the directory"}
    with store.transaction() as tx:
        tx.update("Organization", "plain", plain)
        unit = r.unit(HC, "VC", REGION, "vardcentral")
        unit["partOf"] = {"reference": "Organization/plain"}
        expect_error(admin.add_organization, tx, unit, expression="Organization.partOf")


def test_adding_the_same_hsa_id_twice_is_a_conflict(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        expect_error(admin.add_organization, tx, r.unit(HC, "Again", REGION, "vardcentral"), status=409)


def test_id_that_differs_from_the_hsa_id_is_rejected(store: Store) -> None:
    seed(store)
    unit = r.unit("SE2321000180-E002", "VC 2", REGION, "vardcentral")
    unit["id"] = "something-else"
    with store.transaction() as tx:
        expect_error(admin.add_organization, tx, unit, expression="Organization.id")


def test_assignment_must_point_at_an_active_unit(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.end_organization(tx, HC)
        err = expect_error(admin.add_assignment, tx, care_assignment(), expression="PractitionerRole.organization")
    assert "has ended" in err.issues[0].diagnostics


def test_assignment_must_point_at_a_unit_not_a_care_provider(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        expect_error(admin.add_assignment, tx, care_assignment(unit=REGION), expression="PractitionerRole.organization")


def test_assignment_rights_must_be_activity_information_type_scope(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        err = expect_error(admin.add_assignment, tx, care_assignment(rights=["Läsa;alla;XX"]))
        assert "omfång" in err.issues[0].diagnostics
        expect_error(admin.add_assignment, tx, care_assignment(rights=["Läsa alla"]))


def test_assignment_with_unknown_purpose_or_role_is_rejected(store: Store) -> None:
    seed(store)
    bad_purpose = care_assignment()
    bad_purpose["extension"][0]["valueString"] = "Nyfikenhet"
    bad_role = care_assignment()
    bad_role["code"][0]["coding"][0]["code"] = "astronaut"
    with store.transaction() as tx:
        expect_error(admin.add_assignment, tx, bad_purpose, expression="PractitionerRole.extension")
        expect_error(admin.add_assignment, tx, bad_role, expression="PractitionerRole.code")


def test_change_assignment_rights_and_end_it(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_assignment(tx, care_assignment())
        changed = admin.change_assignment(tx, ASSIGNMENT, rights=["Läsa;alla;VE"])
        rights = [e["valueString"] for e in changed["extension"] if e["url"] == codes.ASSIGNMENT_RIGHT_URL]
        assert rights == ["Läsa;alla;VE"]
        ended = admin.end_assignment(tx, ASSIGNMENT, date(2026, 6, 30))
        assert ended["active"] is False
        assert ended["period"] == {"start": "2024-01-01", "end": "2026-06-30"}
        assert tx.read("PractitionerRole", ASSIGNMENT).version == 3
        expect_error(admin.change_assignment, tx, ASSIGNMENT, status=409)


def test_ending_an_assignment_before_it_started_is_rejected(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_assignment(tx, care_assignment())
        expect_error(admin.end_assignment, tx, ASSIGNMENT, date(2023, 1, 1), expression="PractitionerRole.period.end")


def test_unit_with_active_assignments_cannot_end(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_assignment(tx, care_assignment())
        err = expect_error(admin.end_organization, tx, HC, status=409)
    assert ASSIGNMENT in err.issues[0].diagnostics


def test_provider_with_active_units_cannot_end(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        err = expect_error(admin.end_organization, tx, REGION, status=409)
    assert HC in err.issues[0].diagnostics


def test_staff_leaving_ends_all_their_assignments(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_organization(tx, r.unit("SE2321000180-E002", "VC 2", REGION, "vardcentral"))
        admin.add_assignment(tx, care_assignment())
        admin.add_assignment(tx, care_assignment("SE2321000180-M002", "SE2321000180-E002"))
        admin.end_practitioner(tx, DR, date(2026, 3, 31))
        for hsa in (ASSIGNMENT, "SE2321000180-M002"):
            role = tx.read("PractitionerRole", hsa).resource()
            assert role["active"] is False and role["period"]["end"] == "2026-03-31"
        assert tx.read("Practitioner", DR).resource()["active"] is False
        err = expect_error(admin.add_assignment, tx, care_assignment("SE2321000180-M003"))
    assert "has left" in err.issues[0].diagnostics


def test_change_organization_moves_a_unit_and_rejects_a_cycle(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_organization(tx, r.unit(WARD_PARENT, "Sjukhuset", REGION, "sjukhus"))
        moved = admin.change_organization(tx, HC, part_of=WARD_PARENT, name="Vårdcentralen Ny")
        assert moved["partOf"] == {"reference": f"Organization/{WARD_PARENT}"}
        assert moved["name"] == "Vårdcentralen Ny"
        err = expect_error(admin.change_organization, tx, WARD_PARENT, part_of=HC)
    assert "cycle" in err.issues[0].diagnostics


def test_ending_a_unit_ends_its_services_and_locations(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        admin.add_location(tx, r.location("loc-1", "Vårdcentralen Test", HC, ADDRESS))
        admin.add_service(tx, r.service("svc-1", "Vaccination", HC, "primarvard", ["vaccination"], locations=["loc-1"]))
        admin.end_organization(tx, HC)
        assert tx.read("HealthcareService", "svc-1").resource()["active"] is False
        assert tx.read("Location", "loc-1").resource()["status"] == "inactive"


def test_service_must_be_provided_by_an_active_unit_at_existing_locations(store: Store) -> None:
    seed(store)
    with store.transaction() as tx:
        expect_error(
            admin.add_service,
            tx,
            r.service("svc-1", "VC", REGION, "primarvard", ["lakarbesok"]),
            expression="HealthcareService.providedBy",
        )
        expect_error(
            admin.add_service,
            tx,
            r.service("svc-1", "VC", HC, "primarvard", ["lakarbesok"], locations=["nowhere"]),
            expression="HealthcareService.location[0]",
        )
        unknown = r.service("svc-1", "VC", HC, "primarvard", ["lakarbesok"])
        unknown["category"][0]["coding"][0]["code"] = "tandvard"
        expect_error(admin.add_service, tx, unknown, expression="HealthcareService.category")
