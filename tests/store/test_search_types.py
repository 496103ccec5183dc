"""Search by each search-parameter type (R4 search.html §3.1.1.4), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import orjson
import pytest

from nara.fhir.identifiers import make_personal_identity
from nara.fhir.outcome import FhirError
from nara.store.store import Store
from tests.store.search_fixtures import idset, load

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"


def patient(pid: str, family: str, given: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": pid, "name": [{"family": family, "given": [given]}], **extra}


def obs(oid: str, **extra: Any) -> dict[str, Any]:
    res: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}], "text": "Vikt"},
    }
    res.update(extra)
    return res


def coded(system: str | None, code: str, display: str | None = None) -> dict[str, Any]:
    c: dict[str, Any] = {"code": code}
    if system is not None:
        c["system"] = system
    if display is not None:
        c["display"] = display
    return {"coding": [c]}


# ---- string -----------------------------------------------------------------------------------
@pytest.fixture
def people(store: Store) -> Store:
    load(
        store,
        patient("asa", "Öberg", "Åsa", address=[{"city": "Västerås", "line": ["Storgatan 1"]}]),
        patient("anna", "Andersson", "Anna", address=[{"city": "Uppsala"}]),
        patient("bo", "Berg", "Bo"),
    )
    return store


def test_string_match_is_case_and_accent_insensitive_prefix(people: Store) -> None:
    assert idset(people, "Patient", "name=asa") == {"asa"}
    assert idset(people, "Patient", "name=ÅSA") == {"asa"}
    assert idset(people, "Patient", "family=ober") == {"asa"}
    assert idset(people, "Patient", "name=an") == {"anna"}
    assert idset(people, "Patient", "address-city=vaster") == {"asa"}
    assert idset(people, "Patient", "address=storgatan") == {"asa"}
    assert idset(people, "Patient", "name=erg") == set()


def test_string_exact_is_case_and_accent_sensitive_whole_value(people: Store) -> None:
    assert idset(people, "Patient", "family:exact=Öberg") == {"asa"}
    assert idset(people, "Patient", "family:exact=Oberg") == set()
    assert idset(people, "Patient", "family:exact=Öber") == set()


def test_string_contains_matches_anywhere(people: Store) -> None:
    assert idset(people, "Patient", "family:contains=ERG") == {"asa", "bo"}
    assert idset(people, "Patient", "address-city:contains=ster") == {"asa"}


def test_string_or_values_and_repeated_params(people: Store) -> None:
    assert idset(people, "Patient", "name=asa,bo") == {"asa", "bo"}
    assert idset(people, "Patient", "name=asa&name=berg") == set()
    assert idset(people, "Patient", "given=asa&family=öberg") == {"asa"}


def test_string_missing(people: Store) -> None:
    assert idset(people, "Patient", "address-city:missing=true") == {"bo"}
    assert idset(people, "Patient", "address-city:missing=false") == {"asa", "anna"}


# ---- token ------------------------------------------------------------------------------------
@pytest.fixture
def coded_obs(store: Store) -> Store:
    load(
        store,
        obs("weight"),
        obs("local", code={**coded("http://region.se/lab", "X1", "Blodsocker"), "text": "P-Glukos"}),
        obs("nosys", code=coded(None, "29463-7")),
        obs("cat", category=[coded(CATEGORY, "vital-signs")]),
    )
    return store


def test_token_system_and_code(coded_obs: Store) -> None:
    assert idset(coded_obs, "Observation", f"code={LOINC}|29463-7") == {"weight", "cat"}
    assert idset(coded_obs, "Observation", "code=29463-7") == {"weight", "cat", "nosys"}
    assert idset(coded_obs, "Observation", "code=|29463-7") == {"nosys"}
    assert idset(coded_obs, "Observation", "code=http://region.se/lab|") == {"local"}
    assert idset(coded_obs, "Observation", "code=http://other|29463-7") == set()


def test_token_code_is_case_sensitive(coded_obs: Store) -> None:
    assert idset(coded_obs, "Observation", "code=x1") == set()
    assert idset(coded_obs, "Observation", "code=X1") == {"local"}


def test_token_text_matches_display_and_text(coded_obs: Store) -> None:
    assert idset(coded_obs, "Observation", "code:text=blodsock") == {"local"}
    assert idset(coded_obs, "Observation", "code:text=p-glukos") == {"local"}
    assert idset(coded_obs, "Observation", "code:text=body") == {"weight", "cat"}


def test_token_not_includes_resources_without_the_element(coded_obs: Store) -> None:
    assert idset(coded_obs, "Observation", f"category:not={CATEGORY}|vital-signs") == {"weight", "local", "nosys"}
    assert idset(coded_obs, "Observation", "code:not=29463-7") == {"local"}


def test_token_missing(coded_obs: Store) -> None:
    assert idset(coded_obs, "Observation", "category:missing=true") == {"weight", "local", "nosys"}
    assert idset(coded_obs, "Observation", "category:missing=false") == {"cat"}


def test_token_on_identifier_boolean_code_and_contact_point(store: Store) -> None:
    pnr = "http://electronichealth.se/identifier/personnummer"
    load(
        store,
        patient(
            "p1",
            "A",
            "B",
            identifier=[{"system": pnr, "value": "191212121212"}],
            active=True,
            gender="female",
            telecom=[{"system": "phone", "value": "+46701234567"}, {"system": "email", "value": "a@b.se"}],
        ),
        patient("p2", "C", "D", active=False, gender="male"),
    )
    assert idset(store, "Patient", f"identifier={pnr}|191212121212") == {"p1"}
    assert idset(store, "Patient", "identifier=191212121212") == {"p1"}
    assert idset(store, "Patient", "active=true") == {"p1"}
    assert idset(store, "Patient", "active=false") == {"p2"}
    assert idset(store, "Patient", "gender=male") == {"p2"}
    assert idset(store, "Patient", "gender:not=male") == {"p1"}
    assert idset(store, "Patient", "phone=%2B46701234567") == {"p1"}
    assert idset(store, "Patient", "email=a@b.se") == {"p1"}
    assert idset(store, "Patient", "phone=a@b.se") == set()


def test_r_id_2_a_personal_number_is_found_under_the_uri_or_either_oid_however_it_was_stored(store: Store) -> None:
    """A search may name the personnummer's system by its URI or by the RIV OID (with or without ``urn:oid:``)
    and write the number with a hyphen or without: each finds the record stored today (12 digits under the URI)
    and one stored before writes were normalised (as the feed wrote it, here under the OID with a hyphen)."""
    uri, oid = "http://electronichealth.se/identifier/personnummer", "1.2.752.129.2.1.3.1"
    load(store, patient("now", "Ny", "Nu", identifier=[{"system": "urn:oid:" + oid, "value": "19121212-1212"}]))
    with store.transaction() as tx:
        tx.validate = False  # a record stored before writes were normalised (R-ID-1): as the feed wrote it
        old = patient("then", "Gammal", "Då", identifier=[{"system": oid, "value": "19480609-3714"}])
        tx.update("Patient", "then", old)
    with store.transaction() as tx:
        stored = orjson.loads(tx.read("Patient", "now").content or "{}")
    assert stored["identifier"] == [{"system": uri, "value": "191212121212"}]
    for system in (uri, oid, "urn:oid:" + oid):
        for number, pid in (("19121212-1212", "now"), ("191212121212", "now"), ("194806093714", "then")):
            assert idset(store, "Patient", f"identifier={system}|{number}") == {pid}, (system, number)
        assert idset(store, "Patient", f"identifier={system}|") == {"now", "then"}
    assert idset(store, "Patient", "identifier=19121212-1212") == {"now"}
    assert idset(store, "Patient", "identifier=urn:oid:1.2.752.129.2.1.3.3|191212121212") == set()


def test_r_id_2_a_reference_identifier_is_found_in_the_form_its_writer_wrote_it(store: Store) -> None:
    """``:identifier`` on a reference takes the same forms as a token search: a client that writes a subject's
    personnummer under the RIV OID or with a hyphen (stored as 12 digits under the URI, R-ID-1) and then searches
    with that very identifier finds its record; so does one that sends an HSA-id under Inera's RIV OID, and a
    search by the stored form finds a reference stored before writes were normalised."""
    uri, oid = "http://electronichealth.se/identifier/personnummer", "1.2.752.129.2.1.3.1"
    riv_hsa, hsa = "urn:oid:1.2.752.129.2.1.4.1", "urn:oid:1.2.752.29.4.19"
    load(
        store,
        obs("o1", subject={"identifier": {"system": "urn:oid:" + oid, "value": "19121212-1212"}}),
        obs("o2", subject={"identifier": {"system": uri, "value": "19480609-3714"}}),
        obs("o3", performer=[{"identifier": {"system": riv_hsa, "value": "SE2321000032-ABC"}}]),
    )
    with store.transaction() as tx:
        tx.validate = False  # a reference stored before writes were normalised: as the feed wrote it
        tx.update("Observation", "o4", obs("o4", subject={"identifier": {"system": oid, "value": "19500203-2380"}}))
    for system in (uri, oid, "urn:oid:" + oid):
        assert idset(store, "Observation", f"subject:identifier={system}|19121212-1212") == {"o1"}, system
        assert idset(store, "Observation", f"subject:identifier={system}|191212121212") == {"o1"}, system
        assert idset(store, "Observation", f"subject:identifier={system}|19480609-3714") == {"o2"}, system
        assert idset(store, "Observation", f"subject:identifier={system}|195002032380") == {"o4"}, system
        assert idset(store, "Observation", f"subject:identifier={system}|") == {"o1", "o2", "o4"}, system
    assert idset(store, "Observation", "subject:identifier=19121212-1212") == {"o1"}
    for system in (riv_hsa, hsa):
        assert idset(store, "Observation", f"performer:identifier={system}|SE2321000032-ABC") == {"o3"}, system
    assert idset(store, "Observation", "subject:identifier=urn:oid:1.2.752.129.2.1.3.3|191212121212") == set()


def test_r_id_1_a_ten_digit_number_finds_what_a_write_of_it_stored_today_and_never_a_century_earlier(
    store: Store,
) -> None:
    """A write reads a ``YYMMDD-NNNC`` number's century on its day and stores the 12 digits; a search with the same
    10 digits reads it on its day too, so a client that writes and then looks up (If-None-Exist, a conditional
    update or reference) by the number it has finds the record. A record stored in ten digits before writes were
    normalised is not matched by them: written when she was 99, the woman who has turned 100 since has the digits
    of a baby born a month ago, and a conditional create of the baby must not find (nor an update overwrite) her
    record."""
    uri = "http://electronichealth.se/identifier/personnummer"
    today = date.today()
    born = (today - timedelta(days=30)).replace(year=today.year - 100)  # turned 100 a month ago
    elder = make_personal_identity(born, 482)
    ten = f"{elder[2:8]}-{elder[8:]}"  # hers as written a year ago; the baby's read today
    load(
        store,
        patient("p10", "Tio", "Siffror", identifier=[{"system": uri, "value": "121212-1212"}]),
        patient("order", "Order", "Nummer", identifier=[{"system": "urn:orders", "value": "1212121212"}]),
        patient("other", "Annat", "System", identifier=[{"system": "urn:orders", "value": ten}]),
    )
    with store.transaction() as tx:
        tx.validate = False  # stored before writes were normalised
        tx.update("Patient", "elder", patient("elder", "Hundra", "År", identifier=[{"system": uri, "value": ten}]))
    assert idset(store, "Patient", f"identifier={uri}|121212-1212") == {"p10"}
    assert idset(store, "Patient", f"identifier={uri}|1212121212") == {"p10"}
    assert idset(store, "Patient", "identifier=121212-1212") == {"p10"}
    # Without a system, ten bare digits are as often another kind of number: matched as written only.
    assert idset(store, "Patient", "identifier=1212121212") == {"order"}
    body = {"resourceType": "Patient", "identifier": [{"system": uri, "value": "121212-1212"}]}
    with store.transaction() as tx:
        again = tx.create(body, "Patient", if_none_exist=f"identifier={uri}|121212-1212")
    assert again.created is False and again.stored is not None and again.stored.res_id == "p10"
    for system in (uri, "urn:oid:1.2.752.129.2.1.3.1"):
        assert idset(store, "Patient", f"identifier={system}|{ten}") == set(), system
    assert idset(store, "Patient", f"identifier={ten}") == {"other"}  # as written under another system only
    baby = {"resourceType": "Patient", "identifier": [{"system": uri, "value": ten}]}
    with store.transaction() as tx:
        made = tx.create(baby, "Patient", if_none_exist=f"identifier={uri}|{ten}")
    assert made.created and made.stored is not None and made.stored.res_id != "elder"
    assert made.stored.resource()["identifier"] == [{"system": uri, "value": "20" + elder[2:]}]
    assert idset(store, "Patient", f"identifier={uri}|{ten}") == {made.stored.res_id}


def test_r_id_1_a_centenarians_plus_form_is_found_also_when_its_plus_arrives_as_a_space(store: Store) -> None:
    """``YYMMDD+NNNC`` (a person of 100 or more) in an If-None-Exist header, a conditional update or a Bundle's
    conditional reference is often written with a bare '+', which form encoding reads as a space: the search still
    reads it as the number, so a repeated conditional create finds the record instead of making a second one."""
    uri = "http://electronichealth.se/identifier/personnummer"
    number = make_personal_identity(date(1925, 1, 15), 482)
    plus = f"{number[2:8]}+{number[8:]}"
    body = {"resourceType": "Patient", "identifier": [{"system": uri, "value": plus}]}
    with store.transaction() as tx:
        first = tx.create(dict(body), "Patient", if_none_exist=f"identifier={uri}|{plus}")
    assert first.created and first.stored is not None
    assert first.stored.resource()["identifier"] == [{"system": uri, "value": number}]
    with store.transaction() as tx:
        again = tx.create(dict(body), "Patient", if_none_exist=f"identifier={uri}|{plus}")
    assert not again.created and again.stored is not None and again.stored.res_id == first.stored.res_id
    for value in (plus, plus.replace("+", "%2B"), number):
        assert idset(store, "Patient", f"identifier={uri}|{value}") == {first.stored.res_id}, value
    assert idset(store, "Patient", f"identifier={plus}") == {first.stored.res_id}


def test_a_code_without_a_system_finds_a_personal_numbers_other_forms_only_under_its_system(store: Store) -> None:
    """A code without a system matches that code under any system (R4 search §3.1.1.4.9). Written as a personal
    identity number, it finds the number's other forms too, but only under a personal identity number's system:
    an order number that happens to be a personnummer's digits, in any of its forms, finds no other order, and a
    conditional update by it changes its own order and no other."""
    uri, order = "http://electronichealth.se/identifier/personnummer", "urn:example:order-number"

    def request(rid: str, system: str, value: str) -> dict[str, Any]:
        return {
            "resourceType": "ServiceRequest",
            "id": rid,
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p"},
            "identifier": [{"system": system, "value": value}],
        }

    load(
        store,
        patient("p", "Person", "Nummer", identifier=[{"system": uri, "value": "19811218-9876"}]),
        request("a", order, "8112189876"),
        request("b", order, "198112189876"),
        request("c", order, "19811218-9876"),
        request("d", order, "811218-9876"),
        request("pnr", uri, "198112189876"),
        obs("o1", basedOn=[{"identifier": {"system": order, "value": "8112189876"}}]),
        obs("o2", basedOn=[{"identifier": {"system": order, "value": "198112189876"}}]),
        obs("o3", basedOn=[{"identifier": {"system": uri, "value": "811218-9876"}}]),
    )
    assert idset(store, "ServiceRequest", "identifier=8112189876") == {"a"}
    assert idset(store, "ServiceRequest", "identifier=198112189876") == {"b", "pnr"}
    assert idset(store, "ServiceRequest", "identifier=19811218-9876") == {"c", "pnr"}
    assert idset(store, "ServiceRequest", "identifier=811218-9876") == {"d", "pnr"}
    assert idset(store, "Patient", "identifier=811218-9876") == {"p"}
    assert idset(store, "Observation", "based-on:identifier=8112189876") == {"o1"}
    assert idset(store, "Observation", "based-on:identifier=198112189876") == {"o2", "o3"}
    body = request("x", order, "8112189876")
    del body["id"]
    with store.transaction() as tx:
        made = tx.conditional_update("ServiceRequest", "identifier=8112189876", body)
    assert made.stored is not None and made.stored.res_id == "a", "a conditional update changed another order"


def test_a_modified_patient_parameter_is_not_read_as_a_patient_id(store: Store) -> None:
    """With the patient pinned, ``patient=<id>`` is a patient-key filter; ``patient:identifier=<value>`` is a search
    by the reference's identifier, not by the id."""
    load(store, patient("p1", "A", "B"), obs("o1", subject={"reference": "Patient/p1"}))
    assert idset(store, "Observation", "patient=p1") == {"o1"}
    assert idset(store, "Observation", "patient:identifier=p1") == set()
    assert idset(store, "Observation", "patient=p1&patient:identifier=p1") == set()


def test_token_escaped_separators(store: Store) -> None:
    load(store, patient("p1", "A", "B", identifier=[{"system": "urn:sys", "value": "a|b,c"}]))
    assert idset(store, "Patient", r"identifier=urn:sys|a\|b\,c") == {"p1"}
    assert idset(store, "Patient", r"identifier=a\|b\,c") == {"p1"}


# ---- reference --------------------------------------------------------------------------------
@pytest.fixture
def refs(store: Store) -> Store:
    load(
        store,
        patient("p1", "A", "B"),
        obs("o1", subject={"reference": "Patient/p1"}),
        obs("o2", subject={"reference": "http://nara.test/fhir/Patient/p2"}),
        obs("o3", subject={"reference": "http://elsewhere.se/fhir/Patient/p1"}),
        obs("o4", subject={"identifier": {"system": "urn:pnr", "value": "191212121212"}}),
        obs("o5", subject={"reference": "Group/p1"}),
        obs("o6"),
    )
    return store


def test_reference_relative_logical_and_typed(refs: Store) -> None:
    assert idset(refs, "Observation", "subject=Patient/p1") == {"o1"}
    assert idset(refs, "Observation", "subject:Patient=p1") == {"o1"}
    assert idset(refs, "Observation", "subject=p1") == {"o1", "o5"}
    assert idset(refs, "Observation", "subject:Group=p1") == {"o5"}
    assert idset(refs, "Observation", "patient=p1") == {"o1"}
    assert idset(refs, "Observation", "patient=Patient/p1,Patient/p2") == {"o1"}


def test_reference_search_by_own_absolute_url_finds_relative_and_absolute_references(refs: Store) -> None:
    assert idset(refs, "Observation", "subject=http://nara.test/fhir/Patient/p1") == {"o1"}
    assert idset(refs, "Observation", "subject=http://nara.test/fhir/Patient/p2") == {"o2"}
    # an absolute reference is kept by its URL: the relative form does not claim it
    assert idset(refs, "Observation", "subject=Patient/p2") == set()


def test_reference_absolute_external_matches_only_its_url(refs: Store) -> None:
    assert idset(refs, "Observation", "subject=http://elsewhere.se/fhir/Patient/p1") == {"o3"}


def test_reference_logical_identifier(refs: Store) -> None:
    assert idset(refs, "Observation", "subject:identifier=urn:pnr|191212121212") == {"o4"}
    assert idset(refs, "Observation", "subject:identifier=191212121212") == {"o4"}
    assert idset(refs, "Observation", "subject:identifier=urn:other|191212121212") == set()


def test_reference_missing(refs: Store) -> None:
    assert idset(refs, "Observation", "subject:missing=true") == {"o6"}
    assert "o6" not in idset(refs, "Observation", "subject:missing=false")


def test_reference_to_wrong_type_is_no_match(refs: Store) -> None:
    assert idset(refs, "Observation", "patient=Group/p1") == set()


# ---- date -------------------------------------------------------------------------------------
@pytest.fixture
def dated(store: Store) -> Store:
    load(
        store,
        obs("day", effectiveDateTime="2026-11-01"),  # local day: 2026-10-31T23:00Z .. 2026-11-01T23:00Z
        obs("minute", effectiveDateTime="2026-11-01T08:00:00+01:00"),  # 07:00:00Z, the whole second
        obs("late-utc", effectiveDateTime="2026-11-01T23:30:00Z"),  # 2026-11-02 00:30 in Stockholm
        obs("period", effectivePeriod={"start": "2026-10-15", "end": "2026-11-15"}),
        obs("open", effectivePeriod={"start": "2026-12-01T00:00:00Z"}),
        obs("year", effectiveDateTime="2025"),
        obs("instant", effectiveInstant="2026-11-01T10:00:00.123Z"),
        obs("none"),
    )
    return store


def test_date_eq_is_containment_in_local_time_zone(dated: Store) -> None:
    assert idset(dated, "Observation", "date=2026-11-01") == {"day", "minute", "instant"}
    assert idset(dated, "Observation", "date=2026-11-02") == {"late-utc"}
    assert idset(dated, "Observation", "date=2026-11-01T07:00:00Z") == {"minute"}
    assert idset(dated, "Observation", "date=2026-11-01T08:00:00%2B01:00") == {"minute"}
    assert idset(dated, "Observation", "date=2026-11") == {"day", "minute", "late-utc", "instant"}
    assert idset(dated, "Observation", "date=2025") == {"year"}


def test_date_ne(dated: Store) -> None:
    assert idset(dated, "Observation", "date=ne2026-11-01") == {"late-utc", "period", "open", "year"}


def test_date_gt_lt_ge_le_overlap_semantics(dated: Store) -> None:
    assert idset(dated, "Observation", "date=gt2026-11-01") == {"late-utc", "period", "open"}
    assert idset(dated, "Observation", "date=lt2026-11-01") == {"period", "year"}
    assert idset(dated, "Observation", "date=ge2026-11-01") == {
        "day",
        "minute",
        "instant",
        "late-utc",
        "period",
        "open",
    }
    assert idset(dated, "Observation", "date=le2026-11-01") == {"day", "minute", "instant", "period", "year"}
    assert idset(dated, "Observation", "date=gt2026-11-01T10:00:00.123Z") == {
        "day",
        "late-utc",
        "period",
        "open",
    }


def test_date_sa_eb(dated: Store) -> None:
    assert idset(dated, "Observation", "date=sa2026-11-01") == {"late-utc", "open"}
    assert idset(dated, "Observation", "date=eb2026-11-01") == {"year"}


def test_date_range_by_two_params(dated: Store) -> None:
    assert idset(dated, "Observation", "date=ge2026-11-01&date=lt2026-11-02") == {
        "day",
        "minute",
        "instant",
        "period",
    }


def test_date_ap_is_approximately_the_same(dated: Store) -> None:
    found = idset(dated, "Observation", "date=ap2026-11-01")
    assert {"day", "minute", "late-utc", "period", "instant"} <= found
    assert "year" not in found


def test_date_missing(dated: Store) -> None:
    assert idset(dated, "Observation", "date:missing=true") == {"none"}


def test_date_rejects_garbage(dated: Store) -> None:
    with pytest.raises(FhirError) as e:
        idset(dated, "Observation", "date=yesterday", strict=True)
    assert e.value.status == 400 and "date" in e.value.issues[0].diagnostics.lower()


def test_date_on_instant_and_period_types(store: Store) -> None:
    load(
        store,
        {
            "resourceType": "Encounter",
            "id": "e1",
            "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "period": {"start": "2026-03-01T10:00:00+01:00", "end": "2026-03-01T11:00:00+01:00"},
        },
        obs("issued", issued="2026-03-01T09:30:00.000+01:00"),
    )
    assert idset(store, "Encounter", "date=2026-03-01") == {"e1"}
    assert idset(store, "Encounter", "date=2026-03-01T10:30:00%2B01:00") == set()
    assert idset(store, "Encounter", "date=le2026-03-01T10:30:00%2B01:00") == {"e1"}
    assert idset(store, "Encounter", "date=ge2026-03-01T10:30:00%2B01:00") == {"e1"}
    assert idset(store, "Encounter", "date=sa2026-03-01T09:59:00%2B01:00") == {"e1"}
    assert idset(store, "Observation", "_lastUpdated=gt2000-01-01") == {"issued"}


# ---- number and quantity ------------------------------------------------------------------------
@pytest.fixture
def risks(store: Store) -> Store:
    def risk(rid: str, p: float) -> dict[str, Any]:
        return {
            "resourceType": "RiskAssessment",
            "id": rid,
            "status": "final",
            "subject": {"reference": "Patient/p1"},
            "prediction": [{"probabilityDecimal": p}],
        }

    load(store, risk("r1", 0.8), risk("r2", 0.84), risk("r3", 0.86), risk("r4", 0.2))
    return store


def test_number_eq_uses_the_precision_of_the_search_value(risks: Store) -> None:
    assert idset(risks, "RiskAssessment", "probability=0.8") == {"r1", "r2"}
    assert idset(risks, "RiskAssessment", "probability=0.80") == {"r1"}
    assert idset(risks, "RiskAssessment", "probability=ne0.8") == {"r3", "r4"}


def test_number_prefixes(risks: Store) -> None:
    assert idset(risks, "RiskAssessment", "probability=gt0.8") == {"r2", "r3"}
    assert idset(risks, "RiskAssessment", "probability=ge0.84") == {"r2", "r3"}
    assert idset(risks, "RiskAssessment", "probability=lt0.84") == {"r1", "r4"}
    assert idset(risks, "RiskAssessment", "probability=le0.2") == {"r4"}
    assert idset(risks, "RiskAssessment", "probability=sa0.84") == {"r3"}
    assert idset(risks, "RiskAssessment", "probability=eb0.8") == {"r4"}
    assert idset(risks, "RiskAssessment", "probability=ap0.8") == {"r1", "r2", "r3"}
    assert idset(risks, "RiskAssessment", "probability=ap0.2") == {"r4"}


def test_number_rejects_garbage(risks: Store) -> None:
    with pytest.raises(FhirError) as e:
        idset(risks, "RiskAssessment", "probability=gtx", strict=True)
    assert e.value.status == 400


@pytest.fixture
def glucose(store: Store) -> Store:
    def g(oid: str, value: float, unit: str, code: str | None = None, system: str | None = UCUM) -> dict[str, Any]:
        q: dict[str, Any] = {"value": value, "unit": unit}
        if system:
            q["system"] = system
        if code:
            q["code"] = code
        return obs(oid, valueQuantity=q)

    load(
        store,
        g("a", 5.4, "mmol/L", "mmol/L"),
        g("b", 7.0, "mmol/L", "mmol/L"),
        g("c", 97, "mg/dL", "mg/dL"),
        g("d", 5.4, "mmol/l", system=None),
    )
    return store


def test_quantity_value_with_system_and_code(glucose: Store) -> None:
    assert idset(glucose, "Observation", f"value-quantity=5.4|{UCUM}|mmol/L") == {"a"}
    assert idset(glucose, "Observation", f"value-quantity=gt5|{UCUM}|mmol/L") == {"a", "b"}
    assert idset(glucose, "Observation", f"value-quantity=gt5|{UCUM}|mg/dL") == {"c"}
    assert idset(glucose, "Observation", "value-quantity=5.4") == {"a", "d"}
    assert idset(glucose, "Observation", "value-quantity=5.4||mmol/l") == {"d"}
    assert idset(glucose, "Observation", "value-quantity=le7||mmol/L") == {"a", "b"}


def test_quantity_prefixes(glucose: Store) -> None:
    assert idset(glucose, "Observation", "value-quantity=lt6") == {"a", "d"}
    assert idset(glucose, "Observation", "value-quantity=ap7") == {"b"}
    assert idset(glucose, "Observation", "value-quantity=ne5.4") == {"b", "c"}


# ---- uri --------------------------------------------------------------------------------------
@pytest.fixture
def valuesets(store: Store) -> Store:
    def vs(vid: str, url: str) -> dict[str, Any]:
        return {"resourceType": "ValueSet", "id": vid, "status": "active", "url": url}

    load(
        store,
        vs("v1", "http://nara.se/fhir/ValueSet/care-level"),
        vs("v2", "http://nara.se/fhir/ValueSet/care-level/sub"),
        vs("v3", "http://other.org/ValueSet/x"),
        vs("v4", "urn:oid:1.2.752.129"),
    )
    return store


def test_uri_exact_below_and_above(valuesets: Store) -> None:
    assert idset(valuesets, "ValueSet", "url=http://nara.se/fhir/ValueSet/care-level") == {"v1"}
    assert idset(valuesets, "ValueSet", "url:below=http://nara.se/fhir") == {"v1", "v2"}
    assert idset(valuesets, "ValueSet", "url:above=http://nara.se/fhir/ValueSet/care-level/sub/deeper") == {
        "v1",
        "v2",
    }
    assert idset(valuesets, "ValueSet", "url=urn:oid:1.2.752.129") == {"v4"}


def test_uri_below_does_not_match_partial_path_segments(valuesets: Store) -> None:
    assert idset(valuesets, "ValueSet", "url:below=http://nara.se/fhir/ValueSet/care") == set()
    assert idset(valuesets, "ValueSet", "url:above=http://nara.se/fhir/ValueSet/care-levelx") == set()


def test_uri_with_like_wildcards_is_literal(valuesets: Store) -> None:
    assert idset(valuesets, "ValueSet", "url:below=http://nara.se/fhir/ValueSet/care_level") == set()
    assert idset(valuesets, "ValueSet", "url:below=http://nara.se/%") == set()


# ---- composite --------------------------------------------------------------------------------
def bp(oid: str, systolic: float, diastolic: float) -> dict[str, Any]:
    def comp(code: str, v: float) -> dict[str, Any]:
        return {
            "code": coded(LOINC, code),
            "valueQuantity": {"value": v, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
        }

    return obs(
        oid,
        code=coded(LOINC, "85354-9"),
        component=[comp("8480-6", systolic), comp("8462-4", diastolic)],
    )


def test_composite_component_code_value_quantity(store: Store) -> None:
    load(store, bp("high", 150, 80), bp("normal", 120, 95))
    assert idset(store, "Observation", f"component-code-value-quantity={LOINC}|8480-6$gt140") == {"high"}
    assert idset(store, "Observation", "component-code-value-quantity=8480-6$gt140") == {"high"}
    assert idset(store, "Observation", f"component-code-value-quantity={LOINC}|8462-4$gt90") == {"normal"}
    # both conditions must hold on the same component, not across components
    assert idset(store, "Observation", f"component-code-value-quantity={LOINC}|8462-4$gt140") == set()
    assert idset(store, "Observation", f"component-code-value-quantity=8480-6$150|{UCUM}|mm[Hg]") == {"high"}
    assert idset(store, "Observation", "component-code-value-quantity=8480-6$lt130,8462-4$lt85") == {
        "high",
        "normal",
    }


def test_a_composites_token_reads_an_empty_system_or_code_as_a_token_search_does(store: Store) -> None:
    """``|code`` is the code with no system, ``system|`` any code of the system (R4 search §3.1.1.4.9)."""
    load(store, bp("coded", 150, 80))
    no_system = bp("plain", 150, 80)
    no_system["component"][0]["code"] = coded(None, "8480-6")
    load(store, no_system)
    assert idset(store, "Observation", "component-code-value-quantity=8480-6$gt140") == {"coded", "plain"}
    assert idset(store, "Observation", "component-code-value-quantity=|8480-6$gt140") == {"plain"}
    assert idset(store, "Observation", f"component-code-value-quantity={LOINC}|$gt140") == {"coded"}
    assert idset(store, "Observation", f"component-code-value-quantity={LOINC}|$gt200") == set()


def test_composite_code_value_concept_and_date(store: Store) -> None:
    load(
        store,
        obs("smoker", code=coded(LOINC, "72166-2"), valueCodeableConcept=coded("http://snomed.info/sct", "77176002")),
        obs("dated", code=coded(LOINC, "11368-8"), valueDateTime="2020-05-01"),
    )
    assert idset(store, "Observation", f"code-value-concept={LOINC}|72166-2$http://snomed.info/sct|77176002") == {
        "smoker"
    }
    assert idset(store, "Observation", "code-value-concept=72166-2$77176002") == {"smoker"}
    assert idset(store, "Observation", "code-value-concept=72166-2$12345") == set()
    assert idset(store, "Observation", "code-value-date=11368-8$2020-05") == {"dated"}
    assert idset(store, "Observation", "code-value-date=11368-8$gt2021") == set()


def test_composite_needs_two_parts(store: Store) -> None:
    with pytest.raises(FhirError) as e:
        idset(store, "Observation", "component-code-value-quantity=8480-6", strict=True)
    assert e.value.status == 400 and "$" in e.value.issues[0].diagnostics


def test_combo_parameters_search_both_the_observation_and_its_components(store: Store) -> None:
    load(
        store,
        bp("bp", 150, 80),
        obs("glucose", code=coded(LOINC, "2339-0"), valueQuantity={"value": 150, "system": UCUM, "code": "mg/dL"}),
    )
    assert idset(store, "Observation", "combo-code=8480-6") == {"bp"}
    assert idset(store, "Observation", "combo-code=85354-9,2339-0") == {"bp", "glucose"}
    assert idset(store, "Observation", "combo-value-quantity=150") == {"bp", "glucose"}
    assert idset(store, "Observation", "combo-code-value-quantity=2339-0$150") == {"glucose"}
    assert idset(store, "Observation", "combo-code-value-quantity=8480-6$ge150") == {"bp"}
    assert idset(store, "Observation", "combo-code:missing=true") == set()
    assert idset(store, "Observation", "combo-value-quantity:missing=true") == set()
