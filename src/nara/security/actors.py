"""Who is asking: citizens, staff acting through one assignment, proxies and system clients."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache

from nara.security.scopes import Scopes

PURPOSE_CARE = "Vård och behandling"
PURPOSE_QUALITY = "Kvalitetssäkring"
PURPOSE_ADMIN = "Administration"


@dataclass(frozen=True)
class Assignment:
    """A medarbetaruppdrag: the PDL context of a staff session (user, assignment, unit, provider)."""

    id: str  # assignment HSA-id (PractitionerRole identifier)
    role_id: str  # PractitionerRole logical id
    unit: str  # unit Organization id (= unit HSA-id)
    unit_name: str
    provider: str  # care provider / care giver Organization id (= HSA-id)
    provider_name: str
    provider_kind: str  # vardgivare | omsorgsgivare
    purpose: str
    rights: tuple[str, ...]
    roles: tuple[str, ...] = ()  # staff-role codes (lakare, sjukskoterska, auditor, admin, ...)

    def has_right(self, activity: str, scope: str) -> bool:
        """True when a right `Aktivitet;Informationstyp;Omfång` grants the activity at that scope or wider."""
        widest = _widest_scopes(self.rights).get(activity.lower(), -1)
        return widest >= _SCOPE_ORDER.get(scope.upper(), 9)


_SCOPE_ORDER = {"VE": 0, "VG": 1, "SJF": 2}  # care unit, care provider, coordinated documentation (SVOD)


@lru_cache(maxsize=4096)
def _widest_scopes(rights: tuple[str, ...]) -> dict[str, int]:
    """The widest scope each activity is granted at by ``rights`` (parsed once per distinct set: the policy asks
    on every request); malformed rights grant nothing."""
    widest: dict[str, int] = {}
    for r in rights:
        parts = [p.strip() for p in r.split(";")]
        if len(parts) != 3:
            continue
        act, _info, omf = parts
        rank = _SCOPE_ORDER.get(omf.upper(), -1)
        widest[act.lower()] = max(rank, widest.get(act.lower(), -1))
    return widest


@dataclass(frozen=True)
class Actor:
    kind: str  # citizen | staff | proxy | system
    subject: str  # personnummer, staff HSA-id or client id
    name: str = ""
    scopes: Scopes = field(default_factory=Scopes.everything)
    # citizen: own Patient id; proxy: the represented Patient id
    patient: str | None = None
    practitioner: str | None = None  # staff: Practitioner id
    assignment: Assignment | None = None
    proxy_basis: str | None = None  # guardian | representative
    client_id: str | None = None
    policy_off: bool = False  # system superuser (benchmarks, migrations): policy off, still audited
    # The user's explicit choice to see other units of the same provider (R-ACC-2, "aktivt val").
    other_units_chosen: bool = False
    child_birth_date: date | None = None

    @property
    def is_staff(self) -> bool:
        return self.kind == "staff" and self.assignment is not None

    def can_review_logs(self) -> bool:
        a = self.assignment
        return bool(a and ("auditor" in a.roles or a.purpose.lower().startswith("logg")))

    def is_admin(self) -> bool:
        return bool(self.assignment and "admin" in self.assignment.roles)


SYSTEM = Actor(kind="system", subject="nara-internal", name="Nära internal", policy_off=True)
