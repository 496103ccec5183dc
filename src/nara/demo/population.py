"""The synthetic population: people with an age and sex structure, names, addresses and personnummer.

People are made municipality by municipality from one random stream per municipality (so the same seed
gives the same people), with personnummer from :class:`~nara.demo.personnummer.PersonnummerPool`. Children
under 18 get one or two guardians among the adults of their municipality.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, timedelta

from nara.demo.names import FEMALE, MALE, STREETS, SURNAMES, generation
from nara.demo.organisation import RegionDirectory
from nara.demo.personnummer import PersonnummerPool
from nara.demo.regions import AGE_BANDS, MALE_SHARE, Municipality, RegionConfig
from nara.fhir.identifiers import age_on, parse_personal_identity

PROTECTED_SHARE = 0.002  # sekretessmarkering / skyddad folkbokföring, roughly the national share


@dataclass(frozen=True, slots=True)
class Guardian:
    personnummer: str
    given: str
    family: str
    sex: str
    patient_id: str


@dataclass(slots=True)
class Person:
    id: str
    personnummer: str
    from_test_file: bool
    sex: str
    birth: date
    given: str
    family: str
    municipality: str
    line: str
    postal_code: str
    town: str
    health_centre: str
    protected: str | None = None  # "sekretessmarkering" | "skyddadFolkbokforing"
    phone: str | None = None
    guardians: list[Guardian] = field(default_factory=list)
    # Scenario flags set for the demo logins (see nara.demo.scenario); empty for everyone else.
    scenario: dict[str, object] = field(default_factory=dict)

    def age_on(self, day: date) -> int:
        return age_on(self.birth, day)


def scaled_counts(config: RegionConfig, patients: int) -> dict[str, int]:
    """People per municipality for a population of ``patients``, proportional to the real populations."""
    total = config.population
    counts = {m.code: max(1, round(m.population * patients / total)) for m in config.municipalities}
    # Put the rounding difference on the largest municipality so the total is exact.
    biggest = max(config.municipalities, key=lambda m: m.population).code
    counts[biggest] += patients - sum(counts.values())
    return counts


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _birth(rng: random.Random, as_of: date) -> tuple[date, str]:
    band = rng.choices(range(len(AGE_BANDS)), weights=AGE_BANDS)[0]
    age = band * 5 + rng.randrange(5)
    sex = "male" if rng.random() < MALE_SHARE[band] else "female"
    born = as_of - timedelta(days=age * 365 + age // 4 + rng.randrange(365))
    return born, sex


def make_people(
    config: RegionConfig,
    directory: RegionDirectory,
    patients: int,
    seed: int,
    as_of: date,
    pool: PersonnummerPool,
) -> Iterator[list[Person]]:
    """The people of each municipality in turn (one list per municipality, in the configuration's order)."""
    counts = scaled_counts(config, patients)
    for muni in config.municipalities:
        yield _municipality(muni, counts[muni.code], directory, seed, as_of, pool)


def _municipality(
    muni: Municipality, n: int, directory: RegionDirectory, seed: int, as_of: date, pool: PersonnummerPool
) -> list[Person]:
    rng = random.Random(f"{seed}/people/{muni.code}")  # noqa: S311 (synthetic data)
    centres = directory.health_centres[muni.code]
    people: list[Person] = []
    for _ in range(n):
        wanted, sex = _birth(rng, as_of)
        pnr, from_file = pool.take(wanted, sex, rng)
        born = parse_personal_identity(pnr).birth_date
        names = FEMALE if sex == "female" else MALE
        given = rng.choice(names[generation(born.year)])
        person = Person(
            id=_uuid(rng),
            personnummer=pnr,
            from_test_file=from_file,
            sex=sex,
            birth=born,
            given=given,
            family=rng.choice(SURNAMES),
            municipality=muni.code,
            line=f"{rng.choice(STREETS)} {rng.randrange(1, 80)}",
            postal_code=f"{muni.postal_prefix} {rng.randrange(10, 99):02d}",
            town=muni.town,
            health_centre=rng.choice(centres),
        )
        if rng.random() < PROTECTED_SHARE:
            person.protected = rng.choice(("sekretessmarkering", "skyddadFolkbokforing"))
        if person.age_on(as_of) >= 16 and rng.random() < 0.85:
            person.phone = f"07{rng.randrange(0, 4)}-{rng.randrange(1000000, 9999999)}"
        people.append(person)
    _assign_guardians(people, rng, as_of)
    return people


def _pick(lists: list[list[Person]], rng: random.Random) -> Person | None:
    """A uniform choice among the people of several lists (without joining them)."""
    total = sum(len(lst) for lst in lists)
    if total == 0:
        return None
    i = rng.randrange(total)
    for lst in lists:
        if i < len(lst):
            return lst[i]
        i -= len(lst)
    raise AssertionError("unreachable")


def _assign_guardians(people: list[Person], rng: random.Random, as_of: date) -> None:
    """Every child gets one or two guardians 19-45 years older; the family shares surname and address.

    Candidates are kept per (birth year, sex), so a municipality of any size costs a few list lookups per child.
    """
    by_key: dict[tuple[int, str], list[Person]] = {}
    for a in people:
        if 22 <= a.age_on(as_of) <= 70:
            by_key.setdefault((a.birth.year, a.sex), []).append(a)
    if not by_key:
        return
    for child in people:
        if child.age_on(as_of) >= 18:
            continue
        window = range(child.birth.year - 45, child.birth.year - 19)
        first = _pick([by_key.get((y, s), []) for y in window for s in ("female", "male")], rng)
        if first is None:
            continue
        family = [first]
        if rng.random() < 0.75:
            other_sex = "male" if first.sex == "female" else "female"
            near = range(max(window.start, first.birth.year - 6), min(window.stop, first.birth.year + 7))
            other = _pick([by_key.get((y, other_sex), []) for y in near], rng)
            if other is not None:
                family.append(other)
        child.family = first.family
        child.line, child.postal_code, child.health_centre = first.line, first.postal_code, first.health_centre
        child.protected = first.protected
        child.guardians = [Guardian(g.personnummer, g.given, g.family, g.sex, g.id) for g in family]
