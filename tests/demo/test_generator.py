"""The synthetic region generator, without a database: determinism, validity, identifiers, distributions."""

from __future__ import annotations

from collections import Counter
from datetime import date, datetime
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest

from nara.demo.clinical import DEMO, DEMO_USER, PREVALENCE, Item
from nara.demo.generate import Options, region_records
from nara.demo.organisation import RegionDirectory, build_directory
from nara.demo.personnummer import PersonnummerPool
from nara.demo.population import Person, make_people
from nara.demo.regions import AGE_BANDS, MALE_SHARE, OREBRO, SKANE
from nara.fhir.identifiers import PERSONNUMMER, parse_personal_identity
from nara.fhir.validation import validate
from tests.conftest import shared_data_dir

AS_OF = date(2026, 11, 22)
NO_FILE = Path("/nonexistent/testpersonnummer.txt")


def numbers_file() -> Path | None:
    path = shared_data_dir() / "testpersonnummer.txt"
    return path if path.exists() else None


@cache
def region(
    patients: int, seed: int = 1, use_file: bool = True
) -> tuple[RegionDirectory, list[tuple[Person, list[Item]]]]:
    path = numbers_file() if use_file else NO_FILE
    directory, people = region_records(Options(patients=patients, seed=seed, as_of=AS_OF, personnummer_file=path))
    return directory, list(people)


def all_resources(patients: int, seed: int = 1) -> list[dict[str, Any]]:
    directory, people = region(patients, seed)
    return directory.resources + [res for _, items in people for res, _ in items]


def fingerprint(resources: list[dict[str, Any]]) -> list[bytes]:
    return [orjson.dumps(r, option=orjson.OPT_SORT_KEYS) for r in resources]


def test_same_seed_gives_the_same_region() -> None:
    first = fingerprint(all_resources(400, seed=7))
    region.cache_clear()
    again = fingerprint(all_resources(400, seed=7))
    assert first == again
    assert len(first) > 4000


def test_another_seed_gives_other_people() -> None:
    a = {r["identifier"][0]["value"] for r in all_resources(400, seed=7) if r["resourceType"] == "Patient"}
    b = {r["identifier"][0]["value"] for r in all_resources(400, seed=8) if r["resourceType"] == "Patient"}
    assert len(a & b) < len(a) / 2


def test_every_generated_resource_is_valid_r4() -> None:
    resources = all_resources(600)
    problems = [(r["resourceType"], r["id"], validate(r)[:2]) for r in resources if validate(r)]
    assert problems == []
    types = Counter(r["resourceType"] for r in resources)
    for rtype in ("Organization", "Practitioner", "PractitionerRole", "Location", "HealthcareService", "Patient",
                  "EpisodeOfCare", "Encounter", "Condition", "MedicationRequest", "Observation", "CarePlan",
                  "Consent", "RelatedPerson"):  # fmt: skip
        assert types[rtype] > 0, rtype


def test_r_id_1_every_personnummer_passes_the_luhn_check_and_is_unique() -> None:
    values = []
    for r in all_resources(600):
        for ident in r.get("identifier", []):
            if ident.get("system") == PERSONNUMMER:
                assert parse_personal_identity(ident["value"]).value == ident["value"]
                if r["resourceType"] == "Patient":
                    values.append(ident["value"])
    assert len(values) == 600
    assert len(set(values)) == len(values)


def test_personnummer_come_from_skatteverkets_test_numbers_when_the_file_is_there() -> None:
    path = numbers_file()
    if path is None:
        pytest.skip("testpersonnummer.txt not present")
    official = set(path.read_text().split())
    _, people = region(600)
    from_file = [p for p, _ in people if p.from_test_file]
    assert len(from_file) > 0.85 * len(people)
    assert all(p.personnummer in official for p in from_file)
    tagged = [
        items[0][0]
        for p, items in people
        if any(t["code"] == "generated-personnummer" for t in items[0][0]["meta"]["tag"])
    ]
    assert len(tagged) == len(people) - len(from_file)
    assert all(t["identifier"][0]["value"] not in official for t in tagged)


def test_without_the_file_every_patient_is_tagged_as_having_a_generated_number() -> None:
    _, people = region(200, use_file=False)
    for person, items in people:
        patient = items[0][0]
        assert not person.from_test_file
        assert {"system": DEMO, "code": "generated-personnummer"}.items() <= patient["meta"]["tag"][1].items()


def test_large_population_falls_back_to_generated_numbers_for_the_rest() -> None:
    path = numbers_file()
    if path is None:
        pytest.skip("testpersonnummer.txt not present")
    pool = PersonnummerPool(1, path)
    d = build_directory(SKANE, 1)
    people = [p for batch in make_people(SKANE, d, 60_000, 1, AS_OF, pool) for p in batch]
    assert pool.from_file > 20_000
    assert pool.generated > 5_000
    assert pool.from_file + pool.generated == len(people) == 60_000
    assert len({p.personnummer for p in people}) == 60_000


@pytest.fixture(scope="module")
def population() -> list[Person]:
    pool = PersonnummerPool(3, numbers_file())
    d = build_directory(OREBRO, 3)
    return [p for batch in make_people(OREBRO, d, 30_000, 3, AS_OF, pool) for p in batch]


def share(people: list[Person], pred: Any) -> float:
    return sum(1 for p in people if pred(p)) / len(people)


def test_age_structure_follows_the_swedish_pyramid_within_1_5_points(population: list[Person]) -> None:
    total = sum(AGE_BANDS)
    for lo, hi in ((0, 17), (18, 64), (65, 79), (80, 120)):
        # Each five-year band spreads evenly over its years.
        years = [AGE_BANDS[age // 5] / 5 for age in range(lo, min(hi, 104) + 1)]
        expected = sum(years) / total
        observed = sum(1 for p in population if lo <= p.age_on(AS_OF) <= hi) / len(population)
        assert abs(observed - expected) < 0.015, (lo, hi, observed, expected)


def test_sex_structure_within_1_5_points_and_women_dominate_the_oldest(population: list[Person]) -> None:
    total = sum(AGE_BANDS)
    expected_male = sum(AGE_BANDS[b] * MALE_SHARE[b] for b in range(len(AGE_BANDS))) / total
    assert abs(share(population, lambda p: p.sex == "male") - expected_male) < 0.015
    oldest = [p for p in population if p.age_on(AS_OF) >= 85]
    assert share(oldest, lambda p: p.sex == "female") > 0.55
    for p in population[:2000]:
        assert parse_personal_identity(p.personnummer).sex == p.sex


def test_people_live_in_municipalities_in_proportion_to_the_real_populations(population: list[Person]) -> None:
    counts = Counter(p.municipality for p in population)
    for m in OREBRO.municipalities:
        expected = m.population / OREBRO.population
        assert abs(counts[m.code] / len(population) - expected) < 0.002, m.name
        town = {p.town for p in population if p.municipality == m.code}
        assert town == {m.town}


def test_children_have_guardians_and_a_few_people_have_protected_identity(population: list[Person]) -> None:
    children = [p for p in population if p.age_on(AS_OF) < 18]
    assert share(children, lambda p: bool(p.guardians)) > 0.95
    for child in children[:500]:
        for g in child.guardians:
            assert parse_personal_identity(g.personnummer).birth_date.year <= child.birth.year - 19
    protected = share(population, lambda p: p.protected is not None)
    assert 0.0005 < protected < 0.006


def conditions_by_age(people: list[tuple[Person, list[Item]]]) -> dict[str, list[tuple[int, bool]]]:
    out: dict[str, list[tuple[int, bool]]] = {}
    for person, items in people:
        age = person.age_on(AS_OF)
        codes = {
            c["code"]
            for res, _ in items
            if res["resourceType"] == "Condition"
            for c in res["code"]["coding"]
            if c["system"] == "urn:oid:1.2.752.116.1.1.1.1.3"
        }
        for key, icd in (("hypertension", "I10"), ("diabetes", "E11.9"), ("heart_failure", "I50.9"),
                         ("copd", "J44.9"), ("dementia", "F03.9")):  # fmt: skip
            out.setdefault(key, []).append((age, icd in codes))
    return out


def test_chronic_conditions_at_their_stated_prevalence_within_tolerance() -> None:
    _, people = region(6000)
    by = conditions_by_age(people)
    table = dict(PREVALENCE)
    older = [(a, has) for a, has in by["hypertension"] if a >= 75]
    expected = dict(table["hypertension"])[75]  # 75-84 band; 85+ is higher
    observed = sum(h for _, h in older) / len(older)
    assert expected - 0.06 < observed < expected + 0.12
    young = [has for a, has in by["dementia"] if a < 65]
    assert sum(young) / len(young) < 0.01
    hf = by["heart_failure"]
    old_hf = sum(h for a, h in hf if a >= 85) / max(1, sum(1 for a, _ in hf if a >= 85))
    mid_hf = sum(h for a, h in hf if 55 <= a < 65) / max(1, sum(1 for a, _ in hf if 55 <= a < 65))
    assert old_hf > 5 * mid_hf
    diabetes_adults = [h for a, h in by["diabetes"] if a >= 18]
    assert 0.03 < sum(diabetes_adults) / len(diabetes_adults) < 0.10


def test_municipal_home_care_goes_mostly_to_the_oldest() -> None:
    _, people = region(6000)
    ages = []
    for person, items in people:
        for res, owner in items:
            if res["resourceType"] == "EpisodeOfCare" and res["type"][0]["coding"][0]["code"] == "hemtjanst":
                ages.append(person.age_on(AS_OF))
                assert owner[0] is not None and owner[0].endswith("-OG")  # owned by the omsorgsgivare
    assert ages and min(ages) >= 65
    assert sum(1 for a in ages if a >= 80) / len(ages) > 0.6


def series(items: list[Item], code: str) -> list[tuple[datetime, dict[str, Any]]]:
    out = [
        (datetime.fromisoformat(r["effectiveDateTime"]), r)
        for r, _ in items
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == code
    ]
    return sorted(out, key=lambda x: x[0])


def test_home_monitoring_series_follow_physiology_and_the_demo_citizen_deteriorates() -> None:
    _, people = region(3000)
    citizen = next(items for p, items in people if p.scenario.get("demo_user") == "citizen")
    weights = series(citizen, "29463-7")
    assert len(weights) == OREBRO.monitoring_days
    values = [r["valueQuantity"]["value"] for _, r in weights]
    assert all(35 < v < 160 for v in values)
    # R-MON-2 made visible: the latest weight is > 2 kg above the lowest of the preceding 72 h.
    last_time = weights[-1][0]
    window = [r["valueQuantity"]["value"] for t, r in weights[:-1] if (last_time - t).total_seconds() <= 72 * 3600]
    assert values[-1] - min(window) > 2.0
    early = values[: len(values) // 2]
    assert max(early) - min(early) < 4.0  # stable before the deterioration
    for _, r in series(citizen, "85354-9"):
        sbp, dbp = (c["valueQuantity"]["value"] for c in r["component"])
        assert 80 < sbp < 230 and 40 < dbp < sbp
    for _, r in series(citizen, "59408-5"):
        assert 80 <= r["valueQuantity"]["value"] <= 100
    monitored = [p for p, items in people if series(items, "8867-4")]
    assert 5 < len(monitored) < 300


def test_demo_scenario_people_and_tags() -> None:
    directory, people = region(3000)
    tagged = [
        res
        for _, items in people
        for res, _ in items
        if any(t.get("code") == "demo-login" for t in res.get("meta", {}).get("tag", []))
    ]
    kinds = {next(t["code"] for t in r["meta"]["tag"] if t["system"] == DEMO_USER): r["resourceType"] for r in tagged}
    assert kinds == {"citizen": "Patient", "guardian": "RelatedPerson"}
    staff = [r for r in directory.resources if r["resourceType"] == "PractitionerRole" and "meta" in r]
    assert len(staff) == 6
    blocks = [
        res
        for _, items in people
        for res, _ in items
        if res["resourceType"] == "Consent" and res["category"][0]["coding"][0]["code"] == "block"
    ]
    assert blocks
    child = next(p for p, _ in people if p.scenario.get("guardian_login"))
    assert child.age_on(AS_OF) < 13
