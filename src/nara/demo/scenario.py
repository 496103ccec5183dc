"""The demo logins and the care relationships, consents and blocks that make the access rules visible.

In the region's largest municipality the generator picks (deterministically) a citizen with several chronic
conditions who is listed at the demo health centre, enrolled in home monitoring (with a deterioration), in
municipal home health care (with consent for SVOD access) and home care, with an open needs assessment and a
recent stay on the demo ward; a child under 13 whose guardian logs in; an inpatient on the demo ward with an
inner block on the health centre's data (medication exempted); and an inpatient with protected identity.
Staff logins are the first district nurse, municipal nurse, ward physician and social-care officer of those
units, and the region's auditor and administrator. Their resources carry the ``demo-login`` tag.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from nara.demo.clinical import DEMO_LOGIN_TAG, DEMO_USER, coding
from nara.demo.organisation import RegionDirectory
from nara.demo.population import Person

# Demo user code -> what the person can do (shown on the landing and login pages), in display order.
DEMO_USERS: dict[str, str] = {
    "citizen": "Invånare: sees their own record, home measurements and who has read it (log extract)",
    "guardian": "Vårdnadshavare (guardian) of a child under 13: acts for the child",
    "district-nurse": "Distriktssköterska at a health centre: the patients listed there",
    "municipal-nurse": "Sjuksköterska in municipal home health care: enrolled patients, and with their consent "
    "other providers' data (SVOD)",
    "hospital-physician": "Läkare on a hospital ward: current and recent inpatients; one has blocked the health "
    "centre's notes (medication exempted), one has protected identity",
    "social-care-officer": "Biståndshandläggare: needs assessments for home care",
    "auditor": "Logggranskare (auditor): reviews the access log",
    "administrator": "Administratör: manages the directory of units, staff and assignments",
}
STAFF_LOGINS = {
    "district-nurse": ("health_centre", "distriktsskoterska"),
    "municipal-nurse": ("home_health_care", "sjukskoterska"),
    "hospital-physician": ("ward", "lakare"),
    "social-care-officer": ("needs_assessment", "biståndshandläggare"),
    "auditor": ("admin", "auditor"),
    "administrator": ("admin", "admin"),
}


@dataclass(frozen=True)
class DemoUnits:
    municipality: str
    health_centre: str
    ward: str
    home_health_care: str
    needs_assessment: str
    admin: str


def demo_units(d: RegionDirectory) -> DemoUnits:
    biggest = max(d.config.municipalities, key=lambda m: m.population).code
    region_centres = [u for u in d.health_centres[biggest] if d.units[u].provider == d.region]
    first_hospital = next(iter(d.wards_by_hospital))
    wards = d.wards_by_hospital[first_hospital]
    ward = next((w for w in wards if d.units[w].name.startswith("Kardiolog")), wards[0])
    return DemoUnits(
        biggest,
        region_centres[0],
        ward,
        d.municipal_units[(biggest, "hemsjukvard")],
        d.municipal_units[(biggest, "bistand")],
        d.admin_unit,
    )


def tag_staff(d: RegionDirectory) -> None:
    """Tag the assignments used as staff demo logins (before the directory is written)."""
    units = demo_units(d)
    wanted = {}
    for code, (attr, role) in STAFF_LOGINS.items():
        wanted[d.first(getattr(units, attr), role).assignment] = code
    for res in d.resources:
        if res["resourceType"] == "PractitionerRole" and res["id"] in wanted:
            res["meta"] = {"tag": [DEMO_LOGIN_TAG, coding(DEMO_USER, wanted[res["id"]])]}


def apply(people: list[Person], d: RegionDirectory, as_of: date) -> None:
    """Choose the demo citizen, child, blocked and protected patients among ``people`` (the largest municipality)."""
    units = demo_units(d)
    taken: set[str] = set()

    def pick(lo: int, hi: int, *, file_only: bool = True, adult_only: bool = True) -> Person:
        for strict in (True, False):
            for p in people:
                if p.id in taken or not lo <= p.age_on(as_of) <= hi or p.protected:
                    continue
                if strict and file_only and not p.from_test_file:
                    continue
                if adult_only and p.guardians:
                    continue
                taken.add(p.id)
                return p
        raise RuntimeError(f"The population is too small for a demo person aged {lo}-{hi}")

    citizen = pick(72, 88)
    citizen.health_centre = units.health_centre
    citizen.scenario = {
        "demo_user": "citizen",
        "conditions": ["hypertension", "heart_failure", "diabetes"],
        "monitoring": True,
        "deteriorate": True,
        "hhc": True,
        "consent_hhc": True,
        "home_care": True,
        "bistand": True,
        "stay": "recent",
        "ward": units.ward,
    }
    child = next(
        (p for p in people if 3 <= p.age_on(as_of) <= 11 and p.guardians and not p.protected and p.id not in taken),
        None,
    )
    if child is None:
        raise RuntimeError("The population is too small for a demo child with a guardian")
    taken.add(child.id)
    child.health_centre = units.health_centre
    child.scenario = {"guardian_login": child.guardians[0].personnummer}
    blocked = pick(60, 90, file_only=False)
    blocked.health_centre = units.health_centre
    blocked.scenario = {
        "conditions": ["heart_failure"],
        "stay": "current",
        "ward": units.ward,
        "block": units.health_centre,
        "block_exempt": ["lakemedel"],
    }
    protected = pick(50, 90, file_only=False)
    protected.protected = "sekretessmarkering"
    protected.scenario = {"stay": "current", "ward": units.ward}
