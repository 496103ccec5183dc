"""Deriving the access-rule index (``pdl_rule``) from FHIR resources, inside the write's transaction.

Care relationships come from EpisodeOfCare, Encounter and CareTeam; consents, emergency assertions,
blocks, block breaks and representatives from Consent; guardianship from RelatedPerson. The FHIR
representation is documented in docs/security.md §3.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import Connection, delete, insert, not_, or_, select

from nara.fhir.canonical import BASE
from nara.fhir.dates import parse_range
from nara.fhir.identifiers import PERSONAL_SYSTEMS, PERSONNUMMER, normalize_system, personal_number
from nara.security.schema import care_relation, pdl_rule
from nara.store.indexing import register_index_view
from nara.store.patients import UNRESOLVED_PATIENT, patients_identified_by
from nara.store.reindex import current_rows, reindex_resources
from nara.store.schema import resource, sp_string, sp_token
from nara.store.store import register_write_hook

if TYPE_CHECKING:
    from nara.store.crud import Stored, Tx

NARA = BASE
CONSENT_KIND_SYSTEM = f"{NARA}/CodeSystem/pdl-consent-kind"
INFO_TYPE_SYSTEM = f"{NARA}/CodeSystem/information-type"
ACTOR_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
NARA_ACTOR_ROLE_SYSTEM = f"{NARA}/CodeSystem/consent-actor-role"
RULE_TYPES = frozenset({"EpisodeOfCare", "Encounter", "CareTeam", "Consent", "RelatedPerson", "Patient"})
PROTECTED_LABEL_SYSTEM = "http://hl7.se/fhir/ig/base/CodeSystem/SecurityLabel"
PROTECTED_LABELS = frozenset({"sekretessmarkering", "skyddadFolkbokforing"})
# What a protected patient never shows (R-ID-3): the address, and the contacts and narrative that may repeat it.
PROTECTED_ELEMENTS = ("address", "_address", "contact", "text")
ACTIVE_EPISODE = frozenset({"active", "waitlist", "onhold"})
ACTIVE_ENCOUNTER = frozenset({"planned", "arrived", "triaged", "in-progress", "onleave"})
FINISHED_ENCOUNTER_DAYS = 30


def ref_id(ref: Any, rtype: str | None = None) -> str | None:
    """The logical id in a Reference to ``rtype`` (relative or absolute), or None."""
    if not isinstance(ref, dict):
        return None
    value = ref.get("reference")
    if not isinstance(value, str) or value.startswith("#"):
        return None
    parts = value.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) < 2 or (rtype is not None and parts[-2] != rtype):
        return None
    return parts[-1]


def ref_type(ref: Any) -> str | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("reference"), str):
        return None
    parts = ref["reference"].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


def _start(value: Any) -> datetime | None:
    r = parse_range(value) if isinstance(value, str) else None
    return r[0] if r else None


def _end(value: Any) -> datetime | None:
    r = parse_range(value) if isinstance(value, str) else None
    return r[1] if r else None


def _period(res: dict[str, Any], key: str = "period") -> tuple[datetime | None, datetime | None]:
    p = res.get(key)
    if not isinstance(p, dict):
        return None, None
    return _start(p.get("start")), _end(p.get("end"))


def consent_kind(res: dict[str, Any]) -> str | None:
    for cat in res.get("category", []):
        for c in cat.get("coding", []) if isinstance(cat, dict) else []:
            if c.get("system") == CONSENT_KIND_SYSTEM:
                return str(c.get("code"))
    return None


def _actors(provision: dict[str, Any], role: str) -> list[dict[str, Any]]:
    out = []
    for a in provision.get("actor", []):
        for c in (a.get("role") or {}).get("coding", []):
            if c.get("code") == role:
                out.append(a.get("reference") or {})
    return out


def is_protected_label(coding: Any) -> bool:
    """Whether a security label Coding marks protected identity (sekretessmarkering, skyddad folkbokföring)."""
    return (
        isinstance(coding, dict)
        and coding.get("system") == PROTECTED_LABEL_SYSTEM
        and coding.get("code") in PROTECTED_LABELS
    )


def is_protected(res: dict[str, Any]) -> bool:
    """Whether a Patient carries a protected-identity label (R-ID-3)."""
    labels = (res.get("meta") or {}).get("security", [])
    return any(is_protected_label(x) for x in labels)


# The security label of data the patient (or a proxy) entered: HL7's integrity label "patient asserted". Nära
# sets it on every citizen or proxy write and removes it from staff writes; a citizen changes only data with it.
PATIENT_ASSERTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
PATIENT_ASSERTED = "PATAST"


def _is_patient_asserted(coding: Any) -> bool:
    return (
        isinstance(coding, dict)
        and coding.get("system") == PATIENT_ASSERTED_SYSTEM
        and coding.get("code") == PATIENT_ASSERTED
    )


def patient_asserted(res: dict[str, Any]) -> bool:
    """Whether ``res`` carries the label of data the patient entered."""
    meta = res.get("meta")
    labels = meta.get("security") if isinstance(meta, dict) else None
    return isinstance(labels, list) and any(_is_patient_asserted(c) for c in labels)


def with_patient_asserted(res: dict[str, Any], asserted: bool) -> dict[str, Any]:
    """``res`` with the patient-asserted label set (``asserted``) or removed; its other labels as they were."""
    meta = dict(res["meta"]) if isinstance(res.get("meta"), dict) else {}
    if patient_asserted(res) == asserted or not isinstance(meta.get("security", []), list):
        return res  # as it is (a malformed meta.security is left to validation)
    labels = [c for c in meta.get("security") or [] if not _is_patient_asserted(c)]
    if asserted:
        labels.append({"system": PATIENT_ASSERTED_SYSTEM, "code": PATIENT_ASSERTED, "display": "patient asserted"})
    if labels:
        meta["security"] = labels
    else:
        meta.pop("security", None)
    return {**res, "meta": meta}


def may_be_protected(content: str) -> bool:
    """Whether a resource's JSON text could carry a protected-identity label (False: it certainly does not), a
    cheap test before parsing it."""
    return any(label in content for label in PROTECTED_LABELS)


def protected_by_label(conn: Connection, patient_ids: Iterable[str]) -> set[str]:
    """The patients among ``patient_ids`` whose Patient resource carries a protected-identity label (R-ID-3), read
    from the resources themselves: for when the access-rule store (``pdl_rule``, where ``derive`` keeps the
    same fact) cannot be read (R-BLK-5), so that an access to them is flagged all the same."""
    ids = sorted(set(patient_ids))
    found: set[str] = set()
    for start in range(0, len(ids), 5000):
        rows = conn.execute(
            select(resource.c.res_id, resource.c.content).where(
                resource.c.res_type == "Patient",
                resource.c.res_id.in_(ids[start : start + 5000]),
                not_(resource.c.deleted),
            )
        )
        for pid, content in rows:
            if isinstance(content, str):
                if not may_be_protected(content):
                    continue  # most patients: no need to parse
                content = orjson.loads(content)
            if isinstance(content, dict) and is_protected(content):
                found.add(pid)
    return found


def protected_patients(conn: Connection, patient_ids: Iterable[str]) -> set[str]:
    """The patients among ``patient_ids`` with protected identity (R-ID-3), from the access-rule store (the
    ``protected`` rows ``derive`` keeps from their Patient resources), looked up 5,000 at a time."""
    ids = sorted(set(patient_ids))
    protected: set[str] = set()
    for start in range(0, len(ids), 5000):
        chunk = ids[start : start + 5000]
        found = select(pdl_rule.c.patient_id).where(pdl_rule.c.kind == "protected", pdl_rule.c.patient_id.in_(chunk))
        protected.update(r[0] for r in conn.execute(found))
    return protected


# A protected patient's household: the people recorded about her (RelatedPerson: a guardian, a partner, a
# parent) live with her more often than not, and their address is hers. It is hidden and kept like hers.
HOUSEHOLD_TYPES = frozenset({"RelatedPerson"})


def household_of(conn: Connection, res: dict[str, Any]) -> list[str]:
    """The patients a RelatedPerson may be about: its ``patient`` by reference and by identifier (a personnummer,
    in any written form, resolved in the search index); none for other types."""
    if res.get("resourceType") not in HOUSEHOLD_TYPES:
        return []
    ref = res.get("patient")
    found = [p for p in [ref_id(ref, "Patient")] if p]
    ident = ref.get("identifier") if isinstance(ref, dict) else None
    if isinstance(ident, dict) and isinstance(ident.get("value"), str) and ident["value"]:
        system = ident["system"] if isinstance(ident.get("system"), str) else None
        found += patients_identified_by(conn, system, ident["value"], limit=5)
    return found


def protected_now(conn: Connection, patients: Iterable[str], rules_readable: bool = True) -> bool:
    """Whether one of ``patients`` has protected identity now: from the access-rule store, or from the Patient
    resources when that store cannot be read (R-BLK-5)."""
    ids = [p for p in patients if p]
    if not ids:
        return False
    return bool(protected_patients(conn, ids) if rules_readable else protected_by_label(conn, ids))


def in_protected_household(
    conn: Connection, res: dict[str, Any], rules_readable: bool = True, patient: str | None = None
) -> bool:
    """Whether ``res`` is a RelatedPerson of a patient with protected identity (by its ``patient``, or the
    compartment ``patient`` the store gave it) that shows what she never shows (an address, a narrative)."""
    if res.get("resourceType") not in HOUSEHOLD_TYPES or not any(k in res for k in PROTECTED_ELEMENTS):
        return False
    return protected_now(conn, [*household_of(conn, res), *([patient] if patient else [])], rules_readable)


def without_household_address(conn: Connection, res: dict[str, Any]) -> dict[str, Any]:
    """``res`` without its address and narrative if it is a RelatedPerson of a patient with protected identity,
    else ``res`` itself (what the search index sees: a search by address would otherwise find her home)."""
    return without_protected_elements(res) if in_protected_household(conn, res) else res


def indexed_view(conn: Connection, res: dict[str, Any]) -> dict[str, Any]:
    """What the search index sees of ``res``: nothing of a protected patient's or her household's address,
    nothing of a staff member's private data."""
    return without_household_address(conn, without_staff_private_data(without_protected_address(res)))


def forget_household_address(tx: Tx, patient: str) -> None:
    """Remove from the search index the address of the RelatedPersons of ``patient``, who has protected identity
    now (indexed while she had not): the rows written, and those this transaction has yet to write. Lifting the
    protection brings them back (``remember_household_address``)."""

    def address_row(row: dict[str, Any]) -> bool:
        return row["res_type"] in HOUSEHOLD_TYPES and row["patient_id"] == patient and _is_address(row["param"])

    tx.drop_pending_index(address_row)
    for table in (sp_string, sp_token):
        tx.conn.execute(
            delete(table).where(
                table.c.patient_id == patient,
                table.c.res_type.in_(sorted(HOUSEHOLD_TYPES)),
                or_(table.c.param == "address", table.c.param.like("address-%")),
            )
        )


def remember_household_address(tx: Tx, patient: str) -> None:
    """Put the address of the RelatedPersons of ``patient``, whose protected identity is lifted now, back into the
    search index (``forget_household_address`` took it out): their index rows are extracted again in this
    transaction, as ``nara reindex`` does, after her protection has left the access-rule store, so that the index
    view shows what it hid (and still hides the address of one in another protected patient's household)."""
    household = current_rows(tx).where(
        resource.c.patient_id == patient, resource.c.res_type.in_(sorted(HOUSEHOLD_TYPES))
    )
    if tx.pg:
        household = household.with_for_update()  # as a reindex batch: a concurrent write lands before or after
    reindex_resources(tx, list(tx.conn.execute(household)))


def _is_address(param: str) -> bool:
    return param == "address" or param.startswith("address-")


def without_protected_address(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` without its address (and the contacts and narrative that may repeat it) if it is a Patient with
    protected identity (R-ID-3), else ``res`` itself.

    What the API returns (``gate.redact``), what a JSON Patch applies to (``Policy.shown_for_writing``) and what
    the search index sees (registered below as an index view, else a search by address would be an oracle)."""
    if res.get("resourceType") == "Patient" and is_protected(res):
        return without_protected_elements(res)
    return res


def without_protected_elements(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` without the elements a protected patient never shows, whatever its own labels say (an earlier
    version of a patient who is protected now)."""
    if not any(k in res for k in PROTECTED_ELEMENTS):
        return res
    return {k: v for k, v in res.items() if k not in PROTECTED_ELEMENTS}


def with_register_data_of(body: dict[str, Any], current: dict[str, Any]) -> dict[str, Any]:
    """``body`` (a Patient) with ``current``'s personal identity numbers and protected-identity labels in place of
    its own: facts of the population register, which only its feed (a system client) sets or removes. A staff
    member who added her own personnummer to a patient would read the record as that patient."""

    def same(a: list[Any], b: list[Any]) -> bool:
        return orjson.dumps(a, option=orjson.OPT_SORT_KEYS) == orjson.dumps(b, option=orjson.OPT_SORT_KEYS)

    out = body
    ids_now = [i for i in current.get("identifier") or [] if is_personal_identifier(i)]
    ids: list[Any] = body["identifier"] if isinstance(body.get("identifier"), list) else []
    if not same([i for i in ids if is_personal_identifier(i)], ids_now):
        out = {**out, "identifier": [i for i in ids if not is_personal_identifier(i)] + ids_now}
    meta_now: dict[str, Any] = current["meta"] if isinstance(current.get("meta"), dict) else {}
    labels_now = [c for c in meta_now.get("security") or [] if is_protected_label(c)]
    meta = dict(body["meta"]) if isinstance(body.get("meta"), dict) else {}
    labels: list[Any] = meta["security"] if isinstance(meta.get("security"), list) else []
    if not same([c for c in labels if is_protected_label(c)], labels_now):
        kept = [c for c in labels if not is_protected_label(c)] + labels_now
        if kept:
            meta["security"] = kept
        else:
            meta.pop("security", None)
        out = {**out, "meta": meta}
    if not out.get("identifier"):
        out = {k: v for k, v in out.items() if k != "identifier"}
    return out


# What a Practitioner holds about the person rather than the work: the directory publishes the rest.
STAFF_PRIVATE_ELEMENTS = ("address", "birthDate")  # Practitioner.address is the home address (not role specific)


def without_staff_private_data(res: dict[str, Any]) -> dict[str, Any]:
    """``res`` without the staff member's private data if it is a Practitioner, else ``res`` itself: personal
    identity numbers, home address, birth date and home telecom. A Practitioner is public to every signed-in
    user (the directory), but these are no part of the directory.

    What the API shows everyone but directory administrators and system clients (``gate.redact``), and what the
    search index sees (registered below as an index view: by nobody searchable, so no search tells whose
    personnummer or address it is)."""
    if res.get("resourceType") != "Practitioner":
        return res
    ids = res.get("identifier")
    telecom = res.get("telecom")
    public_ids = [i for i in ids if not is_personal_identifier(i)] if isinstance(ids, list) else ids
    work_telecom = (
        [t for t in telecom if not (isinstance(t, dict) and t.get("use") == "home")]
        if isinstance(telecom, list)
        else telecom
    )
    if public_ids == ids and work_telecom == telecom and not any(k in res for k in STAFF_PRIVATE_ELEMENTS):
        return res
    clean = {k: v for k, v in res.items() if k not in (*STAFF_PRIVATE_ELEMENTS, "identifier", "telecom")}
    if public_ids:
        clean["identifier"] = public_ids
    if work_telecom:
        clean["telecom"] = work_telecom
    return clean


def is_personal_identifier(ident: Any) -> bool:
    """Whether an Identifier is a personnummer or samordningsnummer (under the URI or the RIV OID)."""
    system = ident.get("system") if isinstance(ident, dict) else None
    return isinstance(system, str) and normalize_system(system) in PERSONAL_SYSTEMS


def block_custodians(res: dict[str, Any]) -> list[str]:
    """The Organizations (care providers or units) whose data a block Consent blocks (its CST actors)."""
    prov = res.get("provision")
    if not isinstance(prov, dict):
        return []
    return [c for c in (ref_id(r, "Organization") for r in _actors(prov, "CST")) if c]


def identifier_value(res: dict[str, Any]) -> str | None:
    """The first personal identity number of ``res`` (a RelatedPerson), in its stored form (``person_number``)."""
    for ident in res.get("identifier", []):
        if is_personal_identifier(ident) and isinstance(ident.get("value"), str):
            return person_number(ident.get("system"), ident["value"])
    return None


def person_number(system: Any, value: str) -> str:
    """A guardian's or representative's number as kept in the access rules (``pdl_rule.person``): 12 digits
    (R-ID-1) whatever form it was written in (under the URI or the RIV OID, or with no system), so that it
    compares with the proxy token's number, which the resolver takes in that form too; any other value as
    written."""
    return personal_number(system if isinstance(system, str) else PERSONNUMMER, value) or value


def derive(tx: Tx | None, res: dict[str, Any], patient: str, now: datetime) -> list[dict[str, Any]]:
    """The pdl_rule rows a resource implies (without rid/patient columns filled by the caller)."""
    rtype = res.get("resourceType")
    status = res.get("status")
    rows: list[dict[str, Any]] = []

    def row(kind: str, **kw: Any) -> dict[str, Any]:
        base = {
            "kind": kind,
            "org": None,
            "unit": None,
            "employee": None,
            "person": None,
            "starts": None,
            "ends": None,
            "exempt_alerts": False,
            "exempt_medication": False,
        }
        base.update(kw)
        return base

    if rtype == "Patient":
        if is_protected(res):
            rows.append(row("protected"))  # protected identity (R-ID-3): flag every access in the log
    elif rtype == "EpisodeOfCare" and status in ACTIVE_EPISODE:
        unit = ref_id(res.get("managingOrganization"), "Organization")
        if unit:
            starts, ends = _period(res)
            rows.append(row("care", unit=unit, starts=starts, ends=ends))
    elif rtype == "Encounter":
        unit = ref_id(res.get("serviceProvider"), "Organization")
        starts, ends = _period(res)
        if unit and status in ACTIVE_ENCOUNTER:
            rows.append(row("care", unit=unit, starts=starts))
        elif unit and status == "finished" and ends is not None:
            rows.append(row("care", unit=unit, starts=starts, ends=ends + timedelta(days=FINISHED_ENCOUNTER_DAYS)))
    elif rtype == "CareTeam" and status == "active":
        starts, ends = _period(res)
        for part in res.get("participant", []):
            unit = ref_id(part.get("member"), "Organization")
            if unit:
                rows.append(row("care", unit=unit, starts=starts, ends=ends))
    elif rtype == "Consent" and status == "active":
        kind = consent_kind(res)
        prov = res.get("provision") or {}
        starts, ends = _period(prov)
        if kind in ("svod-consent", "emergency"):
            units = [ref_id(r, "Organization") for r in _actors(prov, "IRCP")]
            employees = [ref_id(r, "Practitioner") for r in _actors(prov, "IRCP")]
            employee = next((e for e in employees if e), None)
            for unit in (u for u in units if u):
                rows.append(
                    row(
                        "consent" if kind == "svod-consent" else "emergency",
                        unit=unit,
                        employee=employee,
                        starts=starts,
                        ends=ends,
                    )
                )
        elif kind == "block":
            exempt = set()
            for sub in prov.get("provision", []):
                if sub.get("type") == "permit":
                    for code in sub.get("code", []):
                        for c in code.get("coding", []):
                            if c.get("system") == INFO_TYPE_SYSTEM:
                                exempt.add(c.get("code"))
            for custodian in block_custodians(res):
                rows.append(
                    row(
                        "block",
                        org=custodian,
                        starts=starts,
                        ends=ends,
                        exempt_alerts="uppmarksamhetsinformation" in exempt,
                        exempt_medication="lakemedel" in exempt,
                    )
                )
        elif kind == "block-break":
            employee = next((e for e in (ref_id(r, "Practitioner") for r in _actors(prov, "IRCP")) if e), None)
            custodians = [ref_id(r, "Organization") for r in _actors(prov, "CST")]
            if employee:
                orgs: list[str | None] = [c for c in custodians if c] or [None]
                for c in orgs:
                    rows.append(row("break", org=c, employee=employee, starts=starts, ends=ends))
        elif kind == "representative":
            for r in _actors(prov, "representative"):
                rp_id = ref_id(r, "RelatedPerson")
                person = None
                if rp_id and tx is not None:
                    rp = tx.read_optional("RelatedPerson", rp_id)
                    person = identifier_value(rp.resource()) if rp else None
                ident = r.get("identifier") if isinstance(r, dict) else None
                if person is None and isinstance(ident, dict) and isinstance(ident.get("value"), str):
                    person = person_number(ident.get("system"), ident["value"])
                if person:
                    rows.append(row("representative", person=person, starts=starts, ends=ends))
    elif rtype == "RelatedPerson" and res.get("active", True) is not False:
        person = identifier_value(res)
        if person and names_guardian(res):
            starts, ends = _period(res)
            rows.append(row("guardian", person=person, starts=starts, ends=ends))
    return rows


def names_guardian(res: dict[str, Any]) -> bool:
    """Whether a RelatedPerson records a guardian (vårdnadshavare: relationship GUARD), who acts for a child."""
    relationships: list[Any] = res["relationship"] if isinstance(res.get("relationship"), list) else []
    return any(
        isinstance(c, dict) and c.get("code") == "GUARD"
        for rel in relationships
        if isinstance(rel, dict)
        for c in rel.get("coding") or []
    )


CARE_TYPES = frozenset({"EpisodeOfCare", "Encounter", "CareTeam"})


def on_write(tx: Tx, method: str, st: Stored) -> None:
    """Write hook: keep ``care_relation`` / ``pdl_rule`` in step with the resource (same transaction)."""
    if st.res_type not in RULE_TYPES:
        return
    table = care_relation if st.res_type in CARE_TYPES else pdl_rule
    old_rules = delete(table).where(table.c.source_rid == st.rid)
    was_protected = False  # whether the version before this write had her protected (her rules, deleted here)
    if table is pdl_rule and st.res_type == "Patient" and not st.deleted:
        removed = tx.conn.execute(old_rules.returning(pdl_rule.c.kind))
        was_protected = removed is not None and "protected" in removed.scalars().all()  # None: a bulk load's new row
    else:
        tx.conn.execute(old_rules)
    if st.deleted or st.content is None or not st.patient_id or st.patient_id == UNRESOLVED_PATIENT:
        return  # no rule may name the compartment of a person no Patient is known for
    rows = derive(tx, st.resource(), st.patient_id, st.last_updated)
    if was_protected and not any(r["kind"] == "protected" for r in rows):
        remember_household_address(tx, st.patient_id)  # her protection is lifted: her household's address too
    if not rows:
        return
    if table is care_relation:
        # A unit establishes its own care relationships: what a staff member wrote (owned by their unit) gives a
        # relationship to that unit only, whatever other units it names; a system client's (the EHR's feed) to
        # every unit it names.
        params = [
            {
                "source_rid": st.rid,
                "patient_id": st.patient_id,
                "unit": r["unit"],
                "starts": r["starts"],
                "ends": r["ends"],
            }
            for r in rows
            if st.owner_unit is None or r["unit"] == st.owner_unit
        ]
        if not params:
            return
    else:
        params = [{**r, "source_rid": st.rid, "patient_id": st.patient_id} for r in rows]
    tx.conn.execute(insert(table), params)
    if st.res_type == "Patient" and any(r["kind"] == "protected" for r in rows):
        forget_household_address(tx, st.patient_id)  # her household's address, indexed before she was


register_write_hook(on_write)
register_index_view(indexed_view)
