"""The gate every request passes: identity → policy → (store) → audit.

:class:`Gate` turns a bearer token into an :class:`~nara.security.actors.Actor`, gives each transaction
its :class:`~nara.security.policy.Policy`, writes the audit record of reads in the same transaction
before the response is sent, audits every write through a store hook, and logs denials.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import Alias, false, not_, select

from nara.fhir.identifiers import InvalidIdentifier, normalize_system, parse_personal_identity
from nara.fhir.outcome import FhirError
from nara.fhir.searchparams import compartment_patient, extract
from nara.security import audit
from nara.security.actors import SYSTEM, Actor
from nara.security.audit_commit import GroupCommit
from nara.security.audit_outbox import Outbox, OutboxBacklog, OutboxError, database_tag, drain
from nara.security.devidp import DEV_ISSUER, DevIdentityProvider, key_set, signing_key
from nara.security.identity import ActorResolver
from nara.security.policy import ACTIVE_POLICY, Policy
from nara.security.rules import (
    HOUSEHOLD_TYPES,
    household_of,
    in_protected_household,
    may_be_protected,
    protected_by_label,
    protected_now,
    without_protected_address,
    without_protected_elements,
    without_staff_private_data,
)
from nara.security.schema import pdl_rule
from nara.security.sealer import EXTERNAL, SealerThread
from nara.security.tokens import Issuer, TokenValidator, unauthorized
from nara.store.crud import Stored, Tx
from nara.store.database import json_out
from nara.store.patients import patients_with_identifiers
from nara.store.schema import resource
from nara.store.store import Store

log = logging.getLogger("nara.security")
READ_ACTIONS = {"GET": "read", "HEAD": "read"}
# A refused search's denial names at most this many of the patients it asked about (a form body may list many
# more than any permitted search takes; the record names the first ones, and the request line says what it was).
MAX_DENIED_PATIENTS = 1000


@dataclass
class SecuritySettings:
    enabled: bool = True
    dev_idp: bool = False
    audience: str = "nara"
    # Trusted external issuers: (issuer, OIDC discovery URL)
    issuers: list[tuple[str, str]] = field(default_factory=list)
    dev_clients: dict[str, str] = field(default_factory=dict)
    log_extract_names: bool = True
    emergency_hours: int = 4
    seal_interval_seconds: float = 1.0
    # "thread": this process seals beside the app; "external": another process does (nara serve starts one).
    sealer: str = "thread"
    # R-LOG-2: audit records cannot be changed, nor deleted before this many days (NARA_AUDIT_RETENTION_YEARS).
    audit_retention_days: int = 1827
    # The read-audit outbox's directory (NARA_AUDIT_OUTBOX; nara serve's default on PostgreSQL): reads on
    # PostgreSQL append their record there before answering, and the sealer drains it into the log. None:
    # every read's record is written to the database before the read answers.
    audit_outbox: str | None = None
    drain_interval_seconds: float = 0.2  # how often the sealer drains the outbox (NARA_AUDIT_DRAIN_SECONDS)
    # How long a log reader's request drains the outbox before it answers 503 (a backlog, after the sealer was
    # down): NARA_AUDIT_READER_DRAIN_SECONDS.
    reader_drain_seconds: float = 5.0


def bearer_token(authorization: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header (None for another scheme or no token)."""
    scheme, _, token = authorization.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def redact(tx: Tx, st: Stored) -> Stored:
    """Never show the address of a patient with protected identity (R-ID-3), nor her household's (her
    RelatedPersons'); show a staff member's private data (personnummer, home address, birth date) only to
    directory administrators and system clients."""
    if st.content is None:
        return st
    if st.res_type in HOUSEHOLD_TYPES:
        policy: Policy | None = tx.policy
        if not in_protected_household(tx.conn, st.resource(), policy is None or policy.rules_available, st.patient_id):
            return st
        return _shown(st, without_protected_elements)
    if st.res_type == "Practitioner":
        policy = current_policy.get()
        actor = policy.actor if policy is not None else None
        if actor is None or actor.policy_off or actor.kind == "system" or actor.is_admin():
            return st
        return _shown(st, without_staff_private_data)
    if st.res_type != "Patient":
        return st
    if not may_be_protected(st.content):
        return st
    return _shown(st, without_protected_address)


def redact_versions(tx: Tx, versions: list[Stored]) -> list[Stored]:
    """Versions from a history or a vread, as the current version governs them: every version of a patient who has
    protected identity now hides what a protected patient never shows, whatever its own labels said (R-ID-3);
    the address it had before the protection came is the one the protection is for. (After ``redact``.)"""
    pids = {st.res_id for st in versions if st.res_type == "Patient" and st.content is not None}
    hidden = {("Patient", p) for p in protected_by_label(tx.conn, pids)} if pids else set()
    # A RelatedPerson's: the household its current version belongs to (it may have been moved into one).
    policy: Policy | None = tx.policy
    readable = policy is None or policy.rules_available
    for rid in {st.res_id for st in versions if st.res_type in HOUSEHOLD_TYPES and st.content is not None}:
        current = tx.conn.execute(
            select(json_out(resource.c.content, tx.pg)).where(
                resource.c.res_type == "RelatedPerson", resource.c.res_id == rid, not_(resource.c.deleted)
            )
        ).scalar()
        if current is not None and protected_now(tx.conn, household_of(tx.conn, orjson.loads(current)), readable):
            hidden.add(("RelatedPerson", rid))
    if not hidden:
        return versions
    return [
        _shown(st, without_protected_elements) if (st.res_type, st.res_id) in hidden and st.content is not None else st
        for st in versions
    ]


def _shown(st: Stored, view: Callable[[dict[str, Any]], dict[str, Any]]) -> Stored:
    """``st`` as ``view`` shows its resource (``st`` itself when the view leaves it whole)."""
    res = st.resource()
    clean = view(res)
    return st if clean is res else replace(st, content=orjson.dumps(clean).decode(), _parsed=clean)


class Gate:
    def __init__(self, store: Store, settings: SecuritySettings) -> None:
        self.store = store
        self.settings = settings
        issuers = [Issuer(iss, settings.audience, discovery_url=url) for iss, url in settings.issuers]
        self.devidp: DevIdentityProvider | None = None
        if settings.dev_idp:
            key = signing_key()
            self.devidp = DevIdentityProvider(key, settings.audience, settings.dev_clients)
            issuers.append(Issuer(DEV_ISSUER, settings.audience, keys=key_set(key)))
        self.validator = TokenValidator(issuers)
        self.resolver = ActorResolver(store)
        self.group_commit = GroupCommit()
        # The read-audit outbox (PostgreSQL only: on SQLite a read's record is one local insert anyway).
        self.outbox = (
            Outbox(Path(settings.audit_outbox), lambda: database_tag(store.engine))
            if settings.audit_outbox and store.postgres
            else None
        )
        # One audit hook per store: a second gate on the same store (a second app) replaces the first one's
        # hook instead of auditing every write twice. The hook reads everything from the transaction's policy.
        store.write_hooks[:] = [h for h in store.write_hooks if not isinstance(getattr(h, "__self__", None), Gate)]
        store.write_hooks.append(self._audit_write)
        self._sealer = SealerThread(
            store.engine,
            settings.seal_interval_seconds,
            self.outbox.directory if self.outbox else None,
            settings.drain_interval_seconds,
        )

    # ---- identity ------------------------------------------------------------------------------
    def authenticate(self, authorization: str | None, req: Any = None) -> Actor:
        """The actor of a request's bearer token. A valid token whose claims are refused (a guardian of a child
        past 13, an assignment that is not the user's) is a denial, logged for ``req`` like any other."""
        if not self.settings.enabled:
            return SYSTEM
        if not authorization:
            raise unauthorized("Authentication required: send a bearer token")
        token = bearer_token(authorization)
        if token is None:
            raise unauthorized("Authentication required: use the Bearer scheme")
        claims = self.validator.validate(token)
        try:
            return self.resolver.resolve(claims)
        except FhirError as exc:
            if exc.status == 403 and req is not None:
                self.audit_refused_request(_claimed_actor(claims), req, exc)
            raise

    def knows_token(self, authorization: str | None) -> bool:
        """Whether the request's token was verified a moment ago, so that authenticating it asks no identity
        provider for its keys (a network call, which must not hold the server's event loop)."""
        if not self.settings.enabled:
            return True
        token = bearer_token(authorization or "")
        return token is not None and self.validator.recently_verified(token)

    def policy(self, actor: Actor, rules_available: bool = True) -> Policy:
        return Policy(actor, audit.now_utc(), rules_available)

    # ---- audit ---------------------------------------------------------------------------------
    def accesses(self, tx: Tx, policy: Policy, rows: Iterable[Stored]) -> list[audit.Access]:
        by_key: dict[tuple[str, str | None, str | None], Stored] = {}
        for st in rows:
            if st.patient_id:
                by_key.setdefault((st.patient_id, st.owner_org, st.owner_unit), st)
        a = policy.actor.assignment
        # Whether access was by consent or emergency matters only for other providers' rows.
        other_providers = {pid for pid, org, _unit in by_key if a is not None and org is not None and org != a.provider}
        emergency = self._emergency_only(tx, policy, other_providers)
        others = {pid for pid, _org, unit in by_key if a is not None and unit is not None and unit != a.unit}
        broken = policy.broken_owners(tx, others)
        # Protected identity is marked by the audit insert itself (audit.record).
        typed = [
            (
                pid,
                org,
                unit,
                policy.access_type(org, unit, pid in emergency, bool(broken and {(pid, org), (pid, unit)} & broken)),
            )
            for (pid, org, unit) in by_key
        ]
        used = policy.assertions(tx, typed)  # the consent, emergency assertion or break behind each (R-LOG-1)
        return [audit.Access(p, org, unit, kind, assertion_id=used.get((p, org, unit))) for p, org, unit, kind in typed]

    def _emergency_only(self, tx: Tx, policy: Policy, patient_ids: set[str]) -> set[str]:
        """Patients whose other providers' data this staff member reaches by emergency access, not consent."""
        a = policy.actor.assignment
        if a is None or not patient_ids or not policy.rules_available:
            return set()
        if patient_ids <= policy.patient_facts.keys():  # already read by a patient-scoped search
            return {p for p in patient_ids if policy.reached_by_emergency(tx, p)}
        rows = tx.conn.execute(
            select(pdl_rule.c.patient_id, pdl_rule.c.kind).where(
                pdl_rule.c.patient_id.in_(sorted(patient_ids)),
                pdl_rule.c.kind.in_(["emergency", "consent"]),
                policy.mine_in_force(),
            )
        ).all()
        with_consent = {p for p, k in rows if k == "consent"}
        return {p for p, k in rows if k == "emergency"} - with_consent

    def audit_interaction(
        self,
        tx: Tx,
        action: str,
        request: str,
        rows: list[Stored],
        resource_type: str | None,
        resource_id: str | None,
        flags: set[str] | None = None,
        reason: str | None = None,
        assertion_id: str | None = None,
        counted: Iterable[str] = (),
        refused: Iterable[str] = (),
        logs_shown: Iterable[str] = (),
    ) -> None:
        """One record of a read-like interaction: the patients of ``rows`` by owner and access type, the
        ``counted`` patients, whose data a search counted without returning it (``_summary=count``), and the
        ``refused`` ones, asked about without a care relationship (access type denied), and those whose access
        log it showed (an auditor's review: access type log-review)."""
        policy: Policy = tx.policy
        # A count of the patient's data; for the log itself (AuditEvent?patient=), an auditor's review of it.
        counted_as = "log-review" if resource_type == "AuditEvent" else "count"
        rec = audit.AuditRecord(
            action=action,
            outcome="permit",
            actor=policy.actor,
            resource_type=resource_type,
            resource_id=resource_id,
            request=request,
            reason=reason,
            assertion_id=assertion_id,
            flags=set(flags or ()),
            accesses=[
                *self.accesses(tx, policy, rows),
                *(audit.Access(p, None, None, counted_as) for p in counted),
                *(audit.Access(p, None, None, "denied") for p in refused),
                *(audit.Access(p, None, None, "log-review") for p in logs_shown),
            ],
            lookup_protected=policy.rules_available,
        )
        if not policy.rules_available and rec.accesses:
            # The rule store cannot be read (R-BLK-5): protected identity from the Patient resources (R-ID-3).
            protected = protected_by_label(tx.conn, {x.patient_id for x in rec.accesses})
            for x in rec.accesses:
                x.protected = x.patient_id in protected
        if tx.autocommit and tx.pg and rec.lookup_protected:
            if self.outbox is not None:
                # A read on PostgreSQL: in the outbox's file before the request answers; drained into the log.
                try:
                    self.outbox.append(rec, audit.now_utc())
                except OutboxError as exc:
                    log.error("%s", exc)
                    raise FhirError(500, "exception", "The access could not be logged; nothing is shown") from exc
            elif self.store.on_loop():
                # A request on the event loop cannot wait on the group's lock: its holder may be another request
                # on the same loop, which could then never finish writing. Its own statement instead.
                audit.record(tx.conn, rec)
            else:
                # Written before the request answers, together with concurrent reads' records.
                self.group_commit.record(tx.conn, rec)
        else:
            audit.record(tx.conn, rec)

    def _audit_write(self, tx: Tx, method: str, st: Stored) -> None:
        """Write hook: queue each write made for a request; the queue becomes one record at flush time."""
        if tx.policy is None:
            return  # operator tools writing directly are not requests
        queue: list[tuple[str, Stored]] | None = getattr(tx, "audit_writes", None)
        if queue is None:
            queue = []
            tx.audit_writes = queue  # type: ignore[attr-defined]
            tx.flush_hooks.append(lambda: self._flush_writes(tx))
        queue.append((method, st))

    def _flush_writes(self, tx: Tx) -> None:
        """One audit record for the writes of a transaction since the last flush (in that transaction)."""
        queue: list[tuple[str, Stored]] = tx.audit_writes  # type: ignore[attr-defined]
        if not queue:
            return
        writes, queue[:] = list(queue), []
        policy: Policy = tx.policy
        names = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
        actions = [names.get(m, m.lower()) for m, _ in writes]
        action = actions[0] if len(set(actions)) == 1 else "transaction"
        accesses = [
            audit.Access(
                st.patient_id,
                st.owner_org,
                st.owner_unit,
                policy.access_type(st.owner_org, st.owner_unit),
                action=None if act == action else act,
            )
            for (_, st), act in zip(writes, actions, strict=True)
            if st.patient_id
        ]
        first = writes[0][1]
        resource_id = first.res_id if len(writes) == 1 else ",".join(st.res_id for _, st in writes[:20])
        request = f"{writes[0][0]} {first.res_type}/{first.res_id}" if len(writes) == 1 else f"{len(writes)} writes"
        audit.record(
            tx.conn,
            audit.AuditRecord(
                action,
                "permit",
                policy.actor,
                first.res_type if len({st.res_type for _, st in writes}) == 1 else None,
                resource_id,
                request,
                accesses=accesses,
            ),
        )

    def audit_refused_request(self, actor: Actor, req: Any, error: FhirError) -> None:
        """The denial record of a refused request, naming the patient whose data it tried to reach, where the
        request says it: the patient of the resource read or written (as stored, else as the body says), or the
        patients searched for."""
        rtype, rid = _target(req.path)
        method = req.method.upper()
        body = req.body if method in ("PUT", "POST") and isinstance(req.body, dict) else None
        if method == "PUT" and rid is None and rtype and body and isinstance(body.get("id"), str):
            rid = body["id"][:64]  # a conditional update naming the resource it would write
        patients: list[str] = []
        if rtype == "Patient" and rid:
            patients = [rid]
        elif rtype and rid:
            try:
                with self.store.transaction(write=False) as tx:
                    found = tx.conn.execute(
                        select(resource.c.patient_id).where(resource.c.res_type == rtype, resource.c.res_id == rid)
                    ).first()
                patients = [found.patient_id] if found is not None and found.patient_id else []
            except FhirError:
                patients = []
            if not patients and body is not None:
                patients = _body_patient(body, rtype)  # an update-as-create
        elif method == "POST" and rtype and body is not None and interaction_kind(method, req.path) is None:
            patients = _body_patient(body, rtype)  # a create
        else:
            # Every patient a refused search names (URL, form body, lists, identifiers), as a permitted search's
            # record reads them.
            patients = _searched_patients(req)
            identifiers = _identifier_values(req)
            try:
                if identifiers:  # no transaction for the usual refusal
                    with self.store.transaction(write=False) as tx:
                        named = patients_with_identifiers(tx.conn, identifiers, MAX_DENIED_PATIENTS)
                    patients = list(dict.fromkeys(patients + named))
            except FhirError:
                pass  # the denial is logged with the patients the request names by id
            patients = patients[:MAX_DENIED_PATIENTS]
        self.audit_denial(
            actor,
            interaction_kind(req.method.upper(), req.path) or req.method.lower(),
            f"{req.method} {req.path}",
            error,
            rtype,
            rid,
            patients,
        )

    def audit_denial(
        self,
        actor: Actor,
        action: str,
        request: str,
        error: FhirError,
        resource_type: str | None = None,
        resource_id: str | None = None,
        patients: Sequence[str] = (),
    ) -> None:
        try:
            with self.store.transaction() as tx:
                accesses = [audit.Access(p, None, None, "denied") for p in patients]
                audit.record(
                    tx.conn,
                    audit.AuditRecord(
                        action,
                        "deny",
                        actor,
                        resource_type,
                        resource_id,
                        request,
                        reason=error.issues[0].diagnostics[:500],
                        accesses=accesses,
                    ),
                )
        except FhirError:
            log.warning("could not log a denial for %s", actor.subject)

    def prepare_read_audit(self, tx: Tx, req: Any) -> None:
        """Context hook before an interaction: a read by id on PostgreSQL's autocommit read pool gets its
        record written by the read's own statement (``audit.RecordingRead``; one round trip, not two)."""
        policy: Policy | None = tx.policy
        if policy is None or not (tx.autocommit and tx.pg and policy.rules_available) or self.outbox is not None:
            return  # with the outbox, a read's record is appended after the read (audit_read)
        if interaction_kind(req.method.upper(), req.path) != "read":
            return
        request, rtype, rid, flags = _read_interaction(tx, req)
        if rtype is None or rid is None:
            return
        rec = audit.AuditRecord("read", "permit", policy.actor, rtype, rid, request, flags=flags)
        tx.read_recorder = audit.RecordingRead(rtype, rid, rec, policy)

    def audit_read(self, tx: Tx, req: Any, out: Any) -> None:
        """Context audit hook: one record per read-like interaction, in its transaction (R-LOG-1)."""
        action = interaction_kind(req.method.upper(), req.path)
        if action is None and out.returned:
            action = "read"  # a write that returned what it did not write (a conditional create's match)
        if action is None or tx.policy is None or out.recorded:
            return
        recorder = tx.read_recorder
        tx.read_recorder = None
        if isinstance(recorder, audit.RecordingRead) and recorder.seq is not None:
            return  # written by the read itself
        request, rtype, rid, flags = _read_interaction(tx, req)
        rows = list(out.returned)
        listing = action in ("search", "operation") and _is_searchset(out.body)  # a search, $everything, $lastn
        asked = list(dict.fromkeys(_searched_patients(req) + _identified_patients(tx, req))) if listing else []
        counted: list[str] = []
        if action == "search" and not rows and isinstance(out.body, dict) and (out.body.get("total") or 0) > 0:
            counted = asked  # a count about a patient tells about the patient's data
        outside = self._outside_care(tx, asked)
        if outside:
            flags.add("outside-care-relationship")  # asked about patients I have no care relationship with
        self.audit_interaction(
            tx, action, request, rows, rtype, rid, flags, counted=counted, refused=outside, logs_shown=out.logs_shown
        )
        if listing:
            self.signal_blocked(tx, asked, out.body)

    def _outside_care(self, tx: Tx, asked: list[str]) -> list[str]:
        """The patients a staff member's search (or $everything, $lastn) asked about without a care relationship
        at their unit (R-ACC-1). Their data was not shown; the attempt is logged and
        flagged for the log review. The rules a pinned search read are reused; others are read here."""
        policy: Policy = tx.policy
        actor = policy.actor
        if actor.kind != "staff" or actor.policy_off or actor.assignment is None or not policy.rules_available:
            return []
        return [p for p in asked[:MAX_DENIED_PATIENTS] if not policy.has_relation_with(tx, p)]

    def signal_blocked(self, tx: Tx, asked: list[str], bundle: dict[str, Any]) -> None:
        """Tell the user that blocked information exists, without saying where (R-BLK-2), for the patients the
        search names (``_searched_patients``: as the audit record reads them)."""
        policy: Policy = tx.policy
        actor = policy.actor
        a = actor.assignment
        if actor.kind != "staff" or a is None or not policy.rules_available:
            return
        patients = set(asked)
        if not patients:
            return
        known = [policy.patient_facts[p] for p in patients if p in policy.patient_facts]
        # When the search already read these patients' rules, return early if no block could hide anything.
        if len(known) == len(patients) and not any(
            r.kind == "block" and r.org not in (a.unit, a.provider) for rows in known for r in rows
        ):
            return
        blocks = tx.conn.execute(
            select(pdl_rule.c.id)
            .where(
                pdl_rule.c.kind == "block",
                pdl_rule.c.patient_id.in_(sorted(patients)),
                pdl_rule.c.org.not_in([a.unit, a.provider]),
            )
            .limit(1)
        ).first()
        if blocks is None:
            return
        # Whether any of these patients' data that I would otherwise read is blocked: of any type, whatever the
        # search asked for. Counting with the search's own criteria would answer "is there blocked data with
        # this code, from that provider?", which tells content and source.
        rows = _BLOCKED_ROWS
        if len(patients) == 1:
            # One patient: the suppressed rows by owner and time from the patient's rules (no subqueries).
            (patient,) = patients
            cond = policy.pinned_filter(tx, rows, patient, suppressed=True)
            where = [rows.c.patient_id == patient]
        else:
            cond = policy.suppressed_filter(rows)
            where = [rows.c.patient_id.in_(sorted(patients))]
        found = select(rows.c.rid).where(*where, rows.c.deleted == false(), cond).limit(1) if cond is not None else None
        hidden = found is not None and tx.conn.execute(found).first() is not None
        if hidden:
            issue = {
                "severity": "information",
                "code": "suppressed",
                "diagnostics": "Det finns spärrad information som inte visas. Blocked information exists and is not "
                "shown; where it is kept can be revealed only in an emergency or with the patient's consent "
                "($break-block).",
            }
            for entry in bundle.setdefault("entry", []):
                if entry.get("search", {}).get("mode") == "outcome":
                    entry["resource"]["issue"].append(issue)
                    return
            bundle["entry"].append(
                {"resource": {"resourceType": "OperationOutcome", "issue": [issue]}, "search": {"mode": "outcome"}}
            )

    @staticmethod
    def rules_unreadable(exc: FhirError) -> bool:
        """Whether a failure came from reading the consent/block store (pdl_rule)."""
        cause = exc.__cause__
        return exc.status >= 500 and cause is not None and "pdl_rule" in str(cause)

    def drain_outbox(self) -> None:
        """Bring the records waiting in this host's outbox into the log: a log reader calls it first, so that
        an access made a moment ago on this host is in what it shows. A backlog larger than the request may
        take (``reader_drain_seconds``) gives 503 with Retry-After, not a log without its latest accesses: what
        was drained stays, and the sealer goes on with the rest."""
        if self.outbox is None:
            return
        try:
            drain(self.store.engine, self.outbox.directory, time.monotonic() + self.settings.reader_drain_seconds)
        except OutboxBacklog as backlog:
            raise FhirError(
                503,
                "transient",
                "The access log is still taking in recent accesses from this server's outbox "
                f"({backlog.waiting_bytes // 1024 + 1} kB waiting); nothing is lost. Try again in a minute.",
                headers={"Retry-After": "60"},
            ) from None

    # ---- sealing -------------------------------------------------------------------------------
    def start_sealer(self) -> None:
        if self.settings.sealer != EXTERNAL:
            self._sealer.start()

    def stop_sealer(self) -> None:
        self._sealer.stop()
        if self.outbox is not None:
            self.outbox.close()


# The rows a block hides, as the signal looks for them (one alias: the policy's filters are cached per alias).
_BLOCKED_ROWS: Alias = resource.alias("blk")  # type: ignore[assignment]


# ---- per-request wiring ---------------------------------------------------------------------------
def _claimed_actor(claims: dict[str, Any]) -> Actor:
    """Who a verified token says the user is, for the log of a refusal before the actor could be resolved."""
    kind = str(claims.get("nara_kind") or claims.get("actor_kind") or "staff")[:12]
    client = claims.get("client_id") or claims.get("azp")
    subject = str(claims.get("sub", ""))[:64]
    if kind in ("citizen", "proxy"):
        # A person is logged by the 12 digits of her number, as the resolver names her (R-ID-1); an invalid
        # number as the token wrote it.
        with suppress(InvalidIdentifier):
            subject = parse_personal_identity(subject).value
    return Actor(
        kind=kind,
        subject=subject,
        client_id=str(client)[:64] if client else None,
        assignment=None,
    )


def _searched_patients(req: Any) -> list[str]:
    """The patients a search (or an operation on a patient) names: the patient of a compartment path
    (``Patient/X/Observation``, ``Patient/X/$everything``) and the values of ``patient`` and ``subject`` (bare or
    with the type modifier ``:Patient``), or of ``_id`` in a search of Patient itself; a value or a list, in the
    URL or a form-encoded POST _search body. A reference to another type, another modifier (``:not``,
    ``:missing``) or a chain names no patient."""
    parts = [p for p in req.path.strip("/").split("/") if p]
    found: list[str] = []
    if len(parts) >= 3 and parts[0] == "Patient" and not parts[1].startswith(("$", "_")):
        found.append(parts[1][:64])
    names = ("patient", "subject", "_id") if _searches_patients(req) else ("patient", "subject")
    for k, v in _search_parameters(req):
        name, _, modifier = k.partition(":")
        if name not in names or modifier not in ("", "Patient"):
            continue
        for one in v.split(","):
            segments = one.strip().split("/")
            if len(segments) > 1 and segments[-2] != "Patient":
                continue  # a reference to another type (or to a version)
            pid = segments[-1][:64]
            if pid and pid not in found:
                found.append(pid)
    return found


# Search parameters that name patients by an identifier (a personnummer, say): in a search of Patient itself, and
# chained from a reference to the patient.
_CHAINED_IDENTIFIERS = frozenset(
    f"{ref}{modifier}.identifier" for ref in ("patient", "subject") for modifier in ("", ":Patient")
)


def _identifier_values(req: Any) -> list[tuple[str | None, str]]:
    """The (system, value) identifiers by which a search names patients: ``Patient?identifier=`` and
    ``Observation?subject.identifier=`` (a personnummer, say)."""
    of_patients = _searches_patients(req)
    wanted: list[tuple[str | None, str]] = []
    for k, v in _search_parameters(req):
        if k in _CHAINED_IDENTIFIERS or (of_patients and k == "identifier"):
            for one in v.split(","):
                system, sep, code = one.strip().rpartition("|")
                if code:
                    wanted.append((normalize_system(system) if sep and system else None, code))
    return wanted


def _identified_patients(tx: Tx, req: Any) -> list[str]:
    """The patients a search names by identifier, found in the search index whether or not the user may see them:
    the record says about whom the user asked."""
    return patients_with_identifiers(tx.conn, _identifier_values(req), MAX_DENIED_PATIENTS)


def _searches_patients(req: Any) -> bool:
    """Whether the request is a search of Patient itself (where ``_id`` and ``identifier`` name patients)."""
    return [p for p in req.path.strip("/").split("/") if p] in (["Patient"], ["Patient", "_search"])


def _body_patient(body: dict[str, Any], rtype: str) -> list[str]:
    """The patient a refused create or update's body is about (its Patient compartment), if it says."""
    if body.get("resourceType") != rtype or not isinstance(rtype, str):
        return []
    try:
        patient = compartment_patient(body, extract(body))
    except Exception:  # a body too broken to index names no one; the denial is still logged
        return []
    return [patient[:64]] if patient else []


def _is_searchset(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "Bundle" and body.get("type") == "searchset"


def _search_parameters(req: Any) -> list[tuple[str, str]]:
    """A search's parameters: the URL's, and for POST _search those of its form body."""
    form = req.body if req.method.upper() == "POST" and isinstance(req.body, list) else []
    return [*req.query, *form]


def _target(path: str) -> tuple[str | None, str | None]:
    """The resource type and id a request's path names (None where it names an operation or history)."""
    parts = [p for p in path.strip("/").split("/") if p]
    rtype = parts[0] if parts and not parts[0].startswith(("$", "_")) else None
    rid = parts[1] if len(parts) > 1 and not parts[1].startswith(("$", "_")) else None
    return rtype, rid


def _read_interaction(tx: Tx, req: Any) -> tuple[str, str | None, str | None, set[str]]:
    """The log fields of a read-like request: request line, resource type and id, flags."""
    rtype, rid = _target(req.path)
    parameters = _search_parameters(req)
    request = f"{req.method} {req.path}"
    if parameters:
        request += "?" + "&".join(f"{k}={v}" for k, v in parameters)
    flags = {"active-choice"} if tx.policy.actor.other_units_chosen else set()
    return request, rtype, rid, flags


current_policy = ACTIVE_POLICY  # the request's policy; the cached SQL filters read their values from it


def attach_policy(tx: Tx) -> None:
    """Store transaction hook: every transaction opened for a request carries that request's policy."""
    policy = current_policy.get()
    if policy is not None:
        tx.policy = policy
        tx.actor = policy.actor


def interaction_kind(method: str, path: str) -> str | None:
    """The audit action of a read-like interaction (None for writes, which the write hook audits)."""
    parts = [p for p in path.strip("/").split("/") if p]
    if "$" in path and any(p.startswith("$") for p in parts):  # (most paths have none: one look, in C)
        return "operation"
    if method == "POST" and parts and parts[-1] == "_search":
        return "search"
    if method not in ("GET", "HEAD"):
        return None
    if "_history" in parts:
        return "vread" if parts[-1] != "_history" else "history"
    if len(parts) == 2 and parts[1] != "_search":
        return "read"
    if parts == ["metadata"]:
        return None
    return "search"
