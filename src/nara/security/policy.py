"""The one decision point: who may read and write which rows (Patientdatalagen, SVOD).

The read policy is a SQL condition on a ``resource`` row (alias ``a``) that the store adds to every
query it runs for the actor: reads by id, searches (and their totals, paging and includes), history,
``$everything``, ``$lastn`` and export. Nothing the actor may not see is loaded into the request.

Staff (one assignment: unit U, care provider P, practitioner E), reading a row owned by (org, unit):

- rows without a patient: directory and catalogue types for everyone; others for their owner provider;
- patient rows need a current care relationship between the patient and U (R-ACC-1); an emergency
  assertion (R-ACC-6) stands in for a consent, never for it (R-ACC-3 (a)); the purpose must be *Vård och
  behandling*;
- own unit (unit = U), or unowned rows: readable;
- another unit of P: only after the active choice (R-ACC-2) with a right of scope VG or SJF, and never
  through a block on that unit;
- another provider (SVOD): right of scope SJF and a consent for U (bound to E or not) covering now, or
  an emergency assertion (R-ACC-3..5); never through a block on that provider or unit;
- blocks (R-BLK-1, -3): a block rule on custodian C (a provider or unit) covers a row owned by C whose
  time is inside the block period and whose information type is not exempted, for readers outside C;
  a step-2 block break for C by E lifts it (R-BLK-2);
- purposes *Kvalitetssäkring* / *Administration*: all rows of P, blocked ones included (R-BLK-6).

Citizens read their own compartment except rows marked not-for-patient; a proxy reads the represented
person's compartment the same way (guardians only until the child turns 13).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime
from functools import partial
from typing import Any, NoReturn, overload

from sqlalchemy import (
    Boolean,
    ColumnElement,
    DateTime,
    String,
    and_,
    bindparam,
    case,
    column,
    exists,
    false,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.selectable import Alias
from sqlalchemy.sql.visitors import InternalTraversal

from nara.fhir.canonical import BASE
from nara.fhir.identifiers import InvalidIdentifier, parse_personal_identity
from nara.fhir.outcome import FhirError
from nara.security.actors import PURPOSE_ADMIN, PURPOSE_CARE, PURPOSE_QUALITY, Actor
from nara.security.identity import care_provider_of
from nara.security.rules import (
    CONSENT_KIND_SYSTEM,
    HOUSEHOLD_TYPES,
    PROTECTED_ELEMENTS,
    block_custodians,
    consent_kind,
    household_of,
    in_protected_household,
    is_personal_identifier,
    is_protected,
    names_guardian,
    patient_asserted,
    ref_id,
    with_patient_asserted,
    with_register_data_of,
    without_protected_elements,
)
from nara.security.schema import care_relation, pdl_rule
from nara.store.crud import Tx
from nara.store.memo import Memo
from nara.store.patients import UNRESOLVED_PATIENT, patients_identified_by
from nara.store.schema import resource, sp_reference, sp_token

SECURITY_SYSTEM = f"{BASE}/CodeSystem/security"
NOT_FOR_PATIENT = "not-for-patient"

# Readable by every authenticated actor: the directory, the service catalogue and knowledge resources.
PUBLIC_TYPES = frozenset(
    {
        "Organization",
        "Location",
        "HealthcareService",
        "Practitioner",
        "PractitionerRole",
        "Endpoint",
        "Medication",
        "MedicationKnowledge",
        "Questionnaire",
        "PlanDefinition",
        "ActivityDefinition",
        "ValueSet",
        "CodeSystem",
        "ConceptMap",
        "StructureDefinition",
        "SearchParameter",
        "OperationDefinition",
        "CapabilityStatement",
        "Library",
        "Measure",
        "ObservationDefinition",
        "SpecimenDefinition",
    }
)
DIRECTORY_TYPES = frozenset(
    {"Organization", "Location", "HealthcareService", "Practitioner", "PractitionerRole", "Endpoint"}
)
# Inera information types that a block may exempt (R-BLK-3).
ALERT_TYPES = ("Flag", "AllergyIntolerance")
MEDICATION_TYPES = ("MedicationRequest", "MedicationStatement", "MedicationAdministration", "MedicationDispense")
# What a citizen (or proxy) may write in their own compartment.
CITIZEN_WRITABLE = frozenset({"Observation", "QuestionnaireResponse", "Communication", "Consent", "DocumentReference"})
CITIZEN_CONSENT_KINDS = frozenset({"svod-consent", "representative", "block"})
# Consent kinds created only by their operations ($emergency-access, $break-block).
OPERATION_ONLY_CONSENTS = frozenset({"emergency", "block-break"})
# Resources that establish a care relationship: a unit may create them for its own unit without one.
CARE_ESTABLISHING = frozenset({"EpisodeOfCare", "Encounter", "CareTeam"})

PUBLIC_LIST = sorted(PUBLIC_TYPES)

# The policy of the request being served. The SQL filters are built once per kind of actor and table and
# then reused: the values that differ between users (unit, provider, practitioner, patient, the moment)
# are bound late, from this variable, when a statement runs.
ACTIVE_POLICY: ContextVar[Policy | None] = ContextVar("nara_active_policy", default=None)
_FILTERS: Memo[tuple[Any, ...], ColumnElement[bool] | None] = Memo(2048)


def _active_value(name: str) -> Any:
    policy = ACTIVE_POLICY.get()
    if policy is None:
        raise RuntimeError("an access-policy filter was executed outside its request (no active policy)")
    return policy.values[name]


def _may_be_consent(rtype: str | None) -> bool:
    """Whether rows of ``rtype`` (None: of any type) may be Consents, which some filters treat apart."""
    return rtype is None or rtype == "Consent"


def _late(name: str, type_: Any = None, expanding: bool = False) -> Any:
    """A bind parameter whose value is read from the active policy when the statement executes. One parameter
    object per name (and type): a filter that names the unit or the moment in several places reads its value
    once a statement, not once a place."""
    key = (name, type(type_).__name__ if type_ is not None else "", expanding)
    found = _LATE.get(key)
    if found is None:
        made = bindparam(
            f"pol_{name}", type_=type_ or String(), expanding=expanding, callable_=partial(_active_value, name)
        )
        found = _LATE.setdefault(key, made)
    return found


_LATE: dict[tuple[str, str, bool], Any] = {}


def _constants(values: list[str] | tuple[str, ...]) -> list[Any]:
    """A fixed list of our own constants (resource type names, codes) written into the SQL text: nothing to bind
    or re-render per execution, and fewer parameters keep the statement within the driver's parse cache."""
    if not all(v.isascii() and v.replace("-", "").isalnum() for v in values):
        raise ValueError("only names and codes of letters, digits and hyphens can be written into the SQL text")
    return [literal_column(f"'{v}'", String()) for v in values]


RowFilter = Callable[[Alias, "str | None"], "ColumnElement[bool] | None"]

# A patient's care relationship at my unit and their access rules, as one constant statement: read for every
# patient-scoped search, so its text never changes (the driver prepares it) and nothing is rebuilt per request.
_PATIENT_RULES = text(
    "SELECT 'care' AS kind, unit, NULL AS org, NULL AS employee, starts, ends, "
    "0 = 1 AS exempt_alerts, 0 = 1 AS exempt_medication "
    "FROM care_relation WHERE patient_id = :patient AND unit = :unit "
    "UNION ALL SELECT kind, unit, org, employee, starts, ends, exempt_alerts, exempt_medication "
    "FROM pdl_rule WHERE patient_id = :patient AND kind IN ('consent', 'emergency', 'block', 'break')"
).columns(
    column("kind", String()),
    column("unit", String()),
    column("org", String()),
    column("employee", String()),
    column("starts", DateTime()),
    column("ends", DateTime()),
    column("exempt_alerts", Boolean()),
    column("exempt_medication", Boolean()),
)


class ShapedCondition(ColumnElement[bool]):
    """A cached read filter whose SQL cache key is the actor's shape, not its expression tree.

    SQLAlchemy derives a statement's cache key by walking the whole expression on every execution; for the
    policy filter (a few hundred nodes) that walk cost more than the rest of a read by id. The filter is
    built once per shape (``Policy._filter``) and every value in it is a constant or bound late from the
    active policy, so the shape identifies its SQL completely and the walk can be skipped.
    """

    inherit_cache = False
    type = Boolean()
    # Traversals (copying, finding children and FROM objects) see the condition; the cache key does not.
    _traverse_internals = [
        ("condition", InternalTraversal.dp_clauseelement),
        ("shape", InternalTraversal.dp_plain_obj),
        ("table", InternalTraversal.dp_clauseelement),
    ]
    _cache_key_traversal = [
        ("shape", InternalTraversal.dp_plain_obj),
        ("table", InternalTraversal.dp_clauseelement),
    ]

    def __init__(self, condition: ColumnElement[bool], shape: tuple[Any, ...], table: Any) -> None:
        self.condition = condition
        self.shape = shape
        self.table = table

    @property
    def _from_objects(self) -> list[Any]:
        return self.condition._from_objects

    def self_group(self, against: Any = None) -> ColumnElement[Any]:
        grouped = self.condition.self_group(against=against)
        if grouped is self.condition:
            return self
        return ShapedCondition(grouped, (*self.shape, "grouped"), self.table)


@compiles(ShapedCondition)
def _compile_shaped(element: ShapedCondition, compiler: Any, **kw: Any) -> str:
    return str(compiler.process(element.condition, **kw))


def _own_unit(columns: Any) -> ColumnElement[bool]:
    """Rows (``columns``: a table's ``.c``) of my own unit, or with no owning unit (late bound)."""
    return or_(columns.owner_unit == _late("unit"), columns.owner_unit.is_(None))


def _other_unit(columns: Any) -> ColumnElement[bool]:
    """Rows of another unit of my care provider (late bound; R-ACC-2)."""
    return and_(columns.owner_org == _late("provider"), columns.owner_unit != _late("unit"))


def _other_provider(columns: Any) -> ColumnElement[bool]:
    """Rows of another care provider or care giver (late bound; R-ACC-3, SVOD)."""
    return and_(columns.owner_org.is_not(None), columns.owner_org != _late("provider"))


def _active(t: Any, now: Any) -> ColumnElement[bool]:
    return and_(or_(t.c.starts.is_(None), t.c.starts <= now), or_(t.c.ends.is_(None), t.c.ends >= now))


MAJORITY_AGE = 18  # an adult authorises a representative (DOMAIN §1.2)


def _age(personal_number: str, now: datetime) -> int:
    """The age today of the person with this personnummer or samordningsnummer (-1 when it is not one)."""
    try:
        return parse_personal_identity(personal_number, today=now.date()).age_on(now.date())
    except InvalidIdentifier:
        return -1


# An access as the log types it: patient, owner provider, owner unit, access type.
AccessKey = tuple[str, str | None, str | None, str]


class Policy:
    """Read filters and write checks for one actor at one moment."""

    def __init__(self, actor: Actor, now: datetime, rules_available: bool = True) -> None:
        self.actor = actor
        self.now = now
        # False when the consent/block store could not be read: fail closed for other units (R-BLK-5).
        self.rules_available = rules_available
        # Set by $emergency-access / $break-block for the one Consent they create.
        self.operation_consent = False
        # Access-rule rows read for patient-scoped searches (pinned_filter), reused for block signalling.
        self.patient_facts: dict[str, list[Any]] = {}
        a = actor.assignment
        types = actor.scopes.readable_types()
        # A staff token whose scopes are all patient/ (a SMART app launched from the record for one patient)
        # reaches only that patient's data, the launch context (actor.patient; none: no patient's data).
        self.launch_bound = actor.kind == "staff" and actor.scopes.patient_only()
        # Values bound late into the cached SQL filters (see ACTIVE_POLICY).
        self.values: dict[str, Any] = {
            "now": now,
            "unit": a.unit if a else "",
            "provider": a.provider if a else "",
            "practitioner": actor.practitioner or "",
            "patient": actor.patient or "",
            "scope_types": sorted(types) if types else [],
        }
        self.shape = (
            actor.kind,
            actor.policy_off,
            a is not None,
            a.purpose if a and a.purpose in (PURPOSE_CARE, PURPOSE_QUALITY, PURPOSE_ADMIN) else "other",
            bool(a and actor.other_units_chosen and (a.has_right("Läsa", "VG") or a.has_right("Läsa", "SJF"))),
            bool(a and a.has_right("Läsa", "SJF")),
            None if types is None else bool(types),
            rules_available,
            actor.patient is not None,
            self.launch_bound,
        )

    @property
    def off(self) -> bool:
        return self.actor.policy_off

    # ---- reading -------------------------------------------------------------------------------
    def row_filter(self, a: Alias, rtype: str | None = None) -> ColumnElement[bool] | None:
        """The rows of ``a`` (of type ``rtype``; None: any type) the actor may read (None: no restriction)."""
        return self._filter(a, False, _may_be_consent(rtype))

    def suppressed_filter(self, a: Alias, rtype: str | None = None) -> ColumnElement[bool] | None:
        """Rows the actor could read but for a block: used only to signal that blocked data exists (the Consent
        part of the row filter does not apply to it, so one filter serves every type)."""
        return self._filter(a, True, False)

    def _filter(self, a: Alias, blocked_rows: bool, consents: bool) -> ColumnElement[bool] | None:
        return _FILTERS.get(
            (self.shape, a, blocked_rows, consents), lambda: self._build_filter(a, blocked_rows, consents)
        )

    def _build_filter(self, a: Alias, blocked_rows: bool, consents: bool) -> ColumnElement[bool] | None:
        cond = self._pdl_filter(a, blocked_rows)
        if consents and cond is not None:
            cond = self._without_others_blocks(a, cond)
        cond = self._with_scope_types(a, cond)
        return ShapedCondition(cond, (self.shape, blocked_rows, consents), a) if cond is not None else None

    def _without_others_blocks(self, a: Alias, cond: ColumnElement[bool]) -> ColumnElement[bool]:
        """``cond`` without the block and block-break Consents of other providers' data: they name the unit or
        provider whose data is blocked, which staff may learn only through $break-block (R-BLK-2). Staff of the
        custodian (my unit or my provider) still read them, to lift a block at the patient's request."""
        if self.actor.kind != "staff" or self.actor.policy_off or self.actor.assignment is None:
            return cond
        kind = sp_token.alias("ck")
        custodian = sp_reference.alias("cc")
        block_consent = exists().where(
            kind.c.rid == a.c.rid,
            kind.c.param == _constants(["category"])[0],
            kind.c.system == CONSENT_KIND_SYSTEM,
            kind.c.code.in_(_constants(["block", "block-break"])),
        )
        mine = exists().where(
            custodian.c.rid == a.c.rid,
            custodian.c.param == "actor",
            custodian.c.target_type == "Organization",
            or_(custodian.c.target_id == _late("unit"), custodian.c.target_id == _late("provider")),
        )
        others = and_(a.c.res_type == _constants(["Consent"])[0], block_consent, not_(mine))
        return and_(cond, not_(others))

    def patient_rules(self, tx: Tx, patient: str) -> list[Any]:
        """The patient's care relationship at my unit and access rules (consents, emergency assertions,
        blocks, breaks), read once per request in one small query."""
        found = self.patient_facts.get(patient)
        if found is not None:
            return found
        asg = self.actor.assignment
        assert asg is not None
        rows = tx.conn.execute(_PATIENT_RULES, {"patient": patient, "unit": asg.unit}).all()
        self.patient_facts[patient] = list(rows)
        return self.patient_facts[patient]

    def _relation_in(self, rows: list[Any]) -> bool:
        """Whether the patient's rules give me a relation: a current care relationship at my unit (R-ACC-1).
        An emergency assertion stands in for a consent, never for the relationship (R-ACC-3 (a))."""
        return any(r.kind == "care" and self._current(r) for r in rows)

    def has_relation_with(self, tx: Tx, patient: str) -> bool:
        """Whether I (staff) have a relation with ``patient``: a current care relationship at my unit, from the
        rules this request read (read now if it did not)."""
        return self._relation_in(self.patient_rules(tx, patient))

    def _current(self, r: Any) -> bool:
        return (r.starts is None or r.starts <= self.now) and (r.ends is None or r.ends >= self.now)

    def _mine(self, r: Any) -> bool:
        asg = self.actor.assignment
        me = self.actor.practitioner or ""
        return bool(asg and r.unit == asg.unit and (r.employee is None or r.employee == me) and self._current(r))

    def reached_by_emergency(self, tx: Tx, patient: str) -> bool:
        """Whether this staff member reaches the patient's other-provider data by emergency, not consent."""
        rows = self.patient_rules(tx, patient)
        emergency = any(r.kind == "emergency" and self._mine(r) for r in rows)
        return emergency and not any(r.kind == "consent" and self._mine(r) for r in rows)

    def _pins_patient_rules(self) -> bool:
        """Whether ``pinned_filter`` works from the patient's rules (staff caring under a readable rule store)."""
        asg = self.actor.assignment
        return self.actor.kind == "staff" and asg is not None and asg.purpose == PURPOSE_CARE and self.rules_available

    def prefetch(self, tx: Tx, patient: str) -> None:
        """Read the patient's rules now, if a patient-scoped search will need them (before its statements run)."""
        if self._pins_patient_rules():
            self.patient_rules(tx, patient)

    def pinned_filter(
        self, tx: Tx, a: Alias, patient: str, suppressed: bool = False, rtype: str | None = None
    ) -> ColumnElement[bool] | None:
        """The read filter for rows that all belong to ``patient`` (a patient-scoped search).

        The patient-level facts (care relationship, consent, emergency assertion, blocks and breaks) are
        the same for every row, so they are read first (``patient_rules``) and the filter keeps only the
        per-row part: a condition on the row's owner and time, without subqueries. Equivalent to
        ``row_filter`` (or, with ``suppressed``, to ``suppressed_filter``) for that patient's rows, and much
        cheaper for PostgreSQL to plan. A patient with no block that concerns me (most) gets a filter built
        once per shape and facts (``_pinned_without_blocks``); blocks are written into a filter per request.
        """
        actor = self.actor
        asg = actor.assignment
        if not self._pins_patient_rules() or asg is None:
            return self.suppressed_filter(a, rtype) if suppressed else self.row_filter(a, rtype)
        consents = _may_be_consent(rtype) and not suppressed
        rows = self.patient_rules(tx, patient)
        me = actor.practitioner or ""
        emergency = any(r.kind == "emergency" and self._mine(r) for r in rows)
        consent = any(r.kind == "consent" and self._mine(r) for r in rows)
        relation = self._relation_in(rows)
        svod = bool(self.shape[5] and (consent or emergency))  # other providers' data (R-ACC-3)
        broken = {r.org for r in rows if r.kind == "break" and r.employee == me and self._current(r)}
        blocks = (
            [r for r in rows if r.kind == "block" and r.org not in (asg.unit, asg.provider) and r.org not in broken]
            if relation
            else []
        )
        if not blocks:
            return self._pinned_without_blocks(a, suppressed, relation, svod, consents)
        conds = []
        for r in blocks:
            parts = [or_(a.c.owner_org == r.org, a.c.owner_unit == r.org)]
            if r.starts is not None:
                parts.append(a.c.last_updated >= r.starts)
            if r.ends is not None:
                parts.append(a.c.last_updated <= r.ends)
            if r.exempt_alerts:
                parts.append(a.c.res_type.not_in(list(ALERT_TYPES)))
            if r.exempt_medication:
                parts.append(a.c.res_type.not_in(list(MEDICATION_TYPES)))
            conds.append(and_(*parts))
        blocked = or_(*conds)
        crossing = self._pinned_crossing(a, svod)
        if suppressed:
            cond: ColumnElement[bool] = and_(or_(*crossing), blocked) if crossing else false()
        else:
            own = _own_unit(a.c)
            cond = or_(own, and_(or_(*crossing), not_(blocked))) if crossing else own
        if consents:
            cond = self._without_others_blocks(a, cond)
        return self._with_scope_types(a, cond)

    def _pinned_without_blocks(
        self, a: Alias, suppressed: bool, relation: bool, svod: bool, consents: bool
    ) -> ColumnElement[bool] | None:
        """The pinned filter of a patient with no block that concerns me (the common case): the same for every
        such patient, so it is built once per shape and these facts, its values bound late (``_filter``)."""
        facts = ("pinned", suppressed, relation, svod, consents)

        def build() -> ColumnElement[bool] | None:
            if not relation or suppressed:
                cond: ColumnElement[bool] = false()
            else:
                cond = or_(_own_unit(a.c), *self._pinned_crossing(a, svod))
                if consents:
                    cond = self._without_others_blocks(a, cond)
            return ShapedCondition(self._with_scope_types(a, cond), (self.shape, *facts), a)

        return _FILTERS.get((self.shape, a, *facts), build)

    def _pinned_crossing(self, a: Alias, svod: bool) -> list[ColumnElement[bool]]:
        """Rows of other units or providers the pinned patient's facts let me reach (before blocks)."""
        crossing = []
        if self.shape[4]:  # other units of the provider, after the active choice (R-ACC-2)
            crossing.append(_other_unit(a.c))
        if svod:  # other providers, with consent or emergency access (R-ACC-3)
            crossing.append(_other_provider(a.c))
        return crossing

    @overload
    def _with_scope_types(self, a: Alias, cond: ColumnElement[bool]) -> ColumnElement[bool]: ...
    @overload
    def _with_scope_types(self, a: Alias, cond: None) -> ColumnElement[bool] | None: ...
    def _with_scope_types(self, a: Alias, cond: ColumnElement[bool] | None) -> ColumnElement[bool] | None:
        """``cond`` (None: every row) limited to the resource types the token's scopes allow and, for a staff token
        with only patient/ scopes, to the launch patient's rows and rows of no patient (late bound)."""
        if self.launch_bound:
            launched = or_(a.c.patient_id.is_(None), a.c.patient_id == _late("patient"))
            cond = launched if cond is None else and_(cond, launched)
        has_types = self.shape[6]
        if has_types is None:
            return cond
        scope_cond = a.c.res_type.in_(_late("scope_types", expanding=True)) if has_types else false()
        return scope_cond if cond is None else and_(scope_cond, cond)

    @contextmanager
    def active(self) -> Iterator[Policy]:
        """Make this the active policy (the server does this for each request)."""
        token = ACTIVE_POLICY.set(self)
        try:
            yield self
        finally:
            ACTIVE_POLICY.reset(token)

    def _pdl_filter(self, a: Alias, blocked_rows: bool) -> ColumnElement[bool] | None:
        actor = self.actor
        if actor.policy_off:
            return false() if blocked_rows else None
        if actor.kind == "system":
            return false() if blocked_rows else None
        public = a.c.res_type.in_(_constants(PUBLIC_LIST))
        if actor.kind in ("citizen", "proxy"):
            if blocked_rows or not actor.patient:
                return false() if blocked_rows else public
            own = and_(a.c.patient_id == _late("patient"), not_(self._not_for_patient(a)), not_(self._withdrawn(a)))
            return or_(public, own)
        assignment = actor.assignment
        if assignment is None:
            return false() if blocked_rows else public
        unit, provider = _late("unit"), _late("provider")
        purpose = assignment.purpose
        non_patient = and_(
            a.c.patient_id.is_(None),
            or_(public, a.c.owner_org.is_(None), a.c.owner_org == provider),
        )
        if purpose in (PURPOSE_QUALITY, PURPOSE_ADMIN):
            if blocked_rows:
                return false()
            # Every patient's rows of my provider, but not the data of a person no Patient is known for (only
            # system clients read that compartment).
            known = and_(a.c.patient_id.is_not(None), a.c.patient_id != UNRESOLVED_PATIENT)
            return or_(non_patient, and_(known, a.c.owner_org == provider))
        if purpose != PURPOSE_CARE:
            return false() if blocked_rows else non_patient
        # Probed per row (index on unit, patient): the cost follows the rows read, not the unit's list size.
        cr = care_relation.alias("cr")
        care = exists().where(
            cr.c.unit == unit, cr.c.patient_id == a.c.patient_id, _active(cr, _late("now", DateTime()))
        )
        if not self.rules_available:
            # Consent and block store unreadable: own-unit data only (R-BLK-5).
            if blocked_rows:
                return false()
            return or_(non_patient, and_(care, _own_unit(a.c)))
        emergency = self._assertion(a.c.patient_id, "emergency")
        relation = care  # an emergency assertion replaces a consent, not the care relationship (R-ACC-3 (a))
        own_unit = _own_unit(a.c)
        allowed_parts = []
        if actor.other_units_chosen and (assignment.has_right("Läsa", "VG") or assignment.has_right("Läsa", "SJF")):
            allowed_parts.append(_other_unit(a.c))
        if assignment.has_right("Läsa", "SJF"):
            allowed_parts.append(and_(_other_provider(a.c), or_(self._assertion(a.c.patient_id, "consent"), emergency)))
        blocked = self._blocked(a)
        if blocked_rows:
            if not allowed_parts:
                return false()
            return and_(a.c.patient_id.is_not(None), relation, or_(*allowed_parts), blocked)
        readable = [own_unit]
        if allowed_parts:
            readable.append(and_(or_(*allowed_parts), not_(blocked)))
        return or_(non_patient, and_(a.c.patient_id.is_not(None), relation, or_(*readable)))

    def _not_for_patient(self, a: Alias) -> ColumnElement[bool]:
        t = sp_token.alias("nfp")
        return exists().where(
            t.c.rid == a.c.rid,
            t.c.param == "_security",
            t.c.system == SECURITY_SYSTEM,
            t.c.code == NOT_FOR_PATIENT,
        )

    def _withdrawn(self, a: Alias) -> ColumnElement[bool]:
        """The row's resource is deleted now. Its earlier versions stay in the history for staff, but not for
        the patient: a deletion also removed the index rows that said which versions were not for the patient."""
        cur = resource.alias("wd")
        return exists().where(cur.c.rid == a.c.rid, cur.c.deleted)

    def _assertion(self, patient: ColumnElement[Any], kind: str) -> ColumnElement[bool]:
        """A current consent or emergency assertion of the patient for my unit (and me, if bound)."""
        actor = self.actor
        assert actor.assignment is not None
        r = pdl_rule.alias(f"p{kind[0]}")
        return exists().where(r.c.patient_id == patient, r.c.kind == _constants([kind])[0], self.mine_in_force(r))

    def _blocked(self, a: Alias) -> ColumnElement[bool]:
        """The row is covered by a block that applies to me and that I have not broken (step 2)."""
        actor = self.actor
        assert actor.assignment is not None
        b = pdl_rule.alias("pb")
        k = pdl_rule.alias("pk")
        broken = exists().where(
            k.c.patient_id == b.c.patient_id,  # correlated with the block row (and through it with the data row)
            k.c.kind == _constants(["break"])[0],
            k.c.employee == _late("practitioner"),
            k.c.org == b.c.org,
            _active(k, _late("now", DateTime())),
        )
        return exists().where(
            b.c.patient_id == a.c.patient_id,
            b.c.kind == _constants(["block"])[0],
            or_(b.c.org == a.c.owner_org, b.c.org == a.c.owner_unit),
            b.c.org.not_in([_late("unit"), _late("provider")]),
            or_(b.c.starts.is_(None), a.c.last_updated >= b.c.starts),
            or_(b.c.ends.is_(None), a.c.last_updated <= b.c.ends),
            not_(and_(b.c.exempt_alerts == true(), a.c.res_type.in_(_constants(ALERT_TYPES)))),
            not_(
                and_(
                    b.c.exempt_medication == true(),
                    a.c.res_type.in_(_constants(MEDICATION_TYPES)),
                )
            ),
            not_(broken),
        )

    def access_type(
        self, owner_org: str | None, owner_unit: str | None, emergency: bool = False, broken: bool = False
    ) -> str:
        """How a returned row was reached, for the log (R-LOG-1). ``broken``: the row's owner is blocked for
        the patient and I broke that block (step 2)."""
        actor = self.actor
        if actor.kind in ("citizen", "proxy", "system"):
            return actor.kind
        a = actor.assignment
        if a is None:
            return "system"
        if a.purpose in (PURPOSE_QUALITY, PURPOSE_ADMIN):
            return "quality"
        if owner_unit is None or owner_unit == a.unit:
            return "own-unit"
        if broken:
            return "block-break"
        if owner_org == a.provider:
            return "other-unit"
        return "emergency" if emergency else "svod"

    def _broken_owner(self, row: Any) -> ColumnElement[bool]:
        """SQL: the row's owner (provider or unit) is blocked for its patient and I broke that block (step 2,
        in force); as ``Gate.accesses`` tells it for ``access_type(..., broken=True)``."""
        b = pdl_rule.alias("bo")
        k = pdl_rule.alias("bk")
        return exists().where(
            b.c.patient_id == row.patient_id,
            b.c.kind == _constants(["block"])[0],
            or_(b.c.org == row.owner_org, b.c.org == row.owner_unit),
            exists().where(
                k.c.patient_id == b.c.patient_id,
                k.c.kind == _constants(["break"])[0],
                k.c.org == b.c.org,
                k.c.employee == _late("practitioner"),
                _active(k, _late("now", DateTime())),
            ),
        )

    def broken_owners(self, tx: Tx, patient_ids: set[str]) -> set[tuple[str, str]]:
        """(patient, custodian) pairs among ``patient_ids`` whose block I broke (step 2, in force). From the rules
        a patient-scoped search already read when it has them (no query), else read for the rest at once."""
        if self.actor.kind != "staff" or not patient_ids or not self.rules_available:
            return set()
        rows = [(p, r) for p in patient_ids for r in self.patient_facts.get(p, ()) if r.kind in ("block", "break")]
        unread = sorted(p for p in patient_ids if p not in self.patient_facts)
        if unread:
            found = tx.conn.execute(
                select(
                    pdl_rule.c.patient_id, pdl_rule.c.kind, pdl_rule.c.org, pdl_rule.c.employee, pdl_rule.c.starts,
                    pdl_rule.c.ends,
                ).where(pdl_rule.c.patient_id.in_(unread), pdl_rule.c.kind.in_(["block", "break"]))
            )  # fmt: skip
            rows += [(r.patient_id, r) for r in found]
        me = self.actor.practitioner or ""
        blocked = {(p, r.org) for p, r in rows if r.kind == "block" and r.org}
        return {
            (p, r.org)
            for p, r in rows
            if r.kind == "break" and r.employee == me and self._current(r) and (p, r.org) in blocked
        }

    def mine_in_force(self, p: Any = pdl_rule) -> ColumnElement[bool]:
        """Rows of ``pdl_rule`` (or an alias of it) made for me (my unit, me or everyone there) and in force
        now; late-bound, so the condition is cached once for every staff member (consent and emergency
        assertions, R-ACC-3, R-ACC-6)."""
        return and_(
            p.c.unit == _late("unit"),
            or_(p.c.employee.is_(None), p.c.employee == _late("practitioner")),
            _active(p, _late("now", DateTime())),
        )

    def access_type_sql(self, row: Any) -> ColumnElement[str]:
        """``access_type`` as SQL over the ``owner_org``, ``owner_unit`` and ``patient_id`` columns of ``row``,
        for a statement that writes the log record of the rows it reads. Emergency is told from consent as
        ``Gate.accesses`` does: an emergency assertion of mine in force, and no consent of mine in force."""
        actor = self.actor
        a = actor.assignment
        if actor.kind != "staff" or a is None or a.purpose in (PURPOSE_QUALITY, PURPOSE_ADMIN):
            return literal(self.access_type(None, None), String())  # the same for every row
        branches: list[tuple[ColumnElement[bool], str]] = [(_own_unit(row), "own-unit")]
        if self.rules_available:
            branches.append((self._broken_owner(row), "block-break"))
        branches.append((row.owner_org == _late("provider"), "other-unit"))
        if self.rules_available:
            emergency = self._assertion(row.patient_id, "emergency")
            branches.append((and_(emergency, not_(self._assertion(row.patient_id, "consent"))), "emergency"))
        return case(*branches, else_=literal("svod", String()))

    # The kind of Consent each access type is reached through (R-LOG-1: "consent or emergency assertion id").
    _ASSERTION_KINDS = {"svod": "consent", "emergency": "emergency", "block-break": "break"}

    def _assertion_rows(self, p: Any) -> ColumnElement[bool]:
        """Rows of ``pdl_rule`` (or an alias) that can give me access: my consents and emergency assertions in
        force, and the block breaks I made that are in force (late bound)."""
        return or_(
            and_(p.c.kind.in_(_constants(["consent", "emergency"])), self.mine_in_force(p)),
            and_(
                p.c.kind == _constants(["break"])[0],
                p.c.employee == _late("practitioner"),
                _active(p, _late("now", DateTime())),
            ),
        )

    def assertion_sql(self, row: Any, kind: ColumnElement[str]) -> ColumnElement[str]:
        """SQL: the id of the Consent through which a row of ``row`` (with ``patient_id``, ``owner_org`` and
        ``owner_unit``) was reached as access type ``kind`` (``access_type_sql``): the newest in force, as
        ``assertions`` picks it; NULL for an access that needed none. Each branch is a subquery evaluated only
        for the access type that needs it, so a read of one's own unit's data costs nothing more."""
        actor = self.actor
        if actor.kind != "staff" or actor.assignment is None or not self.rules_available:
            return literal(None, String())
        branches = []
        for access, rule_kind in self._ASSERTION_KINDS.items():
            p = pdl_rule.alias(f"as{rule_kind[0]}")
            res = resource.alias(f"asr{rule_kind[0]}")
            conds = [p.c.patient_id == row.patient_id, p.c.kind == _constants([rule_kind])[0], self._assertion_rows(p)]
            if rule_kind == "break":
                conds.append(or_(p.c.org == row.owner_org, p.c.org == row.owner_unit))
            found = (
                select(res.c.res_id)
                .select_from(p.join(res, res.c.rid == p.c.source_rid))
                .where(*conds)
                .order_by(p.c.id.desc())
                .limit(1)
                .scalar_subquery()
            )
            branches.append((_constants([access])[0], found))
        return case(*branches, value=kind, else_=null())  # CASE kind WHEN ...: the access type computed once

    def assertions(self, tx: Tx, accesses: list[AccessKey]) -> dict[tuple[str, str | None, str | None], str]:
        """The Consent id each access (patient, owner provider, owner unit, access type) was reached through,
        for the accesses that needed one (SVOD: the consent; emergency: the assertion; block-break: the break);
        the newest in force where there are several. One query, and none when no access needed an assertion."""
        wanted = [x for x in accesses if x[3] in self._ASSERTION_KINDS]
        if not wanted or self.actor.kind != "staff" or not self.rules_available:
            return {}
        res = resource.alias("asr")
        rows = tx.conn.execute(
            select(pdl_rule.c.patient_id, pdl_rule.c.kind, pdl_rule.c.org, res.c.res_id)
            .select_from(pdl_rule.join(res, res.c.rid == pdl_rule.c.source_rid))
            .where(pdl_rule.c.patient_id.in_(sorted({x[0] for x in wanted})), self._assertion_rows(pdl_rule))
            .order_by(pdl_rule.c.id)
        ).all()
        found: dict[tuple[str, str | None, str | None], str] = {}
        for pid, org, unit, access in wanted:
            kind = self._ASSERTION_KINDS[access]
            for r in rows:  # in order of creation: the newest wins
                if r.patient_id == pid and r.kind == kind and (kind != "break" or r.org in (org, unit)):
                    found[(pid, org, unit)] = r.res_id
        return found

    # ---- writing -------------------------------------------------------------------------------
    def owner(self) -> tuple[str | None, str | None]:
        """The owner stamped on rows this actor writes (never taken from the request body)."""
        a = self.actor.assignment
        if self.actor.kind == "staff" and a is not None:
            return a.provider, a.unit
        return None, None

    def has_care_relation(self, tx: Tx, patient_id: str) -> bool:
        a = self.actor.assignment
        if a is None:
            return False
        row = tx.conn.execute(
            select(care_relation.c.id)
            .where(
                care_relation.c.patient_id == patient_id,
                care_relation.c.unit == a.unit,
                _active(care_relation, self.now),
            )
            .limit(1)
        ).first()
        return row is not None

    def _check_consent_change(self, tx: Tx, action: str, body: dict[str, Any] | None) -> dict[str, Any] | None:
        """Cancelling is final (R-ACC-5); deletion is by status entered-in-error (misregistration), never DELETE;
        a consent keeps its kind. Returns the Consent as stored before this update (None: a new one)."""
        if action == "delete":
            raise FhirError(
                422,
                "business-rule",
                "Consents are not deleted: cancel them (status inactive) or mark "
                "a misregistration (status entered-in-error)",
            )
        rid = (body or {}).get("id")
        if not isinstance(rid, str):
            return None
        saved, tx.policy = tx.policy, None
        try:
            stored = tx.read_optional("Consent", rid)
        finally:
            tx.policy = saved
        if stored is None:
            return None
        current = stored.resource()
        if current.get("status") in ("inactive", "entered-in-error", "rejected"):
            raise FhirError(422, "business-rule", "A cancelled consent is final; register a new one (R-ACC-5)")
        if consent_kind(current) != consent_kind(body or {}):
            raise FhirError(422, "business-rule", "A consent keeps its kind: cancel it and register a new one")
        return current

    def _check_consent_kind(self, tx: Tx, body: dict[str, Any] | None, current: dict[str, Any] | None) -> None:
        """Who may register or change which kind of consent (the body's kind is the stored one's, if any)."""
        actor = self.actor
        kind = consent_kind(body) if body else None
        if kind in OPERATION_ONLY_CONSENTS and not self.operation_consent:
            raise FhirError(403, "forbidden", f"Consent of kind {kind} is registered and changed only by its operation")
        if kind == "representative" and actor.kind != "citizen":
            # A power of attorney is the patient's own act (or comes from a registration system, a system client):
            # nobody authorises themselves to act for someone else.
            raise FhirError(403, "forbidden", "Only the patient authorises a representative")
        if kind == "representative" and actor.kind == "citizen" and _age(actor.subject, self.now) < MAJORITY_AGE:
            # A child's affairs are the guardians' (who read for a child under 13 without any authorisation).
            raise FhirError(403, "forbidden", "Only an adult (18 or older) authorises a representative")
        if kind == "block" and actor.kind == "staff":
            # The patient asks the care provider holding the data; that provider's staff register or lift the block.
            asg = actor.assignment
            custodians = {*block_custodians(body or {}), *block_custodians(current or {})}
            if asg is None or not custodians or any(not self.of_my_provider(tx, c) for c in custodians):
                raise FhirError(
                    403,
                    "forbidden",
                    "Staff register or lift a block only on their own care provider's data (R-BLK-1)",
                )

    def of_my_provider(self, tx: Tx, org_id: str) -> bool:
        """Whether an Organization is my care provider or one of its units (by the directory)."""
        asg = self.actor.assignment
        if asg is None:
            return False
        if org_id in (asg.unit, asg.provider):
            return True
        org = tx.read_optional("Organization", org_id)
        found = care_provider_of(tx, org) if org is not None else None
        return found is not None and found[0].res_id == asg.provider

    # ---- the directory -------------------------------------------------------------------------------
    _DIRECTORY_OWNER = {
        "Organization": "partOf",
        "Location": "managingOrganization",
        "HealthcareService": "providedBy",
        "PractitionerRole": "organization",
        "Endpoint": "managingOrganization",
    }

    def _check_directory_write(
        self, tx: Tx, rtype: str, body: dict[str, Any] | None, existing: dict[str, Any] | None
    ) -> None:
        """An administrator maintains their own care provider's part of the directory, and not their own entry:
        what they write (and what it replaces) belongs to an Organization of their provider; a Practitioner only
        while every assignment of the person is at their provider. Nobody gives themselves an assignment
        (medarbetaruppdrag) or changes their own entry: another administrator does. Care providers themselves
        and other providers' entries come from the directory's feed (a system client)."""

        def refuse(why: str) -> NoReturn:
            raise FhirError(403, "forbidden", why)

        me = self.actor.practitioner
        for res in (r for r in (existing, body) if r is not None):
            if rtype == "Practitioner":
                if me is not None and res.get("id") == me:
                    refuse("Administrators do not change their own directory entry")
                continue
            if rtype == "PractitionerRole" and me is not None and ref_id(res.get("practitioner"), "Practitioner") == me:
                refuse("No one gives themselves an assignment (medarbetaruppdrag): another administrator does")
            owner = ref_id(res.get(self._DIRECTORY_OWNER.get(rtype, "")), "Organization")
            if rtype == "Organization" and owner is None and isinstance(res.get("id"), str):
                owner = res["id"]  # a care provider's own entry (a new one is none of mine: refused below)
            if owner is None or not self.of_my_provider(tx, owner):
                refuse("Administrators maintain only their own care provider's part of the directory")
        if rtype == "Practitioner" and existing is not None and isinstance(existing.get("id"), str):
            for role in tx.match("PractitionerRole", f"practitioner=Practitioner/{existing['id']}", limit=200):
                org = ref_id(role.resource().get("organization"), "Organization")
                if org is None or not self.of_my_provider(tx, org):
                    refuse("This person also works for another care provider, whose administrators keep the entry")

    # ---- a protected patient's address (R-ID-3) and the register's facts ------------------------------
    def _trusted_writer(self) -> bool:
        """System clients (the population register's feed, integrations) and the policy-off superuser."""
        return self.actor.policy_off or self.actor.kind == "system"

    def _keeps_address_hidden(self, tx: Tx, rtype: str, current: dict[str, Any]) -> bool:
        """Whether this writer works without the address of a protected patient, or of her household (her
        RelatedPersons); all but system clients, which bring it from the population register."""
        if self._trusted_writer():
            return False
        if rtype == "Patient":
            return is_protected(current)
        return in_protected_household(tx.conn, current, self.rules_available)

    def shown_for_writing(self, tx: Tx, rtype: str, current: dict[str, Any]) -> dict[str, Any]:
        """The current version as this writer may see it while changing it (a JSON Patch applies to it): without
        a protected patient's (or her household's) address, so that no patch can test, copy or move it into
        sight."""
        return without_protected_elements(current) if self._keeps_address_hidden(tx, rtype, current) else current

    def keep_register_data(self, tx: Tx, rtype: str, current: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        """The body to store when this writer replaces ``current``. A Patient's personal identity numbers and
        protected-identity labels stay as stored unless a system client (the register's feed) writes; a protected
        patient's address, contacts and narrative stay as stored (the writer never saw them), and a body that
        sets others is refused. Her household's (a RelatedPerson's) address and narrative stay as stored when the
        body leaves them out (the writer never saw them); a body that gives new ones replaces them."""
        if rtype in HOUSEHOLD_TYPES and self._keeps_address_hidden(tx, rtype, current):
            if sorted(household_of(tx.conn, body)) != sorted(household_of(tx.conn, current)):
                # Moved to another patient, it would carry the address its writer never saw into sight.
                raise FhirError(
                    403,
                    "forbidden",
                    "A relative of a patient with protected identity stays hers; only the register's feed moves it "
                    "(R-ID-3)",
                )
            return {**body, **{k: current[k] for k in PROTECTED_ELEMENTS if k in current and k not in body}}
        if rtype != "Patient" or self._trusted_writer():
            return body
        body = with_register_data_of(body, current)
        if not is_protected(current):
            return body
        if any(k in body and body[k] != current.get(k) for k in PROTECTED_ELEMENTS):
            raise FhirError(
                403,
                "forbidden",
                "The address, contacts and narrative of a patient with protected identity come from the population "
                "register and are not changed here (R-ID-3)",
            )
        return {**body, **{k: current[k] for k in PROTECTED_ELEMENTS if k in current}}

    def _check_new_identity(self, tx: Tx, body: dict[str, Any]) -> None:
        """A new Patient may not carry a personal identity number another patient's record has (409): one person,
        one record, so that the number identifies one patient to the portal and to staff."""
        # In any written form and under either system (URI or RIV OID): a record stored with the OID is the same.
        numbers = [i for i in body.get("identifier") or [] if is_personal_identifier(i)]
        if any(patients_identified_by(tx.conn, i.get("system"), str(i.get("value")), limit=1) for i in numbers):
            raise FhirError(409, "duplicate", "A patient with this personal identity number is already registered")

    def labelled_for_writer(self, res: dict[str, Any]) -> dict[str, Any]:
        """``res`` as stored for this writer: a citizen's or proxy's write carries the patient-asserted label,
        a staff member's never does (staff cannot claim the patient entered it), a system client's (an
        integration bringing in home measurements, say) is stored as sent."""
        if self._trusted_writer():
            return res
        return with_patient_asserted(res, self.actor.kind in ("citizen", "proxy"))

    def check_scope(self, rtype: str, action: str) -> None:
        """Raise 403 unless the token's SMART scopes allow ``action`` on ``rtype``: ``r`` reads by id (read, vread,
        a resource's history), ``s`` searches. A search of a type the scopes do not let the token read at all is
        left to the row filter, which limits every search to the readable types (it finds nothing there)."""
        scopes = self.actor.scopes
        if scopes.allows(rtype, action):
            return
        if action == "search" and not scopes.allows(rtype, "read"):
            return
        scopes.require(rtype, action)

    def check_write(
        self,
        tx: Tx,
        action: str,
        rtype: str,
        body: dict[str, Any] | None,
        patient_id: str | None,
        existing_owner: tuple[str | None, str | None] | None,
        existing: dict[str, Any] | None = None,
    ) -> None:
        """Raise 403 unless the actor may perform ``action`` (create/update/delete) on such a resource.

        ``existing_owner`` and ``existing`` are the owner and content of the version an update or delete
        replaces (the content as the writer may read it; None where there is none to read)."""
        actor = self.actor
        actor.scopes.require(rtype, action)
        if self.launch_bound and patient_id is not None and patient_id != actor.patient:
            raise FhirError(403, "forbidden", "The token's patient/ scopes reach only the patient it was launched for")
        current = None
        if rtype == "Consent" and action in ("update", "delete"):
            current = self._check_consent_change(tx, action, body)  # business rules that bind every writer
        if self._trusted_writer():
            return
        if rtype == "RelatedPerson" and (names_guardian(body or {}) or names_guardian(existing or {})):
            # A guardian reads the child's record with a proxy token: no one may make themselves one.
            raise FhirError(
                403,
                "forbidden",
                "Guardianship comes from the population register: only its feed (a system client) records or "
                "changes a guardian",
            )
        if rtype == "Patient" and action == "create" and body:
            self._check_new_identity(tx, body)
        kind = consent_kind(body) if rtype == "Consent" and body else None
        if rtype == "Consent":
            self._check_consent_kind(tx, body, current)
        if actor.kind in ("citizen", "proxy"):
            if rtype not in CITIZEN_WRITABLE:
                raise FhirError(403, "forbidden", f"Citizens cannot write {rtype} resources")
            if patient_id is None or patient_id != actor.patient:
                raise FhirError(
                    403, "forbidden", "Citizens can only write data about themselves (or whom they represent)"
                )
            if rtype == "Consent":
                if kind not in CITIZEN_CONSENT_KINDS:
                    raise FhirError(403, "forbidden", "This kind of consent cannot be registered by the citizen")
                if kind == "block" and actor.kind == "proxy":
                    raise FhirError(
                        403, "forbidden", "A guardian or representative cannot block the patient's data (R-BLK-4)"
                    )
            # Data with no owner is also an integration's: only what carries the patient-asserted label is theirs.
            if existing_owner is not None and (
                existing_owner != (None, None) or existing is None or not patient_asserted(existing)
            ):
                raise FhirError(403, "forbidden", "Citizens can change only what they registered themselves")
            return
        a = actor.assignment
        if a is None:
            raise FhirError(403, "forbidden", "Staff must act through an assignment (medarbetaruppdrag)")
        if rtype in DIRECTORY_TYPES:
            if not actor.is_admin():
                raise FhirError(403, "forbidden", "Only administrators maintain the directory")
            self._check_directory_write(tx, rtype, body, existing)
            return
        if not a.has_right("Skriva", "VE"):
            raise FhirError(403, "forbidden", "The assignment has no right to write (Skriva)")
        if existing_owner is not None and existing_owner[1] not in (None, a.unit):
            raise FhirError(403, "forbidden", "Staff can change only data documented at their own unit")
        if patient_id is None:
            return
        if rtype in CARE_ESTABLISHING and _establishes_own(body, rtype, a.unit):
            return
        if not self.has_care_relation(tx, patient_id):
            raise FhirError(403, "forbidden", "No care relationship with the patient at this unit (R-ACC-1)")


def _establishes_own(body: dict[str, Any] | None, rtype: str, unit: str) -> bool:
    if not body:
        return False
    key = {"EpisodeOfCare": "managingOrganization", "Encounter": "serviceProvider"}.get(rtype)
    if key is not None:
        return ref_id(body.get(key), "Organization") == unit
    return any(ref_id(p.get("member"), "Organization") == unit for p in body.get("participant", []))
