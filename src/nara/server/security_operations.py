"""Security operations: emergency access, the two-step block break, the patient's log extract,
log review, and the audit trail read as FHIR ``AuditEvent`` by auditors.

- ``POST Patient/{id}/$emergency-access`` (R-ACC-6): reason + attestation that consent cannot be
  obtained → a time-limited ``Consent`` (category ``emergency``); every access under it is flagged.
- ``POST Patient/{id}/$break-block`` (R-BLK-2): step ``where`` reveals which care providers or units
  hold blocked data; step ``content`` (with a ``custodian``) lifts the block for this user for one hour.
  Both need an active emergency assertion or the patient's explicit consent, and both are logged.
- ``GET Patient/{id}/$log-extract`` (R-LOG-3): who (unit, name where configured), when, what kind of
  access; for the patient, their proxy and auditors.
- ``GET|POST $log-review`` (R-LOG-4): flagged accesses plus a random sample; POST stores a completed
  review (finding and action).
- ``GET AuditEvent[/{seq}]``: the log, BALP-shaped, for auditors (``patient``, ``agent``, ``date``).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import select

from nara.fhir.canonical import BASE
from nara.fhir.dates import instant, parse_instant
from nara.fhir.identifiers import HSA_ID, PERSONNUMMER, InvalidIdentifier, parse_personal_identity
from nara.fhir.outcome import FhirError
from nara.security import audit
from nara.security.actors import PURPOSE_CARE, Actor
from nara.security.policy import Policy
from nara.security.review import run_review
from nara.security.rules import (
    ACTOR_ROLE_SYSTEM,
    CONSENT_KIND_SYSTEM,
    ref_id,
)
from nara.security.schema import audit_access, audit_event, pdl_rule
from nara.server.dispatch import Context, FhirRequest, Outcome, operation
from nara.store.crud import Tx
from nara.store.database import json_out
from nara.store.schema import resource

NARA = BASE
REASON_EXT = f"{NARA}/StructureDefinition/access-reason"
UNOBTAINABLE_EXT = f"{NARA}/StructureDefinition/consent-unobtainable"
BREAK_HOURS = 1

DECLARED_OPERATIONS = {
    "Patient": ["emergency-access", "break-block", "log-extract"],
    "*": ["log-review"],
}


def _policy(tx: Tx) -> Policy:
    policy: Policy | None = tx.policy
    if policy is None:
        raise FhirError(401, "login", "This operation needs an authenticated user")
    return policy


def _params(req: FhirRequest) -> dict[str, Any]:
    """Operation parameters from a Parameters body and/or the query string."""
    out: dict[str, Any] = {k: v for k, v in req.query}
    body = req.body
    if isinstance(body, dict):
        if body.get("resourceType") != "Parameters":
            raise FhirError(400, "invalid", "The operation takes a Parameters resource")
        for p in body.get("parameter", []):
            name = p.get("name")
            value = next((v for k, v in p.items() if k.startswith("value")), None)
            if name:
                out[name] = value
    return out


def _staff_in_care(tx: Tx) -> Actor:
    actor = _policy(tx).actor
    if not actor.is_staff or actor.assignment is None or actor.assignment.purpose != PURPOSE_CARE:
        raise FhirError(403, "forbidden", "Only staff acting for care and treatment (Vård och behandling) may do this")
    return actor


def _patient(tx: Tx, rtype: str | None, rid: str | None) -> str:
    if rtype != "Patient" or not rid:
        raise FhirError(400, "invalid", "This operation runs on a Patient: Patient/{id}/$...")
    if tx.read_optional("Patient", rid) is None and _unfiltered_exists(tx, "Patient", rid) is False:
        raise FhirError(404, "not-found", f"Patient/{rid} is not known")
    return rid


def _unfiltered_exists(tx: Tx, rtype: str, rid: str) -> bool:
    policy, tx.policy = tx.policy, None
    try:
        return tx.read_optional(rtype, rid) is not None
    finally:
        tx.policy = policy


def _now() -> datetime:
    return audit.now_utc()


def _create_consent(tx: Tx, consent: dict[str, Any]) -> str:
    """Create a Consent that only an operation may create (the write check is lifted for this one write)."""
    policy = _policy(tx)
    policy.operation_consent = True
    try:
        result = tx.create(consent, "Consent")
    finally:
        policy.operation_consent = False
    assert result.stored is not None
    return result.stored.res_id


def _reference_actor(role: str, reference: str) -> dict[str, Any]:
    return {"role": {"coding": [{"system": ACTOR_ROLE_SYSTEM, "code": role}]}, "reference": {"reference": reference}}


def _audit(
    tx: Tx,
    action: str,
    patient: str,
    flags: set[str],
    reason: str | None,
    assertion: str | None,
    outcome_rows: list[Any] | None = None,
) -> None:
    policy = _policy(tx)
    rec = audit.AuditRecord(
        action,
        "permit",
        policy.actor,
        "Patient",
        patient,
        f"{action} Patient/{patient}",
        reason=reason,
        assertion_id=assertion,
        flags=flags,
        accesses=[
            audit.Access(
                patient,
                None,
                None,
                "emergency"
                if "emergency" in flags
                else "block-break"
                if "block-break" in flags
                else "log-review"
                if action == "log-extract" and policy.actor.kind == "staff"  # an auditor shown the patient's log
                else policy.access_type(None, None),  # e.g. citizen, proxy: who asked for the log extract
                assertion_id=assertion,
            )
        ],
    )
    audit.record(tx.conn, rec)


@operation("emergency-access")
def emergency_access(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    if req.method != "POST":
        raise FhirError(405, "not-supported", "$emergency-access is invoked with POST")
    actor = _staff_in_care(tx)
    patient = _patient(tx, rtype, rid)
    params = _params(req)
    reason = params.get("reason")
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        raise FhirError(400, "required", "Emergency access needs a reason (parameter 'reason')", ["Parameters.reason"])
    unobtainable = params.get("consentUnobtainable")
    if unobtainable not in (True, "true"):
        raise FhirError(
            400,
            "required",
            "Emergency access needs the attestation that consent cannot be obtained "
            "(parameter 'consentUnobtainable' = true)",
            ["Parameters.consentUnobtainable"],
        )
    hours = ctx.settings.security.emergency_hours
    start = _now()
    end = start + timedelta(hours=hours)
    assert actor.assignment is not None
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": "emergency"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": instant(start),
        "extension": [
            {"url": REASON_EXT, "valueString": reason.strip()[:1000]},
            {"url": UNOBTAINABLE_EXT, "valueBoolean": True},
        ],
        "provision": {
            "type": "permit",
            "period": {"start": instant(start), "end": instant(end)},
            "actor": [
                _reference_actor("IRCP", f"Organization/{actor.assignment.unit}"),
                _reference_actor("IRCP", f"Practitioner/{actor.practitioner}"),
            ],
        },
    }
    cid = _create_consent(tx, consent)
    _audit(tx, "emergency-access", patient, {"emergency"}, reason.strip(), cid)
    return Outcome(
        200,
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "assertion", "valueReference": {"reference": f"Consent/{cid}"}},
                {"name": "validUntil", "valueInstant": instant(end)},
            ],
        },
        recorded=True,
    )


def _basis_ok(tx: Tx, patient: str, basis: Any) -> str:
    actor = _staff_in_care(tx)
    assert actor.assignment is not None
    if basis == "consent":
        return "consent"
    if basis not in (None, "emergency"):
        raise FhirError(400, "invalid", "basis must be 'emergency' or 'consent'")
    now = _now()
    row = tx.conn.execute(
        select(pdl_rule.c.id)
        .where(
            pdl_rule.c.patient_id == patient,
            pdl_rule.c.kind == "emergency",
            pdl_rule.c.unit == actor.assignment.unit,
            (pdl_rule.c.employee.is_(None)) | (pdl_rule.c.employee == (actor.practitioner or "")),
            (pdl_rule.c.starts.is_(None)) | (pdl_rule.c.starts <= now),
            (pdl_rule.c.ends.is_(None)) | (pdl_rule.c.ends >= now),
        )
        .limit(1)
    ).first()
    if row is None:
        raise FhirError(
            403,
            "forbidden",
            "Breaking a block needs an active emergency access ($emergency-access) "
            "or the patient's explicit consent (basis=consent)",
        )
    return "emergency"


def _reachable_custodian(tx: Tx, actor: Actor) -> Callable[[str], bool]:
    """Which custodians' blocks this staff member may break at all: a break only lifts a block, so it is for
    data the assignment could otherwise read (other units of the provider with a right of scope VG or SJF,
    other providers with SJF). Without either right there is nothing to break, and step 1 would only tell
    where blocked data is (R-BLK-2, R-ACC-3)."""
    a = actor.assignment
    assert a is not None
    sjf = a.has_right("Läsa", "SJF")
    if not (sjf or a.has_right("Läsa", "VG")):
        raise FhirError(403, "forbidden", "The assignment reads only its own unit's data: there is no block to break")
    policy = _policy(tx)
    return lambda custodian: sjf or policy.of_my_provider(tx, custodian)


@operation("break-block")
def break_block(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    if req.method != "POST":
        raise FhirError(405, "not-supported", "$break-block is invoked with POST")
    patient = _patient(tx, rtype, rid)
    params = _params(req)
    basis = _basis_ok(tx, patient, params.get("basis"))
    actor = _policy(tx).actor
    assert actor.assignment is not None
    reason = params.get("reason")
    if not isinstance(reason, str) or len(reason.strip()) < 3:
        raise FhirError(400, "required", "Breaking a block needs a reason (parameter 'reason')")
    step = params.get("step")
    reachable = _reachable_custodian(tx, actor)
    if step == "where":
        custodians = [
            r[0]
            for r in tx.conn.execute(
                select(pdl_rule.c.org)
                .distinct()
                .where(
                    pdl_rule.c.patient_id == patient,
                    pdl_rule.c.kind == "block",
                    pdl_rule.c.org.not_in([actor.assignment.unit, actor.assignment.provider]),
                )
            )
            if r[0] and reachable(r[0])
        ]
        _audit(tx, "block-break-where", patient, {"block-break", basis}, reason.strip(), None)
        return Outcome(
            200,
            {
                "resourceType": "Parameters",
                "parameter": [
                    {"name": "custodian", "valueReference": {"reference": f"Organization/{c}"}}
                    for c in sorted(custodians)
                ],
            },
            recorded=True,
        )
    if step != "content":
        raise FhirError(400, "invalid", "step must be 'where' (step 1) or 'content' (step 2)")
    custodian = params.get("custodian")
    cust_id = (
        ref_id(custodian, "Organization")
        if isinstance(custodian, dict)
        else (custodian.split("/")[-1] if isinstance(custodian, str) else None)
    )
    if not cust_id:
        raise FhirError(400, "required", "Step 2 needs the custodian (an Organization reference from step 1)")
    if not reachable(cust_id):
        raise FhirError(403, "forbidden", "The assignment cannot read that custodian's data, blocked or not")
    start = _now()
    end = start + timedelta(hours=BREAK_HOURS)
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": CONSENT_KIND_SYSTEM, "code": "block-break"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": instant(start),
        "extension": [{"url": REASON_EXT, "valueString": reason.strip()[:1000]}],
        "provision": {
            "type": "permit",
            "period": {"start": instant(start), "end": instant(end)},
            "actor": [
                _reference_actor("IRCP", f"Practitioner/{actor.practitioner}"),
                _reference_actor("CST", f"Organization/{cust_id}"),
            ],
        },
    }
    cid = _create_consent(tx, consent)
    _audit(tx, "block-break-content", patient, {"block-break", basis}, reason.strip(), cid)
    return Outcome(
        200,
        {
            "resourceType": "Parameters",
            "parameter": [
                {"name": "assertion", "valueReference": {"reference": f"Consent/{cid}"}},
                {"name": "validUntil", "valueInstant": instant(end)},
            ],
        },
        recorded=True,
    )


# ---- log extract and review ---------------------------------------------------------------------
def _period(params: dict[str, Any]) -> tuple[datetime | None, datetime | None]:
    start = parse_instant(params["start"]) if params.get("start") else None
    end = parse_instant(params["end"]) if params.get("end") else None
    if (params.get("start") and start is None) or (params.get("end") and end is None):
        raise FhirError(400, "invalid", "start and end must be FHIR dates or dateTimes")
    return start, end


def _unit_names(tx: Tx, ids: set[str]) -> dict[str, str]:
    """Names of the units and care providers in a log extract, in one query (the directory is public)."""
    if not ids:
        return {}
    rows = tx.conn.execute(
        select(resource.c.res_id, json_out(resource.c.content, tx.pg)).where(
            resource.c.res_type == "Organization", resource.c.res_id.in_(sorted(ids)), resource.c.deleted.is_(False)
        )
    ).all()
    return {rid: str(orjson.loads(content).get("name", rid)) for rid, content in rows if content}


def _flush_log(ctx: Context) -> None:
    """Reads logged a moment ago on this host are in the log before it is read (the read-audit outbox)."""
    if ctx.flush_log is not None:
        ctx.flush_log()


@operation("log-extract")
def log_extract(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    actor = _policy(tx).actor
    if rtype != "Patient" or not rid:
        raise FhirError(400, "invalid", "$log-extract runs on a Patient: Patient/{id}/$log-extract")
    allowed = (
        (actor.kind in ("citizen", "proxy") and actor.patient == rid)
        or actor.can_review_logs()
        or (actor.kind == "system" and actor.policy_off)
    )
    if not allowed:
        raise FhirError(403, "forbidden", "The log extract is for the patient, their representative and auditors")
    actor.scopes.require("AuditEvent", "search")  # the extract is the patient's AuditEvents
    start, end = _period(_params(req))
    # An auditor extracts their own care provider's log (each provider answers for its own users' accesses); the
    # patient and her proxy get every provider's.
    provider = _audited_provider(actor) if actor.kind not in ("citizen", "proxy") else None
    _flush_log(ctx)
    rows = audit.extract(
        tx.conn, rid, start, end, include_names=ctx.settings.security.log_extract_names, provider=provider
    )
    names = _unit_names(tx, {r.unit_id for r in rows if r.unit_id} | {r.provider_id for r in rows if r.provider_id})
    shared: dict[Any, Any] = {}
    entries = [
        {
            "resource": _audit_event_json(
                None,
                r.time_utc,
                r.action,
                "permit",
                r.actor_kind,
                None,
                r.user_name,
                r.unit_id,
                names.get(r.unit_id or "", r.unit_id),
                r.provider_id,
                names.get(r.provider_id or "", r.provider_id),
                rid,
                r.access_type,
                local_time=r.time_local,
                shared=shared,
            )
        }
        for r in rows
    ]
    _audit(tx, "log-extract", rid, set(), None, None)
    body = {"resourceType": "Bundle", "type": "collection", "total": len(entries), "entry": entries}
    return Outcome(200, body, recorded=True)


ACTION_CODE = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "search": "E",
    "history": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
    "operation": "E",
}


def _audit_event_json(
    seq: int | None,
    at: datetime,
    action: str,
    outcome: str,
    actor_kind: str,
    user_id: str | None,
    user_name: str | None,
    unit_id: str | None,
    unit_name: str | None,
    provider_id: str | None,
    provider_name: str | None,
    patient: str | None,
    access_type: str | None,
    local_time: str | None = None,
    flags: str | None = None,
    reason: str | None = None,
    shared: dict[Any, Any] | None = None,
) -> dict[str, Any]:
    """One access as a FHIR AuditEvent shaped after IHE BALP (Basic Audit Log Patterns).

    ``shared``: a dict kept for one response, in which the parts that repeat from event to event (the agents
    of one user at one unit, the patient entity, the codings) are built once and shared by the events that
    have them (a patient's five-year extract holds about a thousand events from a few users).
    """
    memo: dict[Any, Any] = shared if shared is not None else {}

    def part(key: Any, build: Callable[[], Any]) -> Any:
        """The part under ``key``, built on first use within the response."""
        found = memo.get(key)
        if found is None:
            found = memo[key] = build()
        return found

    res: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": part("type", lambda: dict(_REST_TYPE)),
        "subtype": part(("subtype", action), lambda: [{"system": f"{NARA}/CodeSystem/audit-action", "code": action}]),
        "action": ACTION_CODE.get(action, "E"),
        "recorded": instant(at),
        "outcome": "0" if outcome == "permit" else "4",
        "agent": part(
            ("agents", actor_kind, user_id, user_name, unit_id, unit_name, provider_id, provider_name),
            lambda: _agents(actor_kind, user_id, user_name, unit_id, unit_name, provider_id, provider_name),
        ),
        "source": part("source", lambda: {"observer": {"display": "Nära"}}),
    }
    if seq is not None:
        res["id"] = str(seq)
    ext = []
    if access_type:
        ext.append(
            part(
                ("access", access_type),
                lambda: {"url": f"{NARA}/StructureDefinition/access-type", "valueCode": access_type},
            )
        )
    if local_time:
        ext.append({"url": f"{NARA}/StructureDefinition/local-time", "valueString": local_time})
    if flags:
        ext.append({"url": f"{NARA}/StructureDefinition/review-flags", "valueString": flags})
    if ext:
        res["extension"] = ext
    if reason:
        res["outcomeDesc"] = reason
    if patient:
        res["entity"] = part(
            ("entity", patient),
            lambda: [
                {
                    "what": {"reference": f"Patient/{patient}"},
                    "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                }
            ],
        )
    return res


_REST_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"}


def _user_identifier(actor_kind: str, user_id: str) -> dict[str, Any]:
    """The accessing user's identifier: staff by HSA-id, a citizen or proxy by personnummer or samordningsnummer,
    a system client or an operator by its id alone (it is neither)."""
    if actor_kind == "staff":
        return {"system": HSA_ID, "value": user_id}
    if actor_kind in ("citizen", "proxy"):
        try:
            return parse_personal_identity(user_id).identifier()
        except InvalidIdentifier:
            return {"system": PERSONNUMMER, "value": user_id}  # as the record has it
    return {"value": user_id}


def _agents(
    actor_kind: str,
    user_id: str | None,
    user_name: str | None,
    unit_id: str | None,
    unit_name: str | None,
    provider_id: str | None,
    provider_name: str | None,
) -> list[dict[str, Any]]:
    """The accessing user (requestor), their unit and their care provider or care giver."""
    agent: dict[str, Any] = {"requestor": True, "type": {"text": actor_kind}}
    who: dict[str, Any] = {}
    if user_id:
        who["identifier"] = _user_identifier(actor_kind, user_id)
    if user_name:
        who["display"] = user_name
    if who:
        agent["who"] = who
    if unit_id:
        agent["location"] = {"reference": f"Location/{unit_id}", "display": unit_name or unit_id}
    agents = [agent]
    if unit_id:
        agents.append(
            {
                "requestor": False,
                "type": {"text": "vårdenhet"},
                "who": {"reference": f"Organization/{unit_id}", "display": unit_name or unit_id},
            }
        )
    if provider_id:
        agents.append(
            {
                "requestor": False,
                "type": {"text": "vårdgivare/omsorgsgivare"},
                "who": {"reference": f"Organization/{provider_id}", "display": provider_name or provider_id},
            }
        )
    return agents


def _event_with_accesses(r: Any, accesses: list[Any]) -> dict[str, Any]:
    """A logged interaction as an AuditEvent with every patient it touched: one entity per patient, each with
    the access types under which that patient's data was reached (a search can touch many)."""
    types = sorted({a.access_type for a in accesses})
    event = _audit_event_json(
        r.seq,
        r.recorded_at,
        r.action,
        r.outcome,
        r.actor_kind,
        r.user_id,
        r.user_name,
        r.unit_id,
        None,
        r.provider_id,
        None,
        None,
        types[0] if len(types) == 1 else None,
        flags=r.flags,
        reason=r.reason,
    )
    by_patient: dict[str, list[str]] = {}
    for a in accesses:
        kinds = by_patient.setdefault(a.patient_id, [])
        if a.access_type not in kinds:
            kinds.append(a.access_type)
    if by_patient:
        event["entity"] = [
            {
                "what": {"reference": f"Patient/{patient}"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
                "extension": [{"url": f"{NARA}/StructureDefinition/access-type", "valueCode": k} for k in kinds],
            }
            for patient, kinds in by_patient.items()
        ]
    # The Consents the access was reached through (consent, emergency assertion, block break; R-LOG-1), and the
    # one an operation made or used.
    assertions = dict.fromkeys([*(a.assertion_id for a in accesses if a.assertion_id), r.assertion_id])
    consents = [
        {
            "what": {"reference": f"Consent/{cid}"},
            "type": {"system": "http://hl7.org/fhir/resource-types", "code": "Consent"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "13"},
        }
        for cid in assertions
        if cid
    ]
    if consents:
        event["entity"] = [*event.get("entity", []), *consents]
    return event


def _audited_provider(actor: Actor) -> str | None:
    """Whose users' accesses an auditor reads: their own care provider's (or care giver's); a system client with
    the policy off reads every provider's (None)."""
    if actor.kind == "system" and actor.policy_off:
        return None
    a = actor.assignment
    if a is None:  # _require_auditor lets no one else through; never every provider's log by accident
        raise FhirError(403, "forbidden", "Reading the access log needs an auditor assignment (loggranskning)")
    return a.provider


def _require_auditor(tx: Tx, action: str = "search") -> Actor:
    """The actor, an auditor whose token's scopes allow ``action`` (read or search) on AuditEvent (403 otherwise)."""
    actor = _policy(tx).actor
    if not (actor.can_review_logs() or (actor.kind == "system" and actor.policy_off)):
        raise FhirError(403, "forbidden", "Reading the access log needs an auditor assignment (loggranskning)")
    actor.scopes.require("AuditEvent", action)
    return actor


def audit_events(tx: Tx, ctx: Context, req: FhirRequest, seq: str | None) -> Outcome:
    """``GET AuditEvent`` and ``GET AuditEvent/{seq}`` served from the log tables (auditors only)."""
    provider = _audited_provider(_require_auditor(tx, "search" if seq is None else "read"))
    _flush_log(ctx)
    conds = [] if provider is None else [audit_event.c.provider_id == provider]
    if seq is not None:
        if not seq.isdigit():
            raise FhirError(404, "not-found", f"AuditEvent/{seq[:40]} is not known")
        conds.append(audit_event.c.seq == int(seq))
    params = dict(req.query)
    if params.get("agent"):
        conds.append(audit_event.c.user_id == params["agent"].split("|")[-1])
    if params.get("patient"):
        pid = params["patient"].split("/")[-1]
        conds.append(audit_event.c.seq.in_(select(audit_access.c.seq).where(audit_access.c.patient_id == pid)))
    for _k, v in [(k, v) for k, v in req.query if k == "date"]:
        prefix, value = (v[:2], v[2:]) if v[:2] in ("ge", "gt", "le", "lt") else ("eq", v)
        when = parse_instant(value)
        if when is None:
            raise FhirError(400, "invalid", f"date must be a FHIR date or dateTime, not {v[:40]!r}")
        col = audit_event.c.recorded_at
        conds.append(
            {"ge": col >= when, "gt": col > when, "le": col <= when, "lt": col < when}.get(prefix, col >= when)
        )
    count = min(int(params.get("_count", "50")) if str(params.get("_count", "50")).isdigit() else 50, 1000)
    rows = tx.conn.execute(select(audit_event).where(*conds).order_by(audit_event.c.seq.desc()).limit(count)).all()
    if seq is not None and not rows:
        raise FhirError(404, "not-found", f"AuditEvent/{seq} is not known")
    access: dict[int, list[Any]] = {}
    found = select(audit_access).where(audit_access.c.seq.in_([x.seq for x in rows])).order_by(audit_access.c.seq)
    for a in tx.conn.execute(found):
        access.setdefault(a.seq, []).append(a)
    events = [_event_with_accesses(r, access.get(r.seq, [])) for r in rows]
    shown = list(dict.fromkeys(a.patient_id for r in rows for a in access.get(r.seq, [])))
    if seq is not None:
        return Outcome(200, events[0], logs_shown=shown)
    return Outcome(
        200,
        {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(events),
            "entry": [
                {"fullUrl": f"{ctx.base_url}/AuditEvent/{e['id']}", "resource": e, "search": {"mode": "match"}}
                for e in events
            ],
        },
        logs_shown=shown,
    )


@operation("log-review")
def log_review(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    actor = _require_auditor(tx)
    _flush_log(ctx)
    params = _params(req)
    start, end = _period(params)
    default_start, default_end = audit.default_period(30)
    start, end = start or default_start, end or default_end
    if req.method == "POST" and params.get("finding"):
        events = [int(x) for x in str(params.get("events", "")).split(",") if x.strip().isdigit()]
        if not events or not params.get("action"):
            raise FhirError(400, "required", "A completed review needs events, finding and action")
        provider = _audited_provider(actor)
        known = select(audit_event.c.seq).where(audit_event.c.seq.in_(sorted(set(events))))
        if provider is not None:
            known = known.where(audit_event.c.provider_id == provider)
        found = {int(r.seq) for r in tx.conn.execute(known)}
        missing = sorted(set(events) - found)
        if missing:  # another provider's record reads as one that does not exist (it is none of the reviewer's)
            raise FhirError(
                400, "invalid", f"Not records of this reviewer's log: {', '.join(map(str, missing[:20]))}", ["events"]
            )
        review_id = audit.store_review(
            tx.conn, actor.subject, events, str(params["finding"]), str(params["action"]), (start, end)
        )
        return Outcome(
            201, {"resourceType": "Parameters", "parameter": [{"name": "review", "valueInteger": review_id}]}
        )
    try:
        sample = float(params.get("sampleRate", 0.05))
    except ValueError:
        raise FhirError(400, "invalid", "sampleRate must be a number from 0 to 1", ["sampleRate"]) from None
    if not 0 <= sample <= 1:
        raise FhirError(400, "invalid", "sampleRate must be a number from 0 to 1", ["sampleRate"])
    vip = [v for v in str(params.get("vip", "")).split(",") if v]
    seed = int(params["seed"]) if str(params.get("seed", "")).isdigit() else None
    items = run_review(tx, start, end, vip=vip, sample_rate=sample, seed=seed, provider=_audited_provider(actor))
    entries = [
        {
            "resource": _audit_event_json(
                i.seq,
                i.recorded_at,
                i.action,
                "permit",
                "staff",
                i.user_id,
                i.user_name,
                i.unit_id,
                None,
                None,
                None,
                i.patient_id,
                None,
                flags=",".join(i.criteria),
            )
        }
        for i in items
    ]
    return Outcome(
        200,
        {"resourceType": "Bundle", "type": "collection", "total": len(entries), "entry": entries},
        logs_shown=list(dict.fromkeys(i.patient_id for i in items if i.patient_id)),
    )
