"""The synthetic region's directory: providers, units, staff, assignments, locations and services.

Built deterministically from a :class:`~nara.demo.regions.RegionConfig` and a seed with the builders of
:mod:`nara.directory.resources`, then written through the validated admin operations of
:mod:`nara.directory.admin`. The directory is real-sized (one health centre per ~10 000 inhabitants of the
real municipality), whatever the population scale.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from nara.demo.names import FEMALE, MALE, STREETS, SURNAMES
from nara.demo.regions import Municipality, RegionConfig
from nara.directory import codes
from nara.directory import resources as build
from nara.directory.resources import Address, OpeningHours
from nara.fhir.identifiers import make_organisation_number

OFFICE_HOURS = OpeningHours()
ALWAYS = OpeningHours(days=("mon", "tue", "wed", "thu", "fri", "sat", "sun"), all_day=True)
ASSIGNMENTS_START = date(2020, 1, 1)
GENERIC_DISTRICTS = ("Centrum", "Norr", "Söder", "Väster", "Öster", "Norra", "Södra", "Östra", "Västra")

CARE_READ = ["Läsa;alla;VG", "Läsa;alla;SJF", "Skriva;alla;VE"]
UNIT_ONLY = ["Läsa;alla;VE", "Skriva;alla;VE"]
# Staff per unit kind: (role, count, rights)
STAFFING: dict[str, list[tuple[str, int, list[str]]]] = {
    "vardcentral": [("lakare", 2, CARE_READ), ("distriktsskoterska", 2, CARE_READ), ("sjukskoterska", 1, CARE_READ),
                    ("underskoterska", 1, UNIT_ONLY)],
    "vardavdelning": [("lakare", 2, CARE_READ), ("sjukskoterska", 3, CARE_READ), ("underskoterska", 2, UNIT_ONLY)],
    "mottagning": [("lakare", 1, CARE_READ), ("sjukskoterska", 1, CARE_READ)],
    "hemsjukvard": [("sjukskoterska", 3, CARE_READ), ("underskoterska", 1, UNIT_ONLY)],
    "hemtjanst": [("underskoterska", 4, UNIT_ONLY)],
    "lss": [("underskoterska", 2, UNIT_ONLY)],
    "bistand": [("biståndshandläggare", 2, UNIT_ONLY)],
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Unit:
    hsa: str
    name: str
    kind: str
    provider: str  # HSA-id of the care provider / care giver
    municipality: str  # kommunkod
    address: Address


@dataclass(frozen=True, slots=True)
class Staff:
    practitioner: str  # HSA-id
    assignment: str  # HSA-id
    name: str
    role: str
    unit: str  # HSA-id


@dataclass
class RegionDirectory:
    """What the generator knows about the directory it built (the resources and the lookups people need)."""

    config: RegionConfig
    region: str = ""
    private_provider: str = ""
    municipal_hsl: dict[str, str] = field(default_factory=dict)  # kommunkod -> vårdgivare HSA-id
    municipal_sol: dict[str, str] = field(default_factory=dict)  # kommunkod -> omsorgsgivare HSA-id
    units: dict[str, Unit] = field(default_factory=dict)
    health_centres: dict[str, list[str]] = field(default_factory=dict)  # kommunkod -> unit HSA-ids
    municipal_units: dict[tuple[str, str], str] = field(default_factory=dict)  # (kommunkod, kind) -> unit
    wards: list[str] = field(default_factory=list)
    wards_by_hospital: dict[str, list[str]] = field(default_factory=dict)  # hospital unit -> ward units
    hospital_of: dict[str, str] = field(default_factory=dict)  # kommunkod -> nearest hospital unit
    heart_failure_clinic: str = ""
    admin_unit: str = ""
    staff: dict[str, list[Staff]] = field(default_factory=dict)  # unit HSA-id -> staff
    resources: list[dict[str, Any]] = field(default_factory=list)  # in dependency order

    def owner(self, unit: str) -> tuple[str, str]:
        return self.units[unit].provider, unit

    def first(self, unit: str, role: str) -> Staff:
        return next(s for s in self.staff[unit] if s.role == role)

    def of_role(self, unit: str, role: str) -> list[Staff]:
        return [s for s in self.staff[unit] if s.role == role]


class _Numbers:
    """Sequential HSA-id local parts per organisation number (deterministic)."""

    def __init__(self) -> None:
        self.counters: dict[tuple[str, str], int] = {}

    def next(self, org_digits: str, prefix: str) -> str:
        key = (org_digits, prefix)
        self.counters[key] = self.counters.get(key, 0) + 1
        width = 4 if prefix == "E" else 5
        return f"SE{org_digits}-{prefix}{self.counters[key]:0{width}d}"


def _digits(org_number: str) -> str:
    return org_number.replace("-", "")


def _phone(rng: random.Random, area: str = "019") -> str:
    return f"{area}-{rng.randrange(100000, 999999)}"


def _street(rng: random.Random, muni: Municipality) -> Address:
    line = f"{rng.choice(STREETS)} {rng.randrange(1, 60)}"
    postal = f"{muni.postal_prefix} {rng.randrange(10, 99):02d}"
    return Address(line, postal, muni.town, muni.name, None)


def build_directory(config: RegionConfig, seed: int) -> RegionDirectory:
    """The whole directory of the synthetic region, deterministic for (config, seed)."""
    rng = random.Random(f"{seed}/directory/{config.key}")  # noqa: S311 (synthetic data)
    d = RegionDirectory(config)
    ids = _Numbers()
    out = d.resources
    munis = {m.code: m for m in config.municipalities}
    biggest = max(config.municipalities, key=lambda m: m.population)

    def address(muni: Municipality) -> Address:
        a = _street(rng, muni)
        return Address(a.line, a.postal_code, a.city, a.municipality, config.county)

    def add_unit(org_digits: str, name: str, parent: str, kind: str, provider: str, muni: Municipality) -> Unit:
        hsa = ids.next(org_digits, "E")
        addr = address(muni)
        unit = Unit(hsa, name, kind, provider, muni.code, addr)
        d.units[hsa] = unit
        out.append(build.unit(hsa, name, parent, kind, address=addr, phone=_phone(rng)))
        return unit

    # Care providers and care givers.
    region_nr = make_organisation_number(f"2321009{config.county_code}")
    region_digits = _digits(region_nr)
    d.region = f"SE{region_digits}-VG"
    seat = biggest
    out.append(
        build.care_provider(
            d.region, config.name, region_nr, codes.CARE_PROVIDER, address=address(seat), phone=_phone(rng)
        )
    )
    private_nr = make_organisation_number(f"55999{config.county_code}00")
    private_digits = _digits(private_nr)
    d.private_provider = f"SE{private_digits}-VG"
    out.append(build.care_provider(d.private_provider, config.private_provider, private_nr, codes.CARE_PROVIDER))
    muni_digits: dict[str, str] = {}
    for m in config.municipalities:
        nr = make_organisation_number(f"2120009{m.code[2:]}")
        digits = _digits(nr)
        muni_digits[m.code] = digits
        d.municipal_hsl[m.code] = f"SE{digits}-VG"
        d.municipal_sol[m.code] = f"SE{digits}-OG"
        out.append(
            build.care_provider(
                d.municipal_hsl[m.code],
                f"{m.municipality_name} (hälso- och sjukvård)",
                nr,
                codes.CARE_PROVIDER,
                municipality_code=m.code,
            )
        )
        out.append(
            build.care_provider(
                d.municipal_sol[m.code],
                f"{m.municipality_name} (vård och omsorg)",
                nr,
                codes.CARE_GIVER,
                municipality_code=m.code,
            )
        )

    # Region: administration, hospitals and wards, a heart-failure clinic, health centres.
    admin_unit = add_unit(region_digits, f"{config.name}, regionkansliet", d.region, "forvaltning", d.region, seat)
    d.admin_unit = admin_unit.hsa
    for h in config.hospitals:
        muni = munis[h.municipality]
        hospital = add_unit(region_digits, h.name, d.region, "sjukhus", d.region, muni)
        d.wards_by_hospital[hospital.hsa] = []
        for ward_name in h.wards:
            ward = add_unit(region_digits, f"{ward_name}, {h.name}", hospital.hsa, "vardavdelning", d.region, muni)
            d.wards.append(ward.hsa)
            d.wards_by_hospital[hospital.hsa].append(ward.hsa)
        if not d.heart_failure_clinic:
            clinic = add_unit(
                region_digits, f"Hjärtsviktsmottagningen, {h.name}", hospital.hsa, "mottagning", d.region, muni
            )
            d.heart_failure_clinic = clinic.hsa
    hospital_units = list(d.wards_by_hospital)
    hospital_munis = [h.municipality for h in config.hospitals]
    for m in config.municipalities:
        # The municipality's own hospital, else the region's first (largest) one.
        d.hospital_of[m.code] = (
            hospital_units[hospital_munis.index(m.code)] if m.code in hospital_munis else hospital_units[0]
        )
    for m in config.municipalities:
        count = max(1, round(m.population / 10_000))
        districts = list(m.districts) or list(GENERIC_DISTRICTS)
        private = count // 4 if m.code == biggest.code else 0
        d.health_centres[m.code] = []
        for i in range(count):
            district = districts[i % len(districts)] + ("" if i < len(districts) else f" {i // len(districts) + 1}")
            name = f"Vårdcentralen {m.town}" if count == 1 else f"Vårdcentralen {district}"
            if i >= count - private:
                unit = add_unit(private_digits, name.replace("Vårdcentralen", "Hälsocentralen"), d.private_provider,
                                "vardcentral", d.private_provider, m)  # fmt: skip
            else:
                unit = add_unit(region_digits, name, d.region, "vardcentral", d.region, m)
            d.health_centres[m.code].append(unit.hsa)

    # Municipalities: home health care (HSL, vårdgivare); home care, LSS and needs assessment (SoL/LSS, omsorgsgivare).
    for m in config.municipalities:
        digits = muni_digits[m.code]
        hsl, sol = d.municipal_hsl[m.code], d.municipal_sol[m.code]
        for kind, label, provider in (
            ("hemsjukvard", f"Hemsjukvården {m.name}", hsl),
            ("hemtjanst", f"Hemtjänsten {m.name}", sol),
            ("lss", f"LSS-verksamheten {m.name}", sol),
            ("bistand", f"Biståndsenheten {m.name}", sol),
        ):
            unit = add_unit(digits, label, provider, kind, provider, m)
            d.municipal_units[(m.code, kind)] = unit.hsa

    _staff(d, rng, ids)
    _catalogue(d, rng)
    return d


def _staff(d: RegionDirectory, rng: random.Random, ids: _Numbers) -> None:
    practitioners: list[dict[str, Any]] = []
    assignments: list[dict[str, Any]] = []

    def person(org_digits: str) -> tuple[str, str, str, str]:
        sex = rng.choice(("female", "male", "female"))
        gen = rng.choice((1, 2, 2))
        given = rng.choice(FEMALE[gen] if sex == "female" else MALE[gen])
        family = rng.choice(SURNAMES)
        return ids.next(org_digits, "P"), given, family, sex

    def hire(unit: Unit, role: str, rights: list[str], purpose: str = codes.PURPOSE_CARE) -> Staff:
        org_digits = unit.provider[2:12]
        prac, given, family, sex = person(org_digits)
        practitioners.append(build.practitioner(prac, given, family, gender=sex, phone=_phone(rng)))
        assignment = ids.next(org_digits, "M")
        assignments.append(build.assignment(assignment, prac, unit.hsa, role, purpose, rights, ASSIGNMENTS_START))
        staff = Staff(prac, assignment, f"{given} {family}", role, unit.hsa)
        d.staff.setdefault(unit.hsa, []).append(staff)
        return staff

    for unit in list(d.units.values()):
        for role, count, rights in STAFFING.get(unit.kind, []):
            for _ in range(count):
                hire(unit, role, rights)
    admin_unit = d.units[d.admin_unit]
    hire(admin_unit, "auditor", ["Läsa;logg;VG"], codes.PURPOSE_LOG_REVIEW)
    hire(admin_unit, "admin", ["Administrera;katalog;VG"], codes.PURPOSE_ADMINISTRATION)
    d.resources.extend(practitioners)
    d.resources.extend(assignments)


def _catalogue(d: RegionDirectory, rng: random.Random) -> None:
    locations: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []

    def place(unit: Unit, hours: OpeningHours) -> str:
        loc_id = f"{unit.hsa}-L1"
        locations.append(build.location(loc_id, unit.name, unit.hsa, unit.address, hours=hours, phone=_phone(rng)))
        return loc_id

    def offer(unit: Unit, suffix: str, name: str, category: str, types: list[str], channels: list[str],
              hours: OpeningHours, loc: str, comment: str | None = None, appointment: bool = True) -> None:  # fmt: skip
        services.append(
            build.service(
                f"{unit.hsa}-{suffix}",
                name,
                unit.hsa,
                category,
                types,
                locations=[loc],
                channels=channels,
                hours=hours,
                phone=_phone(rng),
                comment=comment,
                appointment_required=appointment,
            )
        )

    for unit in d.units.values():
        if unit.kind == "vardcentral":
            loc = place(unit, OFFICE_HOURS)
            channels = (
                ["besok", "telefon"]
                + (["video"] if rng.random() < 0.6 else [])
                + (["chatt"] if rng.random() < 0.3 else [])
            )
            offer(unit, "S1", unit.name, "primarvard", ["lakarbesok", "sjukskoterskebesok", "vaccination"], channels,
                  OFFICE_HOURS, loc, "Drop-in för vaccination tisdagar och torsdagar.")  # fmt: skip
            if rng.random() < 0.5:
                offer(unit, "S2", f"Diabetesmottagning, {unit.name}", "primarvard", ["diabetesmottagning"],
                      ["besok", "video"], OFFICE_HOURS, loc)  # fmt: skip
            if rng.random() < 0.6:
                offer(unit, "S3", f"Barnavårdscentral, {unit.name}", "primarvard", ["barnavardscentral"],
                      ["besok", "telefon"], OFFICE_HOURS, loc)  # fmt: skip
            if rng.random() < 0.3:
                types = ["egenmonitorering", "kol-mottagning"]
                offer(unit, "S4", f"Egenmonitorering, {unit.name}", "primarvard", types, ["video", "telefon"],
                      OFFICE_HOURS, loc, "Mät blodtryck, vikt och syremättnad hemma.")  # fmt: skip
        elif unit.kind == "vardavdelning":
            loc = place(unit, ALWAYS)
            offer(unit, "S1", unit.name, "slutenvard", ["inneliggande-vard"], ["besok"], ALWAYS, loc, appointment=False)
        elif unit.kind == "mottagning":
            loc = place(unit, OFFICE_HOURS)
            offer(unit, "S1", unit.name, "specialistvard", ["hjartsviktsmottagning", "egenmonitorering"],
                  ["besok", "video", "telefon"], OFFICE_HOURS, loc, "Remiss krävs.")  # fmt: skip
        elif unit.kind == "hemsjukvard":
            loc = place(unit, OFFICE_HOURS)
            offer(unit, "S1", unit.name, "hemsjukvard", ["hemsjukvard"], ["hembesok", "telefon"], ALWAYS, loc)
        elif unit.kind == "hemtjanst":
            loc = place(unit, OFFICE_HOURS)
            offer(unit, "S1", unit.name, "aldreomsorg", ["hemtjanst", "trygghetslarm"], ["hembesok", "telefon"], ALWAYS,
                  loc, "Insatser efter biståndsbeslut.")  # fmt: skip
        elif unit.kind == "lss":
            loc = place(unit, OFFICE_HOURS)
            offer(unit, "S1", unit.name, "funktionsstod", ["daglig-verksamhet", "bostad-lss"], ["besok"], OFFICE_HOURS,
                  loc)  # fmt: skip
        elif unit.kind == "bistand":
            loc = place(unit, OFFICE_HOURS)
            offer(unit, "S1", unit.name, "bistand", ["ansokan-bistand"], ["telefon", "besok", "video"], OFFICE_HOURS,
                  loc)  # fmt: skip
    d.resources.extend(locations)
    d.resources.extend(services)
