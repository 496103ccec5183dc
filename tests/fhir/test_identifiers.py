"""Swedish identifiers: personnummer / samordningsnummer (R-ID-1), HSA-id systems (R-ID-2), org numbers."""

from __future__ import annotations

from datetime import date

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nara.fhir.identifiers import (
    HSA_ID,
    HSA_ID_RIV,
    ORGANISATION_NUMBER,
    PERSONNUMMER,
    SAMORDNINGSNUMMER,
    InvalidIdentifier,
    luhn_check_digit,
    make_organisation_number,
    make_personal_identity,
    normalize_hsa_id,
    normalize_identifier,
    normalize_organisation_number,
    parse_personal_identity,
)
from tests.conftest import shared_data_dir


@pytest.mark.parametrize("value", ["191212121212", "195009072553"])
def test_r_id_1_known_personnummer_pass_the_luhn_check(value: str) -> None:
    pid = parse_personal_identity(value)
    assert pid.value == value
    assert pid.kind == "personnummer"
    assert pid.system == PERSONNUMMER


@pytest.mark.parametrize(("value", "born"), [("197010632391", date(1970, 10, 3)), ("196109732393", date(1961, 9, 13))])
def test_r_id_1_samordningsnummer_has_day_plus_60(value: str, born: date) -> None:
    pid = parse_personal_identity(value)
    assert pid.kind == "samordningsnummer"
    assert pid.system == SAMORDNINGSNUMMER
    assert pid.birth_date == born


@pytest.mark.parametrize("value", ["191212121213", "195009072554", "197010632392"])
def test_r_id_1_wrong_check_digit_is_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentifier, match="Luhn"):
        parse_personal_identity(value)


@pytest.mark.parametrize(
    "value",
    ["", "abc", "1912121212121", "19121212-12121", "191302301214", "19120230", "191212321211"],
)
def test_r_id_1_malformed_values_are_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentifier):
        parse_personal_identity(value)


def test_r_id_1_impossible_date_is_rejected_even_with_a_valid_check_digit() -> None:
    nine = "190230123"  # 30 February
    value = "19" + nine + str(luhn_check_digit(nine))
    with pytest.raises(InvalidIdentifier, match="date of birth"):
        parse_personal_identity(value)


def test_r_id_1_separated_and_ten_digit_forms_normalise_to_twelve_digits() -> None:
    assert parse_personal_identity("19121212-1212").value == "191212121212"
    assert parse_personal_identity("121212+1212", today=date(2026, 1, 1)).value == "191212121212"
    assert parse_personal_identity("121212-1212", today=date(2026, 1, 1)).value == "201212121212"
    assert parse_personal_identity("5009072553", today=date(2026, 1, 1)).value == "195009072553"


def test_r_id_1_a_ten_digit_form_never_names_a_birth_date_after_today() -> None:
    """The century of ``YYMMDD-NNNC`` is the one that makes the person born on or before today (under 100):
    a date later in the current year is a hundred years ago, not in the coming weeks."""
    today = date(2026, 12, 7)
    assert parse_personal_identity("261231-2344", today=today).value == "192612312344"
    assert parse_personal_identity("261208-3457", today=today).value == "192612083457"
    assert parse_personal_identity("261207-1239", today=today).value == "202612071239"  # born today
    assert parse_personal_identity("261231+2344", today=today).value == "182612312344"


def test_r_id_1_legal_sex_follows_the_third_birth_number_digit() -> None:
    assert parse_personal_identity("191212121212").sex == "male"  # 121: 1 is odd
    female = make_personal_identity(date(1980, 5, 17), 246)
    assert parse_personal_identity(female).sex == "female"


def test_age_on_counts_completed_years() -> None:
    pid = parse_personal_identity(make_personal_identity(date(2013, 6, 15), 101))
    assert pid.age_on(date(2026, 6, 14)) == 12
    assert pid.age_on(date(2026, 6, 15)) == 13


@given(
    born=st.dates(min_value=date(1890, 1, 1), max_value=date(2025, 12, 31)),
    serial=st.integers(0, 999),
    samordning=st.booleans(),
)
def test_r_id_1_generated_numbers_round_trip(born: date, serial: int, samordning: bool) -> None:
    value = make_personal_identity(born, serial, samordning=samordning)
    pid = parse_personal_identity(value)
    assert pid.value == value
    assert pid.birth_date == born
    assert pid.kind == ("samordningsnummer" if samordning else "personnummer")
    assert pid.sex == ("male" if serial % 2 == 1 else "female")


@given(
    born=st.dates(min_value=date(1900, 1, 1), max_value=date(2025, 12, 31)),
    serial=st.integers(0, 999),
    pos=st.integers(2, 11),
    delta=st.integers(1, 9),
)
def test_r_id_1_any_single_digit_change_breaks_the_check(born: date, serial: int, pos: int, delta: int) -> None:
    value = make_personal_identity(born, serial)
    changed = value[:pos] + str((int(value[pos]) + delta) % 10) + value[pos + 1 :]
    with pytest.raises(InvalidIdentifier):
        parse_personal_identity(changed)


def test_r_id_1_every_skatteverket_test_number_passes() -> None:
    path = shared_data_dir() / "testpersonnummer.txt"
    if not path.exists():
        pytest.skip(f"{path} not present")
    values = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    assert len(values) > 40_000
    assert all(parse_personal_identity(v).value == v for v in values)


def test_r_id_2_hsa_id_under_the_riv_oid_is_normalised() -> None:
    out = normalize_identifier({"system": HSA_ID_RIV, "value": " se2321000016-4hk5 "})
    assert out == {"system": HSA_ID, "value": "SE2321000016-4HK5"}
    bare = normalize_identifier({"system": "1.2.752.129.2.1.4.1", "value": "SE2321000016-4HK5"})
    assert bare["system"] == HSA_ID


def test_r_id_2_riv_person_oids_map_to_the_hl7_sweden_uris() -> None:
    out = normalize_identifier({"system": "urn:oid:1.2.752.129.2.1.3.1", "value": "19121212-1212", "use": "official"})
    assert out == {"system": PERSONNUMMER, "value": "191212121212", "use": "official"}
    sam = normalize_identifier({"system": "1.2.752.129.2.1.3.3", "value": "197010632391"})
    assert sam["system"] == SAMORDNINGSNUMMER


def test_r_id_2_a_personnummer_under_the_samordningsnummer_system_is_rejected() -> None:
    with pytest.raises(InvalidIdentifier, match="personnummer"):
        normalize_identifier({"system": SAMORDNINGSNUMMER, "value": "191212121212"})


@pytest.mark.parametrize(
    "value", ["SE2321000016", "2321000016-4HK5", "SE2321000016-", "SE232100001-ABC", "SE2321000016-ÅÄ"]
)
def test_malformed_hsa_ids_are_rejected(value: str) -> None:
    with pytest.raises(InvalidIdentifier, match="HSA-id"):
        normalize_hsa_id(value)


def test_other_identifier_systems_pass_unchanged() -> None:
    ident = {"system": "http://example.org/mrn", "value": "abc"}
    assert normalize_identifier(ident) == ident


def test_organisation_numbers_carry_a_luhn_check_digit() -> None:
    made = make_organisation_number("232100016")
    assert normalize_organisation_number(made.replace("-", "")) == made
    assert normalize_identifier({"system": ORGANISATION_NUMBER, "value": made})["value"] == made
    broken = made[:-1] + str((int(made[-1]) + 1) % 10)
    with pytest.raises(InvalidIdentifier, match="Luhn"):
        normalize_organisation_number(broken)
