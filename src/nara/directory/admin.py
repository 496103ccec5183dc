"""Admin operations on the directory: add, change and end organisations, units, staff, assignments, services.

Every operation runs inside the caller's transaction (:meth:`nara.store.store.Store.transaction`), checks the
resource against the contract in docs/security.md §2 and against what the store already holds (an assignment
must point at an active unit, a unit at an active parent, ...), and writes through :class:`~nara.store.crud.Tx`.
A rejected change raises :class:`~nara.fhir.outcome.FhirError` with the element at fault in ``expression``.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from nara.directory import codes
from nara.directory.resources import Address
from nara.fhir.identifiers import (
    HSA_ID,
    ORGANISATION_NUMBER,
    InvalidIdentifier,
    normalize_hsa_id,
    normalize_identifier,
)
from nara.fhir.ids import is_valid_id
from nara.fhir.outcome import FhirError, conflict, invalid
from nara.store.crud import Tx

MAX_HIERARCHY_DEPTH = 12


# ---- helpers ------------------------------------------------------------------------------------
def _codes_of(res: dict[str, Any], element: str, system: str) -> list[str]:
    values = res.get(element)
    concepts = values if isinstance(values, list) else [values] if isinstance(values, dict) else []
    return [
        c["code"]
        for cc in concepts
        if isinstance(cc, dict)
        for c in cc.get("coding", [])
        if isinstance(c, dict) and c.get("system") == system and isinstance(c.get("code"), str)
    ]


def organization_role(org: dict[str, Any]) -> str | None:
    """``vardgivare``, ``omsorgsgivare`` or ``vardenhet`` (or None for a non-directory Organization)."""
    found = _codes_of(org, "type", codes.ORGANIZATION_ROLE)
    return found[0] if len(found) == 1 else None


def _ref_id(ref: Any, rtype: str, path: str) -> str:
    target = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(target, str) or not target.startswith(rtype + "/"):
        raise invalid(f"{path} must reference a {rtype} (as '{rtype}/<id>')", [path])
    rid = target.split("/", 1)[1]
    if not is_valid_id(rid):
        raise invalid(f"{path} has an invalid {rtype} id {rid[:64]!r}", [path])
    return rid


def _normalized_identifiers(res: dict[str, Any]) -> list[dict[str, Any]]:
    rtype = res["resourceType"]
    out = []
    for i, ident in enumerate(res.get("identifier") or []):
        if not isinstance(ident, dict):
            raise invalid("An identifier must be an object", [f"{rtype}.identifier[{i}]"])
        try:
            out.append(normalize_identifier(ident))
        except InvalidIdentifier as e:
            raise invalid(str(e), [f"{rtype}.identifier[{i}].value"]) from None
    return out


def _hsa_id_of(res: dict[str, Any]) -> str:
    """Normalise ``res.identifier`` in place and return its single HSA-id, which must also be its id."""
    rtype = res["resourceType"]
    res["identifier"] = _normalized_identifiers(res)
    hsa = [i["value"] for i in res["identifier"] if i.get("system") == HSA_ID and isinstance(i.get("value"), str)]
    if len(hsa) != 1:
        raise invalid(f"A directory {rtype} needs exactly one HSA-id identifier ({HSA_ID})", [f"{rtype}.identifier"])
    rid = res.get("id")
    if rid is None:
        res["id"] = hsa[0]
    elif rid != hsa[0]:
        raise invalid(f"The id of a directory {rtype} is its HSA-id ({hsa[0]}), not {rid!r}", [f"{rtype}.id"])
    return hsa[0]


def _require_name(res: dict[str, Any]) -> None:
    rtype = res["resourceType"]
    name = res.get("name")
    if rtype == "Practitioner":
        ok = isinstance(name, list) and any(isinstance(n, dict) and n.get("family") for n in name)
    else:
        ok = isinstance(name, str) and name.strip() != ""
    if not ok:
        raise invalid(f"A directory {rtype} needs a name", [f"{rtype}.name"])


def _read(tx: Tx, rtype: str, rid: str, path: str) -> dict[str, Any]:
    st = tx.read_optional(rtype, rid)
    if st is None:
        raise invalid(f"{rtype}/{rid} does not exist in the directory", [path])
    return st.resource()


def _current(tx: Tx, rtype: str, rid: str) -> dict[str, Any]:
    st = tx.read_optional(rtype, rid)
    if st is None:
        raise FhirError(404, "not-found", f"{rtype}/{rid} is not in the directory")
    res = copy.deepcopy(st.resource())
    res.pop("meta", None)
    return res


def _ensure_new(tx: Tx, rtype: str, rid: str) -> None:
    if tx.read_optional(rtype, rid) is not None:
        raise conflict(f"{rtype}/{rid} already exists; change it instead of adding it again")


def _write(tx: Tx, res: dict[str, Any]) -> dict[str, Any]:
    stored = tx.update(res["resourceType"], res["id"], res).stored
    assert stored is not None
    return stored.resource()


def _today(on: date | None) -> date:
    return on or date.today()


# ---- organisations and units --------------------------------------------------------------------
def _check_organization(tx: Tx, org: dict[str, Any]) -> None:
    if org.get("resourceType") != "Organization":
        raise invalid("Expected an Organization", ["Organization"])
    hsa = _hsa_id_of(org)
    _require_name(org)
    roles = _codes_of(org, "type", codes.ORGANIZATION_ROLE)
    if len(roles) != 1 or roles[0] not in codes.ORGANIZATION_ROLES:
        allowed = ", ".join(codes.ORGANIZATION_ROLES)
        raise invalid(
            f"A directory Organization needs exactly one type from {codes.ORGANIZATION_ROLE} ({allowed})",
            ["Organization.type"],
        )
    role = roles[0]
    kinds = _codes_of(org, "type", codes.UNIT_KIND)
    for k in kinds:
        if k not in codes.UNIT_KINDS:
            raise invalid(f"Unknown unit kind {k!r} (known: {', '.join(codes.UNIT_KINDS)})", ["Organization.type"])
    if role in codes.PROVIDER_ROLES:
        if not any(i.get("system") == ORGANISATION_NUMBER for i in org["identifier"]):
            raise invalid(
                f"A {codes.ORGANIZATION_ROLES[role].lower()} needs its organisation number ({ORGANISATION_NUMBER})",
                ["Organization.identifier"],
            )
        if "partOf" in org:
            raise invalid(
                "A care provider or care giver is the top of its hierarchy (no partOf)", ["Organization.partOf"]
            )
        return
    if "partOf" not in org:
        raise invalid("A unit needs partOf: its care provider, care giver or parent unit", ["Organization.partOf"])
    parent_id = _ref_id(org["partOf"], "Organization", "Organization.partOf")
    _check_parent_chain(tx, hsa, parent_id)


def _check_parent_chain(tx: Tx, hsa: str, parent_id: str) -> None:
    seen = {hsa}
    current = parent_id
    for depth in range(MAX_HIERARCHY_DEPTH):
        if current in seen:
            raise invalid(f"partOf would make a cycle through Organization/{current}", ["Organization.partOf"])
        seen.add(current)
        parent = _read(tx, "Organization", current, "Organization.partOf")
        if depth == 0 and parent.get("active") is False:
            raise invalid(f"The parent Organization/{current} has ended", ["Organization.partOf"])
        role = organization_role(parent)
        if role in codes.PROVIDER_ROLES:
            return
        if role != codes.UNIT:
            raise invalid(f"Organization/{current} is not part of the directory", ["Organization.partOf"])
        part_of = parent.get("partOf")
        if part_of is None:
            raise invalid(f"Organization/{current} has no care provider above it", ["Organization.partOf"])
        current = _ref_id(part_of, "Organization", "Organization.partOf")
    raise invalid("The unit hierarchy is deeper than allowed", ["Organization.partOf"])


def add_organization(tx: Tx, org: dict[str, Any]) -> dict[str, Any]:
    """Add a care provider, care giver or unit (built with :mod:`nara.directory.resources` or received)."""
    org = copy.deepcopy(org)
    _check_organization(tx, org)
    _ensure_new(tx, "Organization", org["id"])
    org["active"] = True
    return _write(tx, org)


def change_organization(
    tx: Tx,
    hsa_id: str,
    *,
    name: str | None = None,
    address: Address | None = None,
    phone: str | None = None,
    part_of: str | None = None,
) -> dict[str, Any]:
    """Rename, move or re-address an organisation or unit."""
    org = _current(tx, "Organization", _hsa(hsa_id))
    if name is not None:
        org["name"] = name
    if address is not None:
        org["address"] = [address.to_fhir()]
    if phone is not None:
        org["telecom"] = [{"system": "phone", "value": phone, "use": "work"}]
    if part_of is not None:
        org["partOf"] = {"reference": f"Organization/{_hsa(part_of)}"}
    _check_organization(tx, org)
    return _write(tx, org)


def end_organization(tx: Tx, hsa_id: str) -> dict[str, Any]:
    """End an organisation or unit; its services and locations end with it.

    Refused while it still has active sub-units or active assignments: those must be ended (or moved) first.
    """
    hsa = _hsa(hsa_id)
    org = _current(tx, "Organization", hsa)
    children = tx.match("Organization", f"partof=Organization/{hsa}&active=true", limit=50)
    if children:
        names = ", ".join(c.res_id for c in children[:5])
        raise conflict(f"Organization/{hsa} still has {len(children)} active sub-unit(s) ({names}); end them first")
    roles = tx.match("PractitionerRole", f"organization=Organization/{hsa}&active=true", limit=50)
    if roles:
        names = ", ".join(r.res_id for r in roles[:5])
        raise conflict(f"Organization/{hsa} still has {len(roles)} active assignment(s) ({names}); end them first")
    for svc in tx.match("HealthcareService", f"organization=Organization/{hsa}&active=true", limit=1000):
        body = copy.deepcopy(svc.resource())
        body["active"] = False
        tx.update("HealthcareService", svc.res_id, body)
    for loc in tx.match("Location", f"organization=Organization/{hsa}&status=active", limit=1000):
        body = copy.deepcopy(loc.resource())
        body["status"] = "inactive"
        tx.update("Location", loc.res_id, body)
    org["active"] = False
    return _write(tx, org)


def _hsa(value: str) -> str:
    try:
        return normalize_hsa_id(value)
    except InvalidIdentifier as e:
        raise invalid(str(e)) from None


# ---- staff --------------------------------------------------------------------------------------
def _check_practitioner(prac: dict[str, Any]) -> None:
    if prac.get("resourceType") != "Practitioner":
        raise invalid("Expected a Practitioner", ["Practitioner"])
    _hsa_id_of(prac)
    _require_name(prac)


def add_practitioner(tx: Tx, prac: dict[str, Any]) -> dict[str, Any]:
    """Add a member of staff (identified by a personal HSA-id)."""
    prac = copy.deepcopy(prac)
    _check_practitioner(prac)
    _ensure_new(tx, "Practitioner", prac["id"])
    prac["active"] = True
    return _write(tx, prac)


def change_practitioner(
    tx: Tx, hsa_id: str, *, given: str | None = None, family: str | None = None, phone: str | None = None
) -> dict[str, Any]:
    prac = _current(tx, "Practitioner", _hsa(hsa_id))
    name = dict(prac.get("name", [{}])[0])
    if given is not None:
        name["given"] = [given]
    if family is not None:
        name["family"] = family
    if given is not None or family is not None:
        name["text"] = f"{' '.join(name.get('given', []))} {name.get('family', '')}".strip()
    prac["name"] = [name, *prac.get("name", [])[1:]]
    if phone is not None:
        prac["telecom"] = [{"system": "phone", "value": phone, "use": "work"}]
    _check_practitioner(prac)
    return _write(tx, prac)


def end_practitioner(tx: Tx, hsa_id: str, on: date | None = None) -> dict[str, Any]:
    """A member of staff leaves: every active assignment ends on ``on`` (default today)."""
    hsa = _hsa(hsa_id)
    prac = _current(tx, "Practitioner", hsa)
    for role in tx.match("PractitionerRole", f"practitioner=Practitioner/{hsa}&active=true", limit=1000):
        end_assignment(tx, role.res_id, on)
    prac["active"] = False
    return _write(tx, prac)


# ---- assignments (medarbetaruppdrag) --------------------------------------------------------------
def parse_right(value: str) -> tuple[str, str, str]:
    """``Aktivitet;Informationstyp;Omfång`` as a triple; raises ValueError when malformed."""
    parts = value.split(";")
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"{value!r} is not Aktivitet;Informationstyp;Omfång")
    if parts[2] not in codes.RIGHT_SCOPES:
        raise ValueError(f"{value!r}: omfång must be one of {', '.join(sorted(codes.RIGHT_SCOPES))}")
    return parts[0], parts[1], parts[2]


def _ext_values(res: dict[str, Any], url: str) -> list[tuple[int, Any]]:
    return [(i, e.get("valueString")) for i, e in enumerate(res.get("extension") or []) if e.get("url") == url]


def _check_assignment(tx: Tx, role: dict[str, Any], *, require_active_unit: bool = True) -> None:
    if role.get("resourceType") != "PractitionerRole":
        raise invalid("Expected a PractitionerRole (assignment)", ["PractitionerRole"])
    _hsa_id_of(role)
    prac_id = _ref_id(role.get("practitioner"), "Practitioner", "PractitionerRole.practitioner")
    prac = _read(tx, "Practitioner", prac_id, "PractitionerRole.practitioner")
    if require_active_unit and prac.get("active") is False:
        raise invalid(f"Practitioner/{prac_id} has left (inactive)", ["PractitionerRole.practitioner"])
    unit_id = _ref_id(role.get("organization"), "Organization", "PractitionerRole.organization")
    unit = _read(tx, "Organization", unit_id, "PractitionerRole.organization")
    if organization_role(unit) != codes.UNIT:
        raise invalid(
            f"An assignment must point at a unit (vårdenhet); Organization/{unit_id} is not one",
            ["PractitionerRole.organization"],
        )
    if require_active_unit and unit.get("active") is False:
        raise invalid(
            f"Organization/{unit_id} has ended; an assignment needs an active unit", ["PractitionerRole.organization"]
        )
    staff_roles = _codes_of(role, "code", codes.STAFF_ROLE)
    if len(staff_roles) != 1 or staff_roles[0] not in codes.STAFF_ROLES:
        raise invalid(
            f"An assignment needs exactly one role from {codes.STAFF_ROLE} ({', '.join(codes.STAFF_ROLES)})",
            ["PractitionerRole.code"],
        )
    purposes = _ext_values(role, codes.ASSIGNMENT_PURPOSE_URL)
    if len(purposes) != 1 or purposes[0][1] not in codes.PURPOSES:
        raise invalid(
            f"An assignment needs exactly one purpose ({', '.join(sorted(codes.PURPOSES))})",
            ["PractitionerRole.extension"],
        )
    rights = _ext_values(role, codes.ASSIGNMENT_RIGHT_URL)
    if not rights:
        raise invalid(
            "An assignment needs at least one right (Aktivitet;Informationstyp;Omfång)", ["PractitionerRole.extension"]
        )
    for i, value in rights:
        try:
            parse_right(value if isinstance(value, str) else "")
        except ValueError as e:
            raise invalid(str(e), [f"PractitionerRole.extension[{i}].valueString"]) from None
    period = role.get("period") or {}
    start, end = period.get("start"), period.get("end")
    if not isinstance(start, str):
        raise invalid("An assignment needs period.start", ["PractitionerRole.period.start"])
    if isinstance(end, str) and end[:10] < start[:10]:
        raise invalid("period.end is before period.start", ["PractitionerRole.period.end"])


def add_assignment(tx: Tx, role: dict[str, Any]) -> dict[str, Any]:
    """Add a medarbetaruppdrag; its unit and member of staff must exist and be active."""
    role = copy.deepcopy(role)
    _check_assignment(tx, role)
    _ensure_new(tx, "PractitionerRole", role["id"])
    role["active"] = "end" not in (role.get("period") or {})
    return _write(tx, role)


def change_assignment(
    tx: Tx,
    hsa_id: str,
    *,
    rights: list[str] | None = None,
    purpose: str | None = None,
    role: str | None = None,
    unit: str | None = None,
) -> dict[str, Any]:
    """Change the rights, purpose, role or unit of an active assignment (an ended one is final)."""
    current = _current(tx, "PractitionerRole", _hsa(hsa_id))
    if current.get("active") is False:
        raise conflict(f"PractitionerRole/{current['id']} has ended; add a new assignment instead")
    ext = current.get("extension") or []
    if purpose is not None:
        ext = [e for e in ext if e.get("url") != codes.ASSIGNMENT_PURPOSE_URL]
        ext.insert(0, {"url": codes.ASSIGNMENT_PURPOSE_URL, "valueString": purpose})
    if rights is not None:
        ext = [e for e in ext if e.get("url") != codes.ASSIGNMENT_RIGHT_URL]
        ext.extend({"url": codes.ASSIGNMENT_RIGHT_URL, "valueString": r} for r in rights)
    current["extension"] = ext
    if role is not None:
        if role not in codes.STAFF_ROLES:
            raise invalid(f"Unknown staff role {role!r}", ["PractitionerRole.code"])
        current["code"] = [{"coding": [codes.coding(codes.STAFF_ROLE, role, codes.STAFF_ROLES)]}]
    if unit is not None:
        current["organization"] = {"reference": f"Organization/{_hsa(unit)}"}
    _check_assignment(tx, current)
    return _write(tx, current)


def end_assignment(tx: Tx, hsa_id: str, on: date | None = None) -> dict[str, Any]:
    """End an assignment on ``on`` (default today): it stops giving access from then on."""
    current = _current(tx, "PractitionerRole", _hsa(hsa_id))
    end = _today(on).isoformat()
    period = dict(current.get("period") or {})
    if isinstance(period.get("start"), str) and period["start"][:10] > end:
        raise invalid(f"Cannot end an assignment on {end}, before it started", ["PractitionerRole.period.end"])
    period["end"] = end
    current["period"] = period
    current["active"] = False
    return _write(tx, current)


# ---- service catalogue ----------------------------------------------------------------------------
def _check_location(tx: Tx, loc: dict[str, Any]) -> None:
    if loc.get("resourceType") != "Location":
        raise invalid("Expected a Location", ["Location"])
    if not is_valid_id(str(loc.get("id", ""))):
        raise invalid("A catalogue Location needs a valid id", ["Location.id"])
    _require_name(loc)
    if not isinstance(loc.get("address"), dict):
        raise invalid("A catalogue Location needs an address", ["Location.address"])
    org_id = _ref_id(loc.get("managingOrganization"), "Organization", "Location.managingOrganization")
    org = _read(tx, "Organization", org_id, "Location.managingOrganization")
    if org.get("active") is False:
        raise invalid(f"Organization/{org_id} has ended", ["Location.managingOrganization"])


def add_location(tx: Tx, loc: dict[str, Any]) -> dict[str, Any]:
    loc = copy.deepcopy(loc)
    _check_location(tx, loc)
    _ensure_new(tx, "Location", loc["id"])
    return _write(tx, loc)


def _check_service(tx: Tx, svc: dict[str, Any]) -> None:
    if svc.get("resourceType") != "HealthcareService":
        raise invalid("Expected a HealthcareService", ["HealthcareService"])
    if not is_valid_id(str(svc.get("id", ""))):
        raise invalid("A catalogue HealthcareService needs a valid id", ["HealthcareService.id"])
    _require_name(svc)
    unit_id = _ref_id(svc.get("providedBy"), "Organization", "HealthcareService.providedBy")
    unit = _read(tx, "Organization", unit_id, "HealthcareService.providedBy")
    if organization_role(unit) != codes.UNIT or unit.get("active") is False:
        raise invalid(f"Organization/{unit_id} is not an active unit", ["HealthcareService.providedBy"])
    for element, system, table in (
        ("category", codes.SERVICE_CATEGORY, codes.SERVICE_CATEGORIES),
        ("type", codes.SERVICE_TYPE, codes.SERVICE_TYPES),
        ("characteristic", codes.SERVICE_CHANNEL, codes.SERVICE_CHANNELS),
    ):
        for code in _codes_of(svc, element, system):
            if code not in table:
                raise invalid(f"Unknown {element} code {code!r} in {system}", [f"HealthcareService.{element}"])
    if not _codes_of(svc, "category", codes.SERVICE_CATEGORY):
        raise invalid(
            f"A catalogue service needs a category from {codes.SERVICE_CATEGORY}", ["HealthcareService.category"]
        )
    for i, ref in enumerate(svc.get("location") or []):
        path = f"HealthcareService.location[{i}]"
        loc = _read(tx, "Location", _ref_id(ref, "Location", path), path)
        if loc.get("status") != "active":
            raise invalid(f"Location/{loc.get('id')} is not active", [path])


def add_service(tx: Tx, svc: dict[str, Any]) -> dict[str, Any]:
    """Add a catalogue entry; its unit must be active and its locations must exist."""
    svc = copy.deepcopy(svc)
    _check_service(tx, svc)
    _ensure_new(tx, "HealthcareService", svc["id"])
    svc["active"] = True
    return _write(tx, svc)


def change_service(tx: Tx, svc: dict[str, Any]) -> dict[str, Any]:
    """Replace a catalogue entry (opening hours, channels, ...) after the same checks as when adding it."""
    svc = copy.deepcopy(svc)
    _current(tx, "HealthcareService", str(svc.get("id", "")))
    _check_service(tx, svc)
    return _write(tx, svc)


def end_service(tx: Tx, service_id: str) -> dict[str, Any]:
    svc = _current(tx, "HealthcareService", service_id)
    svc["active"] = False
    return _write(tx, svc)
