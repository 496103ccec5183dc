"""From validated token claims to an :class:`Actor`, using the directory in the store.

Staff: the token names the staff HSA-id (``sub``) and the chosen assignment (``assignment``); the
assignment's PractitionerRole gives the unit, its care provider (by ``partOf``), the purpose and the
rights. Citizens: the personnummer finds their Patient, however the register's feed wrote it (under the URI
or the RIV OID). Proxies: a guardian (RelatedPerson GUARD, child under 13) or a representative (Consent
``representative``) of the patient named in the token. The token's numbers are taken in their stored form
(12 digits, R-ID-1) wherever they are compared or kept.
"""

from __future__ import annotations

import threading
import time
from datetime import date
from typing import Any

from sqlalchemy import select

from nara.fhir.canonical import BASE
from nara.fhir.dates import utcnow
from nara.fhir.identifiers import (
    HSA_ID,
    HSA_ID_RIV,
    PERSONNUMMER,
    InvalidIdentifier,
    PersonalIdentity,
    age_on,
    parse_personal_identity,
)
from nara.fhir.outcome import FhirError
from nara.security.actors import Actor, Assignment
from nara.security.rules import ref_id
from nara.security.schema import pdl_rule
from nara.security.scopes import Scopes
from nara.security.tokens import unauthorized
from nara.store.crud import Stored, Tx
from nara.store.patients import patients_identified_by, personal_number
from nara.store.search import search_ids
from nara.store.store import Store

NARA = BASE
PURPOSE_EXT = f"{NARA}/StructureDefinition/assignment-purpose"
RIGHT_EXT = f"{NARA}/StructureDefinition/assignment-right"
ORG_ROLE_SYSTEM = f"{NARA}/CodeSystem/organization-role"
STAFF_ROLE_SYSTEM = f"{NARA}/CodeSystem/staff-role"
GUARDIAN_AGE_LIMIT = 13
HSA_SYSTEMS_ = (HSA_ID, HSA_ID_RIV)
CACHE_SECONDS = 30.0


def _one(tx: Tx, rtype: str, query: str) -> Stored | None:
    """The one ``rtype`` the query finds; an identity that two records carry identifies no one (403): a
    personnummer added to another patient's record must not open that record to its holder."""
    return _only(rtype, search_ids(tx, rtype, query, limit=2))


def _only(rtype: str, found: list[Stored]) -> Stored | None:
    if len(found) > 1:
        raise FhirError(
            403,
            "forbidden",
            f"More than one {rtype} carries this identity; the records must be corrected before it can be used",
        )
    return found[0] if found else None


def patient_by_personal_identity(tx: Tx, person: PersonalIdentity) -> Stored | None:
    """The one Patient carrying ``person``'s number, under the URI or the RIV OID (R-ID-2: a feed may store the
    OID), from the search index (``patients_identified_by``). The index holds the rows of current versions only
    (a delete removes its resource's rows), and a Patient that cannot be read as current is passed over all the
    same, so a deleted record neither identifies her nor makes her number ambiguous. A number that two live
    Patients carry identifies no one (403), as ``_one`` answers."""
    ids = patients_identified_by(tx.conn, person.system, person.value, limit=3)
    return _only("Patient", [st for pid in ids if (st := tx.read_optional("Patient", pid)) is not None])


def _personal_identity(raw: str) -> PersonalIdentity:
    """The token's personnummer or samordningsnummer, checked (R-ID-1); 401 when it is not one."""
    try:
        return parse_personal_identity(raw)
    except InvalidIdentifier:
        raise unauthorized("The token's personal identity number is not valid (R-ID-1)") from None


def by_identifier(tx: Tx, rtype: str, systems: tuple[str, ...], value: str) -> Stored | None:
    for system in systems:
        st = _one(tx, rtype, f"identifier={system}|{value}")
        if st is not None:
            return st
    return None


class ActorResolver:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._cache: dict[tuple[Any, ...], tuple[float, Actor]] = {}
        self._lock = threading.Lock()

    def resolve(self, claims: dict[str, Any]) -> Actor:
        kind = claims.get("nara_kind") or claims.get("actor_kind") or "staff"
        sub = str(claims["sub"])
        scopes = Scopes.parse(str(claims.get("scope", "")))
        key = (kind, sub, claims.get("assignment"), claims.get("patient"), scopes.raw, bool(claims.get("other_units")))
        now = time.time()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and now - hit[0] < CACHE_SECONDS:
                return hit[1]
        with self.store.transaction(write=False) as tx:
            if kind == "system":
                actor = Actor(
                    kind="system",
                    subject=sub,
                    name=str(claims.get("name", sub)),
                    scopes=scopes,
                    client_id=sub,
                    policy_off=True,
                )
            elif kind == "citizen":
                actor = self._citizen(tx, sub, scopes, claims)
            elif kind == "proxy":
                actor = self._proxy(tx, sub, scopes, claims)
            elif kind == "staff":
                actor = self._staff(tx, sub, scopes, claims)
            else:
                raise unauthorized(f"Unknown actor kind {kind!r}")
        with self._lock:
            self._cache[key] = (now, actor)
        return actor

    def _citizen(self, tx: Tx, sub: str, scopes: Scopes, claims: dict[str, Any]) -> Actor:
        person = _personal_identity(sub)
        pat = patient_by_personal_identity(tx, person)
        return Actor(
            kind="citizen",
            subject=person.value,
            name=str(claims.get("name", "")),
            scopes=scopes,
            patient=pat.res_id if pat else None,
        )

    def _proxy(self, tx: Tx, sub: str, scopes: Scopes, claims: dict[str, Any]) -> Actor:
        pnr = _personal_identity(sub).value
        target = claims.get("patient")
        if not isinstance(target, str):
            raise FhirError(403, "forbidden", "A proxy token must name the represented person (claim 'patient')")
        try:
            represented = parse_personal_identity(target)
        except InvalidIdentifier:
            raise FhirError(403, "forbidden", "The represented person is not known") from None
        pat = patient_by_personal_identity(tx, represented)
        if pat is None:
            raise FhirError(403, "forbidden", "The represented person is not known")
        now = utcnow().replace(tzinfo=None)
        # The person of a guardian or representative rule is kept in 12 digits (rules.derive); one derived before
        # that, in the form its resource was written in, is compared in that form too.
        rows = tx.conn.execute(
            select(pdl_rule.c.kind, pdl_rule.c.person, pdl_rule.c.starts, pdl_rule.c.ends).where(
                pdl_rule.c.patient_id == pat.res_id,
                pdl_rule.c.kind.in_(["guardian", "representative"]),
            )
        ).all()
        basis = None
        for kind, person, starts, ends in rows:
            if person is None or (person != pnr and personal_number(PERSONNUMMER, person) != pnr):
                continue
            if (starts is None or starts <= now) and (ends is None or ends >= now):
                basis = kind
                if kind == "representative":
                    break
        if basis is None:
            raise FhirError(403, "forbidden", "No valid guardianship or authorisation to act for this person")
        birth = None
        if basis == "guardian":
            raw = pat.resource().get("birthDate")
            if isinstance(raw, str) and len(raw) >= 10:
                birth = date.fromisoformat(raw[:10])
            if birth is None or age_on(birth, now.date()) >= GUARDIAN_AGE_LIMIT:
                raise FhirError(
                    403, "forbidden", "A guardian's access ends when the child turns 13; the child's data is not shown"
                )
        return Actor(
            kind="proxy",
            subject=pnr,
            name=str(claims.get("name", "")),
            scopes=scopes,
            patient=pat.res_id,
            proxy_basis=basis,
            child_birth_date=birth,
        )

    def _staff(self, tx: Tx, hsa: str, scopes: Scopes, claims: dict[str, Any]) -> Actor:
        prac = by_identifier(tx, "Practitioner", HSA_SYSTEMS_, hsa)
        if prac is None:
            raise FhirError(403, "forbidden", "The staff member is not in the directory")
        assignment_id = claims.get("assignment")
        if not isinstance(assignment_id, str):
            raise FhirError(403, "forbidden", "Staff must choose an assignment (medarbetaruppdrag) at login")
        role = by_identifier(tx, "PractitionerRole", HSA_SYSTEMS_, assignment_id)
        if role is None:
            raise FhirError(403, "forbidden", "The assignment is not in the directory")
        r = role.resource()
        if ref_id(r.get("practitioner"), "Practitioner") != prac.res_id:
            raise FhirError(403, "forbidden", "The assignment does not belong to this staff member")
        if r.get("active") is False:
            raise FhirError(403, "forbidden", "The assignment is not active")
        period = r.get("period") or {}
        today = utcnow().date().isoformat()
        if (period.get("start") and period["start"][:10] > today) or (period.get("end") and period["end"][:10] < today):
            raise FhirError(403, "forbidden", "The assignment is not valid today")
        unit_id = ref_id(r.get("organization"), "Organization")
        unit = tx.read_optional("Organization", unit_id) if unit_id else None
        if unit is None:
            raise FhirError(403, "forbidden", "The assignment's unit is not in the directory")
        found = care_provider_of(tx, unit)
        if found is None:
            raise FhirError(403, "forbidden", "The assignment's unit has no care provider (partOf) in the directory")
        provider, provider_kind = found
        purpose = next((e.get("valueString") for e in r.get("extension", []) if e.get("url") == PURPOSE_EXT), "")
        rights = tuple(e.get("valueString") for e in r.get("extension", []) if e.get("url") == RIGHT_EXT)
        roles = tuple(
            c.get("code")
            for cc in r.get("code", [])
            for c in cc.get("coding", [])
            if c.get("system") == STAFF_ROLE_SYSTEM
        )
        pres = prac.resource()
        name = " ".join([*(pres.get("name", [{}])[0].get("given", [])), pres.get("name", [{}])[0].get("family", "")])
        a = Assignment(
            id=assignment_id,
            role_id=role.res_id,
            unit=unit.res_id,
            unit_name=str(unit.resource().get("name", "")),
            provider=provider.res_id,
            provider_name=str(provider.resource().get("name", "")),
            provider_kind=provider_kind,
            purpose=str(purpose or ""),
            rights=tuple(str(x) for x in rights if x),
            roles=tuple(str(x) for x in roles if x),
        )
        # SMART launch context: the patient a launched app is for (binds patient/ scopes; see Policy.launch_bound).
        launch = claims.get("patient")
        if launch is not None and not _patient_exists(tx, launch):
            raise FhirError(403, "forbidden", "The token's launch patient is not known")
        return Actor(
            kind="staff",
            subject=hsa,
            name=name.strip(),
            scopes=scopes,
            patient=launch,
            practitioner=prac.res_id,
            assignment=a,
            other_units_chosen=bool(claims.get("other_units")),
        )


def _patient_exists(tx: Tx, patient: Any) -> bool:
    try:
        return isinstance(patient, str) and tx.read_optional("Patient", patient) is not None
    except FhirError:
        return False  # not an id at all


def care_provider_of(tx: Tx, org: Stored) -> tuple[Stored, str] | None:
    """The care provider or care giver an Organization is (or is part of, by ``partOf``) and its kind
    (vardgivare | omsorgsgivare), or None when the directory gives it none."""
    current, seen = org, set()
    while current.res_id not in seen:
        seen.add(current.res_id)
        res = current.resource()
        for t in res.get("type", []):
            for c in t.get("coding", []):
                if c.get("system") == ORG_ROLE_SYSTEM and c.get("code") in ("vardgivare", "omsorgsgivare"):
                    return current, str(c["code"])
        parent = ref_id(res.get("partOf"), "Organization")
        nxt = tx.read_optional("Organization", parent) if parent else None
        if nxt is None:
            break
        current = nxt
    return None
