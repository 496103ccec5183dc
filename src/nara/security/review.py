"""Log review (R-LOG-4): gathering what the criteria need from the directory and running them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select

from nara.fhir.ids import is_valid_id
from nara.security import audit
from nara.security.identity import HSA_SYSTEMS_, by_identifier
from nara.security.rules import is_personal_identifier, person_number
from nara.security.schema import audit_access, audit_event
from nara.store.crud import Tx


def _addr(a: dict[str, Any]) -> str:
    return " ".join([*(a.get("line") or []), a.get("postalCode", ""), a.get("city", "")]).strip().lower()


def _personal_numbers(res: dict[str, Any]) -> set[str]:
    """The personal identity numbers of a Practitioner or Patient in one form (12 digits, R-ID-1), also those of a
    record stored before writes were normalised (with a hyphen, under the RIV OID), so that they compare."""
    return {
        person_number(i["system"], i["value"])
        for i in res.get("identifier", [])
        if is_personal_identifier(i) and isinstance(i.get("value"), str)
    }


def _surnames(res: dict[str, Any]) -> set[str]:
    return {n.get("family", "").lower() for n in res.get("name", []) if n.get("family")}


def review_facts(
    tx: Tx, user_ids: set[str], patient_ids: set[str]
) -> tuple[dict[str, audit.StaffFacts], dict[str, audit.PatientFacts]]:
    """Personal numbers, surnames and addresses of the staff and patients involved (read without policy)."""
    staff: dict[str, audit.StaffFacts] = {}
    patients: dict[str, audit.PatientFacts] = {}
    saved, tx.policy = tx.policy, None
    try:
        for user in user_ids:
            st = by_identifier(tx, "Practitioner", HSA_SYSTEMS_, user)
            if st is not None:
                res = st.resource()
                staff[user] = audit.StaffFacts(
                    _personal_numbers(res), _surnames(res), {_addr(a) for a in res.get("address", [])}
                )
        for pid in patient_ids:
            if not is_valid_id(pid):
                continue  # no Patient has it: the compartment of data whose patient is not known (?unresolved)
            pst = tx.read_optional("Patient", pid)
            if pst is not None:
                res = pst.resource()
                pnrs = sorted(_personal_numbers(res))
                patients[pid] = audit.PatientFacts(
                    pnrs[0] if pnrs else None, _surnames(res), {_addr(a) for a in res.get("address", [])}
                )
    finally:
        tx.policy = saved
    return staff, patients


def run_review(
    tx: Tx,
    start: datetime,
    end: datetime,
    *,
    vip: list[str],
    sample_rate: float,
    seed: int | None = None,
    many_patients_threshold: int = 50,
    provider: str | None = None,
) -> list[audit.ReviewItem]:
    """Flagged accesses in [start, end) by the R-LOG-4 criteria, plus a random sample; with ``provider``, only
    the accesses of that care provider's users (an auditor reviews their own provider's log)."""
    pairs = tx.conn.execute(
        select(audit_event.c.user_id, audit_access.c.patient_id)
        .select_from(audit_event.outerjoin(audit_access, audit_access.c.seq == audit_event.c.seq))
        .where(*audit.staff_accesses_between(start, end, provider))
        .distinct()
    ).all()
    staff, patients = review_facts(tx, {u for u, _ in pairs if u}, {p for _, p in pairs if p})
    return audit.review_candidates(
        tx.conn,
        start,
        end,
        staff,
        patients,
        vip=vip,
        sample_rate=sample_rate,
        many_patients_threshold=many_patients_threshold,
        seed=seed,
        provider=provider,
    )
