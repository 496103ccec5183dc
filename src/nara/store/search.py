"""FHIR search compiled to SQL: one statement per page on SQLite and PostgreSQL.

A parsed :class:`~nara.fhir.query.SearchQuery` becomes a ``SELECT`` over the ``resource`` table whose
conditions are semi-joins into the index tables (``rid IN (SELECT rid FROM sp_token WHERE ...)``).
Values are always bound parameters. Paging is keyset-based: the cursor carries the sort values of
the page's last row, so pages stay correct while data changes and deep pages cost the same as the
first. When a query pins the patient (``patient=X`` on a type whose compartment key is that
reference), every semi-join is narrowed to that patient's rows, so patient-scoped queries touch
only that patient's data however large the store grows.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import TYPE_CHECKING, Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
    tuple_,
    union_all,
)
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.sql.selectable import Alias

from nara.fhir.dates import MAX_DT, MIN_DT, parse_range, utcnow
from nara.fhir.identifiers import (
    PERSONAL_SYSTEMS,
    PERSONNUMMER,
    normalize_system,
    personal_number,
    stated_personal_number,
    written_systems,
)
from nara.fhir.outcome import FhirError, Issue
from nara.fhir.pathexpr import parse as parse_expr
from nara.fhir.query import (
    Criterion,
    Include,
    QueryParser,
    SearchQuery,
    SortKey,
    parse_pairs,
    split_escaped,
    split_prefix,
    unescape,
)
from nara.fhir.searchparams import date_seconds, index_codes, patient_compartment_params, search_params
from nara.fhir.spec import spec
from nara.fhir.text import normalize
from nara.store.crud import Stored
from nara.store.database import json_out
from nara.store.schema import INDEX_TABLES, resource, sp_reference

if TYPE_CHECKING:
    from nara.store.crud import Tx

# Optional extra row filter (the access policy): (resource alias, resource type or None) -> condition.
RowFilter = Callable[[Alias, str | None], ColumnElement[bool] | None]
LOW_STRING = ""
LOW_NUMBER = -1.0e300


@dataclass
class SearchResult:
    matches: list[Stored]
    included: list[Stored] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    issues: list[Issue] = field(default_factory=list)
    explain: dict[str, Any] | None = None


# ---- helpers ----------------------------------------------------------------------------------
def _like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _among(column: Any, values: list[str]) -> ColumnElement[bool]:
    return column == values[0] if len(values) == 1 else column.in_(values)


# A code without a system is taken for a personal identity number only when written as one is written: with its
# century (YYYYMMDDNNNC, YYYYMMDD-NNNC) or as YYMMDD-NNNC / YYMMDD+NNNC. Ten bare digits are as often a phone or
# order number, matched as written only. A query string's unencoded '+' arrives as a space (form encoding):
# YYMMDD NNNC is read as the centenarian's YYMMDD+NNNC, as no number is written with a space.
_WRITTEN_AS_NUMBER = re.compile(r"\d{8}-?\d{4}|\d{6}[-+ ]\d{4}")
_PLUS_AS_SPACE = re.compile(r"^\s*(\d{6}) (\d{4})\s*$")


def _personal_number_forms(system: str, code: str) -> list[str]:
    """The forms a personal identity number given as ``code`` under a personal system is stored in (R-ID-1): its
    12 digits (writes store that), the code as written with its century (a record stored before writes were
    normalised) and the 12 digits written ``YYYYMMDD-NNNC`` (a reference stored so; a token's index has that
    form's 12 digits too). A 10-digit form is read on the day of the search, as a write of it that day reads it,
    and is not matched as written: a record stored in ten digits before the rule may have been written when the
    same digits meant someone born a hundred years earlier (a centenarian's record found by her great-
    grandchild's number, and overwritten by a conditional update meant for the child). Any other code: itself."""
    number = personal_number(system, _PLUS_AS_SPACE.sub(r"\1+\2", code))
    if number is None:
        return [code]
    dashed = f"{number[:8]}-{number[8:]}"
    if stated_personal_number(system, code) is None:  # YYMMDD-NNNC, YYMMDD+NNNC, YYMMDDNNNC
        return [number, dashed]
    return list(dict.fromkeys((code, number, dashed)))


@cache
def _personal_systems() -> list[str]:
    """Every written form of the personnummer's and samordningsnummer's systems (URI, OID, ``urn:oid:``)."""
    return sorted(form for system in PERSONAL_SYSTEMS for form in written_systems(system))


def _without_system(system_col: Any, code_col: Any, code: str) -> ColumnElement[bool]:
    """A code without a system: the code as written under any system; when it is written as a personal identity
    number, under a personal identity number's system its forms (``_personal_number_forms``) instead, so that an
    order number that happens to be a personnummer's digits finds no one else's record."""
    if not _WRITTEN_AS_NUMBER.fullmatch(code.strip()):
        return code_col == code
    forms = _personal_number_forms(PERSONNUMMER, code)
    if forms == [code]:
        return code_col == code
    personal = _among(system_col, _personal_systems())
    if code in forms:  # written with its century: as written under any system, the other forms under a personal one
        return and_(_among(code_col, forms), or_(code_col == code, personal))
    # ten digits: as written only under another system (or none); under a personal one, read as a write reads it
    elsewhere = or_(system_col.is_(None), not_(personal))
    return or_(and_(code_col == code, elsewhere), and_(_among(code_col, forms), personal))


def _system_and_code(system_col: Any, code_col: Any, raw: str) -> ColumnElement[bool]:
    """A token search value on a (system, code) pair of columns: ``code``, ``system|code``, ``|code`` or
    ``system|``. A system written as an OID is the stored URI (R-ID-2); data stored before writes were normalised
    may still hold the OID, so each written form is searched, and a personal identity number in each of its forms
    (``_personal_number_forms``)."""
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return _without_system(system_col, code_col, unescape(raw))
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    if not system:
        return and_(system_col.is_(None), code_col == code)
    systems = sorted(written_systems(normalize_system(system) or system))
    if not code:
        return _among(system_col, systems)
    return and_(_among(system_col, systems), _among(code_col, _personal_number_forms(system, code)))


def _composite_token(system_col: Any, code_col: Any, raw: str) -> list[ColumnElement[bool]]:
    """A composite's token component as a token search reads it: ``code`` (any system), ``system|code``,
    ``|code`` (no system) or ``system|`` (any code)."""
    parts = split_escaped(raw, "|")
    if len(parts) == 1:
        return [code_col == unescape(raw)]
    system, code = unescape(parts[0]), unescape("|".join(parts[1:]))
    conds = [code_col == code] if code else []
    conds.append(system_col == system if system else system_col.is_(None))
    return conds


def _starts_with(col: Any, value: str) -> ColumnElement[bool]:
    return col.like(_like_escape(value) + "%", escape="\\")


def _contains(col: Any, value: str) -> ColumnElement[bool]:
    return col.like("%" + _like_escape(value) + "%", escape="\\")


def _is_prefix_segment(col: Any, value: str) -> ColumnElement[bool]:
    """``value`` lies below the URI in ``col``: it starts with ``col`` followed by a '/' (LIKE-escaped)."""
    escaped = func.replace(func.replace(func.replace(col, "\\", "\\\\"), "%", "\\%"), "_", "\\_")
    return literal(value).like(escaped + "/%", escape="\\")


# The care date $everything's start/end filter on: the type's "date" parameter, unless named here.
CARE_DATE_PARAMS = {
    "Account": "period",
    "Basic": "created",
    "ChargeItem": "occurrence",
    "Claim": "created",
    "ClaimResponse": "created",
    "Communication": "sent",
    "CommunicationRequest": "authored",
    "Condition": "onset-date",
    "CoverageEligibilityRequest": "created",
    "CoverageEligibilityResponse": "created",
    "DetectedIssue": "identified",
    "DeviceRequest": "event-date",
    "DocumentManifest": "created",
    "ExplanationOfBenefit": "created",
    "Goal": "start-date",
    "ImagingStudy": "started",
    "Media": "created",
    "MedicationAdministration": "effective-time",
    "MedicationDispense": "whenhandedover",
    "MedicationRequest": "authoredon",
    "MedicationStatement": "effective",
    "NutritionOrder": "datetime",
    "Provenance": "recorded",
    "QuestionnaireResponse": "authored",
    "RequestGroup": "authored",
    "ServiceRequest": "occurrence",
    "Specimen": "collected",
    "Task": "period",
    "VisionPrescription": "datewritten",
}


def care_date_param(rtype: str) -> str | None:
    """The date parameter that tells when care recorded in a ``rtype`` resource happened (or None)."""
    code = CARE_DATE_PARAMS.get(rtype, "date")
    p = search_params(rtype).get(code)
    return code if p is not None and p.type == "date" else None


@cache
def _table_alias(table: str, name: str) -> Alias:
    """A named alias of a table, built once (an alias is immutable; building its columns is not free)."""
    return (resource if table == "resource" else sp_reference).alias(name)  # type: ignore[return-value]


def compartment_members(patient_id: str, types: list[str] | None = None) -> Select[Any]:
    """rids of resources whose compartment parameters reference the patient (of ``types``, or all).

    Found from the patient's reference rows (index on target_id); the (type, parameter) pairs of the
    compartment definition are checked as one concatenated key, which keeps the plan a single index
    scan instead of an OR of a hundred index conditions.
    """
    ref = sp_reference
    keys = sorted(
        f"{t}|{p}" for t, params in spec().patient_compartment.items() if not types or t in types for p in params
    )
    return select(ref.c.rid).where(
        ref.c.target_id == patient_id,
        ref.c.target_type == "Patient",
        (ref.c.res_type + "|" + ref.c.param).in_(keys) if keys else false(),
    )


def _param_is(col: Any, rtype: str | None, code: str) -> ColumnElement[bool]:
    """Index rows of parameter ``code`` (a union alias such as ``combo-code`` reads its parts' rows)."""
    codes = index_codes(rtype, code)
    return col == codes[0] if len(codes) == 1 else col.in_(codes)


def _any(conds: list[ColumnElement[bool]]) -> ColumnElement[bool]:
    if not conds:
        return false()
    return conds[0] if len(conds) == 1 else or_(*conds)


def _decimal_range(raw: str) -> tuple[float, float, float]:
    """A decimal search value, and the interval its precision stands for (R4 search: 100 ~ [99.5, 100.5))."""
    try:
        d = Decimal(raw)
    except InvalidOperation:
        raise FhirError(400, "invalid", f"Not a number: {raw[:40]!r}") from None
    if not d.is_finite():
        raise FhirError(400, "invalid", f"Not a finite number: {raw[:40]!r}")
    exp = d.as_tuple().exponent
    assert isinstance(exp, int)
    half = Decimal(5) * Decimal(10) ** (exp - 1)
    return float(d), float(d - half), float(d + half)


def _date_query(raw: str) -> tuple[datetime, datetime]:
    rng = parse_range(raw)
    if rng is None:
        raise FhirError(400, "invalid", f"Not a FHIR date/dateTime: {raw[:40]!r}")
    return rng


def range_condition(lo: Any, hi: Any, prefix: str, qlo: Any, qhi: Any, approx: Any = None) -> ColumnElement[bool]:
    """R4 search semantics of a prefix for a stored [lo, hi] range against a query [qlo, qhi] range.

    Stored ranges have lo <= hi, so ``eq`` also bounds lo from above: the index on lo then reads only
    the query's interval. Its ``hi`` bound is written as an expression no index matches, because the
    planner, misled by histograms mixing every type's dates, would otherwise scan the hi index over
    everything that ended before the interval (all earlier birthdates, say) and filter on lo.
    """
    contained = and_(lo >= qlo, hi <= qhi)
    if prefix == "eq":
        return and_(lo >= qlo, lo <= qhi, func.coalesce(hi, hi) <= qhi)
    if prefix == "ne":
        return not_(contained)
    if prefix == "gt":
        return hi > qhi
    if prefix == "lt":
        return lo < qlo
    if prefix == "ge":
        return or_(hi > qhi, contained)
    if prefix == "le":
        return or_(lo < qlo, contained)
    if prefix == "sa":
        return lo > qhi
    if prefix == "eb":
        return hi < qlo
    if prefix == "ap":
        alo, ahi = approx if approx is not None else (qlo, qhi)
        return and_(hi >= alo, lo <= ahi)
    raise FhirError(400, "invalid", f"Unknown prefix {prefix!r}")


def _approx_dates(qlo: datetime, qhi: datetime) -> tuple[datetime, datetime]:
    now = utcnow().replace(tzinfo=None)
    gap = max(abs((qlo - now).total_seconds()), abs((qhi - now).total_seconds()))
    delta = timedelta(seconds=max(gap * 0.1, 86400))
    lo = qlo - delta if qlo - MIN_DT > delta else MIN_DT
    hi = qhi + delta if MAX_DT - qhi > delta else MAX_DT
    return lo, hi


@cache
def patient_key_params(rtype: str) -> frozenset[str]:
    """Reference parameters of ``rtype`` whose single Patient value is the row's ``patient_id``.

    The row's patient_id is the first compartment parameter that references a Patient. A query
    ``param=Patient/X`` is equivalent to ``patient_id = X`` when ``param`` selects exactly the first
    compartment parameter's element, that element holds at most one reference, and (so that no
    earlier parameter could have won) it is the first compartment parameter.
    """
    comp = patient_compartment_params(rtype)
    params = search_params(rtype)
    if not comp or comp[0] not in params:
        return frozenset()
    first = params[comp[0]]

    def stripped(expr: str) -> str:
        return expr.replace(".where(resolve() is Patient)", "")

    def branch(expr: str) -> str | None:
        parts = [p.strip() for p in stripped(expr).split("|")]
        mine = [p for p in parts if p.startswith(rtype + ".")]
        return mine[0] if len(mine) == 1 else None

    key = branch(first.expression)
    if key is None or not _single_valued(rtype, key):
        return frozenset()
    return frozenset(code for code, p in params.items() if p.type == "reference" and branch(p.expression) == key)


def _single_valued(rtype: str, path: str) -> bool:
    try:
        node = parse_expr(path)
    except ValueError:
        return False
    steps = getattr(node, "steps", None)
    if not steps:
        return False
    ctx = ""
    sp = spec()
    for st in steps:
        name = getattr(st, "name", None)
        if name is None:
            return False
        el = sp.context(rtype, ctx).get(name)
        if el is None or el.many:
            return False
        ctx = el.backbone or ""
        if el.backbone is None and st is not steps[-1]:
            return False
    return True


# ---- compiler ---------------------------------------------------------------------------------
class SqlCompiler:
    def __init__(self, tx: Tx, base_url: str | None = None, row_filter: RowFilter | None = None) -> None:
        self.tx = tx
        self.pg = tx.pg
        self.base_url = (base_url or "").rstrip("/")
        self.row_filter = row_filter
        self.n_alias = 0

    def visible(self, a: Alias, rtype: str | None) -> list[ColumnElement[bool]]:
        """The row filter's condition for rows of ``a`` (none without a filter): every query path adds it."""
        if self.row_filter is None:
            return []
        cond = self.row_filter(a, rtype)
        return [] if cond is None else [cond]

    def alias(self) -> Alias:
        self.n_alias += 1
        return _table_alias("resource", f"r{self.n_alias}")

    # -- criteria --------------------------------------------------------------------------------
    def criteria(
        self, crits: list[Criterion], rtype: str | None, a: Alias, patient: str | None
    ) -> list[ColumnElement[bool]]:
        return [self.criterion(c, rtype, a, patient) for c in crits]

    def criterion(self, c: Criterion, rtype: str | None, a: Alias, patient: str | None) -> ColumnElement[bool]:
        if c.param == "_has":
            return self._has(c, rtype, a)
        if c.param == "_id":
            return self._id(c, a)
        if c.param == "_lastUpdated":
            return self._last_updated(c, a)
        if c.param == "_list":
            return self._list(c, rtype, a)
        if c.chain:
            return self._chain(c, rtype, a, patient)
        table = INDEX_TABLES[c.type]
        base = [_param_is(table.c.param, rtype, c.param)]
        if rtype is not None:
            base.insert(0, table.c.res_type == rtype)
        if patient is not None:
            base.append(table.c.patient_id == patient)
        if c.modifier == "missing":
            sub = select(table.c.rid).where(*base)
            return not_(a.c.rid.in_(sub)) if c.values == ["true"] else a.c.rid.in_(sub)
        if c.type == "reference" and patient is not None and rtype and c.param in patient_key_params(rtype):
            ids = self._patient_key_ids(c)
            if ids is not None:
                return a.c.patient_id.in_(ids) if len(ids) > 1 else a.c.patient_id == ids[0]
        value_cond = _any([self.value(c, table, v) for v in c.values])
        sub = select(table.c.rid).where(*base, value_cond)
        if c.modifier == "not":
            return not_(a.c.rid.in_(sub))
        return a.c.rid.in_(sub)

    def value(self, c: Criterion, t: Any, raw: str) -> ColumnElement[bool]:
        kind = c.type
        if kind == "token":
            return self._token(c, t, raw)
        if kind == "string":
            v = unescape(raw)
            if c.modifier == "exact":
                return t.c.exact == v
            if c.modifier == "contains":
                return _contains(t.c.value, normalize(v))
            return _starts_with(t.c.value, normalize(v))
        if kind == "date":
            prefix, v = split_prefix(raw)
            qlo, qhi = _date_query(v)
            return range_condition(t.c.lo, t.c.hi, prefix, qlo, qhi, _approx_dates(qlo, qhi))
        if kind == "number":
            prefix, v = split_prefix(raw)
            return self._number(t.c.lo, t.c.hi, prefix, v)
        if kind == "quantity":
            prefix, v = split_prefix(raw)
            parts = split_escaped(v, "|")
            cond = self._number(t.c.lo, t.c.hi, prefix, parts[0])
            if len(parts) >= 3:
                system, code = unescape(parts[1]), unescape("|".join(parts[2:]))
                if system:
                    cond = and_(cond, t.c.system == system, or_(t.c.code == code, t.c.unit == code) if code else true())
                elif code:
                    cond = and_(cond, or_(t.c.code == code, t.c.unit == code))
            elif len(parts) == 2:
                raise FhirError(400, "invalid", f"Quantity value {raw!r} must be number|system|code")
            return cond
        if kind == "reference":
            return self._reference(c, t, raw)
        if kind == "uri":
            v = unescape(raw)
            if c.modifier == "below":
                # at or below: the value itself, or a path under it (whole segments only)
                return or_(t.c.value == v, _starts_with(t.c.value, v if v.endswith("/") else v + "/"))
            if c.modifier == "above":
                return or_(t.c.value == v, and_(t.c.value != "", _is_prefix_segment(t.c.value, v)))
            return t.c.value == v
        if kind == "composite":
            return self._composite(c, t, raw)
        raise FhirError(400, "not-supported", f"Search on {kind} parameters is not supported")

    def _number(self, lo: Any, hi: Any, prefix: str, raw: str) -> ColumnElement[bool]:
        value, qlo, qhi = _decimal_range(raw)
        if prefix in ("eq", "ne"):
            cond = and_(lo >= qlo, hi < qhi)
            return not_(cond) if prefix == "ne" else cond
        if prefix == "gt":
            return hi > value
        if prefix == "lt":
            return lo < value
        if prefix == "ge":
            return hi >= value
        if prefix == "le":
            return lo <= value
        if prefix == "sa":
            return lo > value
        if prefix == "eb":
            return hi < value
        if prefix == "ap":
            d = abs(value) * 0.1
            return and_(hi >= value - d, lo <= value + d)
        raise FhirError(400, "invalid", f"Unknown prefix {prefix!r}")

    def _token(self, c: Criterion, t: Any, raw: str) -> ColumnElement[bool]:
        if c.modifier == "text":
            return _starts_with(t.c.text, normalize(unescape(raw)))
        return _system_and_code(t.c.system, t.c.code, raw)

    def _parse_reference(self, raw: str) -> tuple[str | None, str | None, str | None]:
        """(type, id, url) for a reference search value; an absolute URL on our own base gives all three."""
        v = unescape(raw)
        url = None
        if self.base_url and v.startswith(self.base_url + "/"):
            url = v.split("|", 1)[0]
            v = v[len(self.base_url) + 1 :]
        elif "://" in v or v.startswith("urn:"):
            return None, None, v.split("|", 1)[0]
        parts = v.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if len(parts) == 2 and parts[0] in spec().resource_types and parts[1]:
            return parts[0], parts[1], url
        if len(parts) == 1 and parts[0]:
            return None, parts[0], url
        raise FhirError(400, "invalid", f"Cannot read reference search value {raw[:80]!r}")

    def _reference(self, c: Criterion, t: Any, raw: str) -> ColumnElement[bool]:
        if c.modifier == "identifier":
            # A reference's identifier is stored normalised as any other: searched as a token.
            return _system_and_code(t.c.id_system, t.c.id_value, raw)
        rtype, rid, url = self._parse_reference(raw)
        if rid is None:
            return t.c.url == url
        if rtype and c.target_types and rtype not in c.target_types:
            return false()
        types = (rtype,) if rtype else c.target_types
        conds = [t.c.target_id == rid]
        if types:
            conds.append(t.c.target_type == types[0] if len(types) == 1 else t.c.target_type.in_(types))
        local = and_(*conds)
        # Absolute references are stored by URL only; a search by our own absolute URL also finds those.
        return or_(local, t.c.url == url) if url is not None else local

    def _patient_key_ids(self, c: Criterion) -> list[str] | None:
        if c.modifier not in (None, "", "Patient"):
            return None  # :identifier, :missing, another type: not a patient id
        ids = []
        for raw in c.values:
            rtype, rid, url = self._parse_reference(raw)
            if url is not None or rid is None or (rtype not in (None, "Patient")):
                return None
            if rtype is None and c.target_types and "Patient" not in c.target_types:
                return None
            if rtype is None and c.target_types != ("Patient",) and c.modifier != "Patient":
                return None
            ids.append(rid)
        return ids or None

    def _composite(self, c: Criterion, t: Any, raw: str) -> ColumnElement[bool]:
        d = c.definition
        assert d is not None
        parts = split_escaped(raw, "$")
        if len(parts) != 2:
            raise FhirError(400, "invalid", f"Composite value {raw[:80]!r} must have two parts joined by '$'")
        first, second = parts
        conds = _composite_token(t.c.c1_system, t.c.c1_code, first)
        ctype = d.components[1][1]
        if ctype == "token":
            conds.extend(_composite_token(t.c.c2_system, t.c.c2_code, second))
        elif ctype in ("quantity", "number"):
            prefix, v = split_prefix(second)
            qparts = split_escaped(v, "|")
            conds.append(self._number(t.c.c2_lo, t.c.c2_hi, prefix, qparts[0]))
            if len(qparts) >= 3:
                if qparts[1]:
                    conds.append(t.c.c2_system == unescape(qparts[1]))
                if qparts[2]:
                    conds.append(t.c.c2_code == unescape(qparts[2]))
        elif ctype == "date":
            prefix, v = split_prefix(second)
            qlo, qhi = _date_query(v)
            alo, ahi = _approx_dates(qlo, qhi)
            conds.append(
                range_condition(
                    t.c.c2_lo,
                    t.c.c2_hi,
                    prefix,
                    date_seconds(qlo),
                    date_seconds(qhi),
                    (date_seconds(alo), date_seconds(ahi)),
                )
            )
        elif ctype == "string":
            conds.append(_starts_with(t.c.c2_text, normalize(unescape(second))))
        else:
            conds.append(t.c.c2_text == unescape(second))
        return and_(*conds)

    def _id(self, c: Criterion, a: Alias) -> ColumnElement[bool]:
        if c.modifier == "missing":
            return false() if c.values == ["true"] else true()
        vals = [unescape(v) for v in c.values]
        cond = a.c.res_id.in_(vals) if len(vals) > 1 else a.c.res_id == vals[0]
        return not_(cond) if c.modifier == "not" else cond

    def _last_updated(self, c: Criterion, a: Alias) -> ColumnElement[bool]:
        if c.modifier == "missing":  # every version has one
            return false() if c.values == ["true"] else true()
        conds = []
        for raw in c.values:
            prefix, v = split_prefix(raw)
            qlo, qhi = _date_query(v)
            conds.append(range_condition(a.c.last_updated, a.c.last_updated, prefix, qlo, qhi, _approx_dates(qlo, qhi)))
        return _any(conds)

    def _list(self, c: Criterion, rtype: str | None, a: Alias) -> ColumnElement[bool]:
        b = self.alias()  # the Lists themselves are read under the row filter, like a chain's targets
        lists = select(b.c.rid).where(
            b.c.res_type == "List",
            b.c.res_id.in_([unescape(v) for v in c.values]),
            b.c.deleted == false(),
            *self.visible(b, "List"),
        )
        items = select(sp_reference.c.target_id).where(
            sp_reference.c.res_type == "List", sp_reference.c.param == "item", sp_reference.c.rid.in_(lists)
        )
        if rtype:
            items = items.where(sp_reference.c.target_type == rtype)
            return a.c.res_id.in_(items)
        return tuple_(a.c.res_type, a.c.res_id).in_(
            select(sp_reference.c.target_type, sp_reference.c.target_id).where(
                sp_reference.c.res_type == "List", sp_reference.c.param == "item", sp_reference.c.rid.in_(lists)
            )
        )

    def _chain(self, c: Criterion, rtype: str | None, a: Alias, patient: str | None) -> ColumnElement[bool]:
        ref = _table_alias("sp_reference", f"ref{self.n_alias + 1}")
        per_type = []
        for ttype, inner in c.chain.items():
            b = self.alias()
            targets = select(b.c.res_id).where(
                b.c.res_type == ttype,
                b.c.deleted == false(),
                self.criterion(inner, ttype, b, None),
                *self.visible(b, ttype),
            )
            per_type.append(and_(ref.c.target_type == ttype, ref.c.target_id.in_(targets)))
        conds = [_param_is(ref.c.param, rtype, c.param), _any(per_type)]
        if rtype:
            conds.insert(0, ref.c.res_type == rtype)
        if patient is not None:
            conds.append(ref.c.patient_id == patient)
        return a.c.rid.in_(select(ref.c.rid).where(*conds))

    def _has(self, c: Criterion, rtype: str | None, a: Alias) -> ColumnElement[bool]:
        assert c.has_type and c.has_param
        inner = c.chain[c.has_type]
        ref = _table_alias("sp_reference", f"has{self.n_alias + 1}")
        b = self.alias()
        sources = select(b.c.rid).where(
            b.c.res_type == c.has_type,
            b.c.deleted == false(),
            self.criterion(inner, c.has_type, b, None),
            *self.visible(b, c.has_type),
        )
        conds: list[ColumnElement[bool]] = [
            ref.c.res_type == c.has_type,
            _param_is(ref.c.param, c.has_type, c.has_param),
            ref.c.rid.in_(sources),
        ]
        if rtype:
            conds.append(ref.c.target_type == rtype)
            return a.c.res_id.in_(select(ref.c.target_id).where(*conds))
        return tuple_(a.c.res_type, a.c.res_id).in_(select(ref.c.target_type, ref.c.target_id).where(*conds))

    # -- sorting ---------------------------------------------------------------------------------
    def sort_expr(self, key: SortKey, rtype: str | None, a: Alias) -> Any:
        if key.param == "_id":
            return a.c.res_id.collate("C") if self.pg else a.c.res_id
        if key.param == "_lastUpdated":
            return a.c.last_updated
        table = INDEX_TABLES[key.type]
        if key.type in ("date", "number", "quantity"):
            col = table.c.hi if key.descending else table.c.lo
        else:
            col = table.c[{"string": "value", "token": "code", "reference": "target_id", "uri": "value"}[key.type]]
        agg = func.max(col) if key.descending else func.min(col)
        sub = select(agg).where(table.c.rid == a.c.rid, _param_is(table.c.param, rtype, key.param))
        if rtype:
            sub = sub.where(table.c.res_type == rtype)
        low: Any = {
            "date": MIN_DT,
            "number": LOW_NUMBER,
            "quantity": LOW_NUMBER,
        }.get(key.type, LOW_STRING)
        expr = func.coalesce(sub.scalar_subquery(), low)
        if self.pg and isinstance(low, str):
            # Code-point order on every database (as SQLite's BINARY), whatever the database collation.
            return expr.collate("C")
        return expr


# ---- cursors ------------------------------------------------------------------------------------
def encode_cursor(values: list[Any], rid: int, direction: str) -> str:
    enc = []
    for v in values:
        if isinstance(v, datetime):
            enc.append({"d": v.isoformat()})
        else:
            enc.append(v)
    raw = orjson.dumps({"k": enc, "r": rid, "d": direction})
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> tuple[list[Any], int, str]:
    try:
        data = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        values = [datetime.fromisoformat(v["d"]) if isinstance(v, dict) else v for v in data["k"]]
        return values, int(data["r"]), data["d"] if data.get("d") in ("next", "prev") else "next"
    except (ValueError, KeyError, TypeError):
        raise FhirError(400, "invalid", "The paging cursor is not valid; start the search again") from None


def _keyset(exprs: list[Any], desc: list[bool], values: list[Any], rid_col: Any, rid: int, forward: bool) -> Any:
    """Rows after (forward) or before the boundary row in the order given by exprs/desc, then rid."""
    clauses = []
    for i in range(len(exprs) + 1):
        eqs = [exprs[j] == values[j] for j in range(i)]
        if i < len(exprs):
            after = (exprs[i] < values[i]) if desc[i] else (exprs[i] > values[i])
            before = (exprs[i] > values[i]) if desc[i] else (exprs[i] < values[i])
            clauses.append(and_(*eqs, after if forward else before))
        else:
            clauses.append(and_(*eqs, rid_col > rid if forward else rid_col < rid))
    return or_(*clauses)


# ---- execution ----------------------------------------------------------------------------------
_ROW_COLS = (
    "rid",
    "res_type",
    "res_id",
    "version",
    "last_updated",
    "deleted",
    "patient_id",
    "method",
    "owner_org",
    "owner_unit",
)


class Searcher:
    def __init__(self, tx: Tx, base_url: str | None = None, row_filter: RowFilter | None = None) -> None:
        self.tx = tx
        self.settings = tx.store.settings
        # The transaction's access policy applies to every search (unless a caller passes its own filter).
        self.policy = getattr(tx, "policy", None) if row_filter is None else None
        if self.policy is not None:
            row_filter = self.policy.row_filter
        self.sql = SqlCompiler(tx, base_url, row_filter)

    @contextmanager
    def _time_limit(self) -> Iterator[None]:
        """Bound every statement of a search by ``statement_timeout_ms``, on both databases.

        PostgreSQL gets ``SET statement_timeout`` for the search (reads may run on an autocommit
        connection, where ``SET LOCAL`` would not last) and ``RESET`` after it; SQLite, which has no
        such setting, gets a progress handler that interrupts a statement once the time is up. Either
        way the client gets a too-costly OperationOutcome instead of a worker busy for as long as the
        query takes.
        """
        ms = self.settings.statement_timeout_ms
        if not ms:
            yield
            return
        conn = self.tx.conn
        raw: Any = None
        # On PostgreSQL the connections already carry the configured timeout (a connect option): set it only
        # when the settings were changed at run time, saving two round trips per search.
        set_pg = self.tx.pg and ms != getattr(self.tx.store, "engine_statement_timeout_ms", None)
        if set_pg:
            conn.exec_driver_sql(f"SET statement_timeout = {int(ms)}")
        elif not self.tx.pg:
            raw = conn.connection.dbapi_connection
            deadline = time.perf_counter() + ms / 1000

            def past_deadline() -> int:
                return 1 if time.perf_counter() > deadline else 0

            raw.set_progress_handler(past_deadline, 10_000)
        try:
            yield
        except OperationalError as exc:
            text = str(exc.orig).lower()
            if "interrupted" in text or "statement timeout" in text:
                raise FhirError(
                    503, "too-costly", f"The search ran longer than {ms} ms and was stopped; narrow the criteria"
                ) from None
            raise
        finally:
            if raw is not None:
                raw.set_progress_handler(None, 0)
            elif set_pg and not conn.invalidated:
                with suppress(DBAPIError):  # an aborted transaction undoes the SET when it rolls back
                    conn.exec_driver_sql("RESET statement_timeout")

    def _where(
        self, q: SearchQuery, a: Alias, compartment: tuple[str, str] | None
    ) -> tuple[list[ColumnElement[bool]], str | None]:
        rtype = q.resource_type
        conds: list[ColumnElement[bool]] = [a.c.deleted == false()]
        if rtype is not None:
            conds.append(a.c.res_type == rtype)
        elif q.types:
            conds.append(a.c.res_type.in_(q.types) if len(q.types) > 1 else a.c.res_type == q.types[0])
        patient = self._pinned_patient(q, compartment)
        if patient is not None and rtype is not None:
            conds.append(a.c.patient_id == patient)
        if compartment is not None:
            conds.append(self._compartment(compartment, rtype, a))
        sql_type = rtype if rtype is not None else (q.types[0] if len(q.types) == 1 else None)
        conds.extend(self.sql.criteria(q.criteria, sql_type, a, patient if rtype else None))
        if patient is not None and rtype is not None and self.policy is not None:
            pinned = self.policy.pinned_filter(self.tx, a, patient, rtype=rtype)  # patient-level facts read once
            if pinned is not None:
                conds.append(pinned)
        else:
            conds.extend(self.sql.visible(a, rtype if rtype is not None else sql_type))
        return conds, patient

    def _pinned_patient(self, q: SearchQuery, compartment: tuple[str, str] | None) -> str | None:
        """The patient every match must belong to (patient_id), when the query pins exactly one."""
        rtype = q.resource_type
        if rtype is None:
            return None
        if rtype == "Patient":
            for c in q.criteria:
                if c.param == "_id" and c.modifier is None and len(c.values) == 1:
                    return unescape(c.values[0])
            return None
        if compartment is not None and compartment[0] == "Patient":
            comp = patient_compartment_params(rtype)
            if comp and len(comp) == 1:
                return compartment[1]
        keys = patient_key_params(rtype)
        for c in q.criteria:
            if c.param in keys and not c.chain and c.modifier in (None, "Patient") and len(c.values) == 1:
                ids = self.sql._patient_key_ids(c)
                if ids:
                    return ids[0]
        return None

    def _compartment(self, compartment: tuple[str, str], rtype: str | None, a: Alias) -> ColumnElement[bool]:
        ctype, cid = compartment
        if ctype != "Patient":
            raise FhirError(400, "not-supported", f"Only the Patient compartment is supported, not {ctype}")
        ref = sp_reference
        if rtype is None:  # Patient/[id]/*: every type of the compartment
            return or_(a.c.patient_id == cid, a.c.rid.in_(compartment_members(cid)))
        if rtype == "Patient":
            return a.c.res_id == cid
        params = patient_compartment_params(rtype)
        if not params:
            return false()
        members = select(ref.c.rid).where(
            ref.c.target_id == cid, ref.c.target_type == "Patient", ref.c.res_type == rtype, ref.c.param.in_(params)
        )
        return or_(a.c.patient_id == cid, a.c.rid.in_(members))

    def search(self, q: SearchQuery, compartment: tuple[str, str] | None = None) -> SearchResult:
        """One page of matches of ``q`` (in the Patient ``compartment`` if given), with includes and total."""
        with self._time_limit():
            if self.policy is not None and q.resource_type is not None:
                # The pinned patient's access rules are read by one constant statement: read them before the
                # search statements turn the driver's preparing off, so that statement keeps its prepared plan.
                patient = self._pinned_patient(q, compartment)
                if patient is not None:
                    self.policy.prefetch(self.tx, patient)
            with self._custom_plans():
                return self._search(q, compartment)

    @contextmanager
    def _custom_plans(self) -> Iterator[None]:
        """Plan search statements with their values on PostgreSQL.

        The driver prepares a statement after a few runs, and PostgreSQL may then settle on a generic plan
        that ignores the values: measured, a patient's coded observations went from 2.5 ms to 20 ms when the
        generic plan stopped using the patient's index. Unprepared (unnamed) statements are planned each time.
        Reads by id keep their prepared plans.
        """
        raw = self.tx.conn.connection.driver_connection if self.tx.pg else None
        if raw is None or not hasattr(raw, "prepare_threshold"):
            yield
            return
        saved = raw.prepare_threshold
        raw.prepare_threshold = None
        try:
            yield
        finally:
            raw.prepare_threshold = saved

    def _search(self, q: SearchQuery, compartment: tuple[str, str] | None) -> SearchResult:
        self.tx.flush()
        settings = self.settings
        count = self._page_size(q.count, q.issues)
        a = self.sql.alias()
        t0 = time.perf_counter()
        conds, _patient = self._where(q, a, compartment)
        rtype = q.resource_type
        sort_keys = q.sort
        exprs = [self.sql.sort_expr(k, rtype, a) for k in sort_keys]
        desc = [k.descending for k in sort_keys]
        cols = [a.c[c] for c in _ROW_COLS] + [json_out(a.c.content, self.tx.pg).label("content")]
        cols += [e.label(f"sk{i}") for i, e in enumerate(exprs)]
        forward = True
        stmt_conds = list(conds)
        if q.cursor:
            values, last_rid, direction = decode_cursor(q.cursor)
            if len(values) != len(exprs):
                raise FhirError(400, "invalid", "The paging cursor does not belong to this search")
            forward = direction == "next"
            stmt_conds.append(_keyset(exprs, desc, values, a.c.rid, last_rid, forward))
        order = []
        for e, d in zip(exprs, desc, strict=True):
            order.append((e.desc() if d else e.asc()) if forward else (e.asc() if d else e.desc()))
        order.append(a.c.rid.asc() if forward else a.c.rid.desc())
        total: int | None = None
        want_total = q.total or settings.default_total
        if q.summary == "count" or count == 0:
            want_total = "accurate"
        page = q.summary != "count" and count > 0
        # Bounded: without _total the count stops after total_limit matches (no Bundle.total beyond it).
        bound = settings.total_limit if (want_total == "accurate" and q.total is None and page) else 0
        # An exact or bounded count travels with the page, as one more column of the page statement (an
        # uncorrelated subquery, evaluated once): a round trip less for every search.
        counted_with_page = page and want_total == "accurate" and not q.explain
        if not counted_with_page:
            if bound:
                total = self._count_up_to(conds, a, bound)
            elif want_total != "none":
                total = self._count(conds, a, want_total)
        matches: list[Stored] = []
        next_cursor = prev_cursor = None
        explain = None
        if page:
            if counted_with_page:
                cols.append(self._count_column(conds, a, bound))
            stmt: Select[Any] = select(*cols).where(*stmt_conds).order_by(*order).limit(count + 1)
            if q.explain:
                explain = self._explain(stmt)
            rows = list(self.tx.conn.execute(stmt).all())
            if counted_with_page:
                if rows:
                    n = int(rows[0].total_count)
                    total = n if not bound or n <= bound else None
                elif q.cursor:  # a page past the end: the count has no row to travel on
                    total = self._count_up_to(conds, a, bound) if bound else self._count(conds, a, "accurate")
                else:
                    total = 0
            more = len(rows) > count
            rows = rows[:count]
            if not forward:
                rows.reverse()
            matches = [Stored.from_row(r) for r in rows]
            if rows:
                first, last = rows[0], rows[-1]
                key_first = [getattr(first, f"sk{i}") for i in range(len(exprs))]
                key_last = [getattr(last, f"sk{i}") for i in range(len(exprs))]
                if (forward and more) or (not forward and q.cursor):
                    next_cursor = encode_cursor(key_last, last.rid, "next")
                if (not forward and more) or (forward and q.cursor):
                    prev_cursor = encode_cursor(key_first, first.rid, "prev")
        result = SearchResult(
            matches, total=total, next_cursor=next_cursor, prev_cursor=prev_cursor, issues=list(q.issues)
        )
        if q.includes and matches:
            result.included = self.includes(q.includes, matches, result.issues)
        if explain is not None:
            explain["milliseconds"] = round((time.perf_counter() - t0) * 1000, 3)
            result.explain = explain
        return result

    def _count_column(self, conds: list[ColumnElement[bool]], a: Alias, limit: int) -> Any:
        """The number of matches (up to ``limit + 1`` when a limit is given) as a column of the page statement.

        The subquery names the page's alias in its own FROM, so it does not correlate with the page's rows:
        in SQL the inner FROM item hides the outer one of the same name, and the database runs the subquery
        once for the statement.
        """
        matches = select(a.c.rid).where(*conds).correlate(None)
        if limit:
            matches = matches.limit(limit + 1)
        return select(func.count()).select_from(matches.subquery()).scalar_subquery().label("total_count")

    def _count_up_to(self, conds: list[ColumnElement[bool]], a: Alias, limit: int) -> int | None:
        """The number of matches when it is at most ``limit``, else None (counting stops after limit + 1)."""
        first = select(a.c.rid).where(*conds).limit(limit + 1).subquery()
        n = int(self.tx.conn.execute(select(func.count()).select_from(first)).scalar_one())
        return n if n <= limit else None

    def _count(self, conds: list[ColumnElement[bool]], a: Alias, mode: str) -> int:
        stmt = select(func.count()).select_from(a).where(*conds)
        if mode == "estimate" and self.tx.pg:
            compiled = stmt.compile(dialect=self.tx.conn.dialect, compile_kwargs={"render_postcompile": True})
            plan = self.tx.conn.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + str(compiled), compiled.params if hasattr(compiled, "params") else {}
            ).scalar_one()
            try:
                data = plan if isinstance(plan, list) else orjson.loads(plan)
                return int(data[0]["Plan"]["Plans"][0]["Plan Rows"])
            except (KeyError, IndexError, TypeError, ValueError):
                pass
        return int(self.tx.conn.execute(stmt).scalar_one())

    def _explain(self, stmt: Select[Any]) -> dict[str, Any]:
        conn = self.tx.conn
        compiled = stmt.compile(dialect=conn.dialect, compile_kwargs={"render_postcompile": True})
        params = compiled.params
        sql_text = str(compiled)
        if self.tx.pg:
            t0 = time.perf_counter()
            plan_rows = conn.exec_driver_sql("EXPLAIN (ANALYZE, BUFFERS) " + sql_text, params).all()
            ms = (time.perf_counter() - t0) * 1000
            plan = [r[0] for r in plan_rows]
        else:
            t0 = time.perf_counter()
            positional = tuple(params[k] for k in compiled.positiontup or ())
            plan_rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql_text, positional).all()
            ms = (time.perf_counter() - t0) * 1000
            plan = [" | ".join(str(x) for x in r) for r in plan_rows]
        return {
            "sql": sql_text,
            "parameters": {k: str(v) for k, v in params.items()},
            "plan": plan,
            "plan_milliseconds": round(ms, 3),
        }

    # -- Patient/$everything ----------------------------------------------------------------------
    def everything(
        self,
        patient_id: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        since: datetime | None = None,
        types: list[str] | None = None,
        count: int | None = None,
        cursor: str | None = None,
    ) -> SearchResult:
        """One page of the patient's record (see :meth:`_everything`)."""
        with self._time_limit():
            return self._everything(patient_id, start, end, since, types, count, cursor)

    def _everything(
        self,
        patient_id: str,
        start: datetime | None,
        end: datetime | None,
        since: datetime | None,
        types: list[str] | None,
        count: int | None,
        cursor: str | None,
    ) -> SearchResult:
        """One page of the patient's record: the Patient, its compartment, and what that references.

        Members are found through ``patient_id`` (everything a patient owns is co-located under it) and
        the compartment's other reference parameters; pages are keyset pages in ``rid`` order. ``start``
        and ``end`` filter on each type's care date (resources without one are kept), ``since`` on
        ``_lastUpdated``. Resources outside the compartment that a page references (practitioners,
        organisations, medications, ...) come as includes.
        """
        self.tx.flush()
        issues: list[Issue] = []
        limit = self._page_size(count, issues)
        after = 0
        if cursor:
            values, after, direction = decode_cursor(cursor)
            if values or direction != "next":
                raise FhirError(400, "invalid", "The paging cursor does not belong to this $everything")

        def common(x: Alias) -> list[ColumnElement[bool]]:
            conds: list[ColumnElement[bool]] = [x.c.deleted == false(), x.c.rid > after]
            if types:
                conds.append(x.c.res_type.in_(types))
            if since is not None:
                conds.append(x.c.last_updated >= since)
            if start is not None or end is not None:
                conds.append(self._care_dates(x, patient_id, start or MIN_DT, end or MAX_DT))
            return conds + self.sql.visible(x, None)

        # Two index-friendly halves, each at most one page: what the patient owns (patient_id), and the
        # few resources of the compartment owned by someone else (found through their references).
        a = self.sql.alias()
        own = select(a.c.rid).where(a.c.patient_id == patient_id, *common(a)).order_by(a.c.rid).limit(limit + 1)
        # The reference rows carry their resource's patient_id, so the foreign members are picked out of the
        # patient's reference rows (index on target_id) before anything else: materialized, so the planner cannot
        # instead walk every resource in rid order hoping to meet one (measured: 2.7 s for a patient with none).
        ref = sp_reference
        foreign = (
            compartment_members(patient_id, types)
            .where(or_(ref.c.patient_id.is_(None), ref.c.patient_id != patient_id))
            .cte("foreign_members")
            .prefix_with("MATERIALIZED", dialect="postgresql")
        )
        o = self.sql.alias()
        others = (
            select(o.c.rid).where(o.c.rid.in_(select(foreign.c.rid)), *common(o)).order_by(o.c.rid).limit(limit + 1)
        )
        both = union_all(select(own.subquery().c.rid), select(others.subquery().c.rid)).subquery()
        page = select(both.c.rid).order_by(both.c.rid).limit(limit + 1)
        b = self.sql.alias()
        cols = [b.c[c] for c in _ROW_COLS] + [json_out(b.c.content, self.tx.pg).label("content")]
        rows = list(self.tx.conn.execute(select(*cols).where(b.c.rid.in_(page)).order_by(b.c.rid)))
        more = len(rows) > limit
        matches = [Stored.from_row(r) for r in rows[:limit]]
        result = SearchResult(matches, issues=issues)
        if more:
            result.next_cursor = encode_cursor([], matches[-1].rid, "next")
        if matches:
            result.included = self._referenced_outside(matches, types, issues)
        return result

    def _care_dates(self, a: Alias, patient_id: str, start: datetime, end: datetime) -> ColumnElement[bool]:
        """Rows whose care date overlaps [start, end], or that have no care date at all."""
        d = INDEX_TABLES["date"]
        pairs = [(t, p) for t in spec().patient_compartment if (p := care_date_param(t)) is not None]
        dated = select(d.c.rid).where(d.c.patient_id == patient_id, tuple_(d.c.res_type, d.c.param).in_(pairs))
        overlapping = dated.where(d.c.hi >= start, d.c.lo <= end)
        return or_(a.c.rid.in_(overlapping), not_(a.c.rid.in_(dated)))

    def _referenced_outside(self, matches: list[Stored], types: list[str] | None, issues: list[Issue]) -> list[Stored]:
        ref = sp_reference
        targets = {
            (t, i)
            for t, i in self.tx.conn.execute(
                select(ref.c.target_type, ref.c.target_id).where(
                    ref.c.rid.in_([m.rid for m in matches]), ref.c.target_id.is_not(None)
                )
            )
            if not types or t in types
        }
        targets -= {(m.res_type, m.res_id) for m in matches}
        if not targets:
            return []
        a = self.sql.alias()
        found = self._fetch(and_(a.c.patient_id.is_(None), self._by_type(a, targets)), a)
        if len(found) > self.settings.max_include:
            issues.append(
                Issue("warning", "too-costly", f"Included resources were limited to {self.settings.max_include}")
            )
            found = found[: self.settings.max_include]
        return found

    def _page_size(self, count: int | None, issues: list[Issue]) -> int:
        settings = self.settings
        n = settings.default_count if count is None else count
        if n > settings.max_count:
            issues.append(
                Issue("warning", "too-costly", f"_count reduced from {n} to the maximum {settings.max_count}")
            )
            n = settings.max_count
        return n

    # -- Observation/$lastn -------------------------------------------------------------------------
    def lastn(self, q: SearchQuery, max_n: int = 1) -> SearchResult:
        """The ``max_n`` most recent Observations per patient and code (see :meth:`_lastn`)."""
        with self._time_limit():
            return self._lastn(q, max_n)

    def _lastn(self, q: SearchQuery, max_n: int) -> SearchResult:
        """The ``max_n`` most recent Observations per patient and code among those matching ``q``.

        Observations are grouped by patient and by each (system, code) of ``Observation.code`` and
        ranked by their effective date (latest first) in one window-function statement.
        """
        self.tx.flush()
        if q.resource_type != "Observation":
            raise FhirError(400, "invalid", "$lastn is defined on Observation")
        a = self.sql.alias()
        conds, _ = self._where(q, a, None)
        t = INDEX_TABLES["token"]
        date_key = self.sql.sort_expr(SortKey("date", "date", True), "Observation", a)
        ranked = (
            select(
                a.c.rid,
                func.row_number()
                .over(
                    partition_by=(a.c.patient_id, t.c.system, t.c.code),
                    order_by=(date_key.desc(), a.c.rid.desc()),
                )
                .label("rn"),
            )
            .select_from(a.join(t, t.c.rid == a.c.rid))
            .where(*conds, t.c.res_type == "Observation", t.c.param == "code", t.c.code.is_not(None))
            .subquery()
        )
        b = self.sql.alias()
        limit = self.settings.max_count
        cols = [b.c[c] for c in _ROW_COLS] + [json_out(b.c.content, self.tx.pg).label("content")]
        latest = self.sql.sort_expr(SortKey("date", "date", True), "Observation", b)
        stmt = (
            select(*cols)
            .where(b.c.rid.in_(select(ranked.c.rid).where(ranked.c.rn <= max_n)))
            .order_by(b.c.patient_id, latest.desc(), b.c.rid)
            .limit(limit + 1)
        )
        rows = list(self.tx.conn.execute(stmt))
        result = SearchResult([Stored.from_row(r) for r in rows[:limit]], issues=list(q.issues))
        if len(rows) > limit:
            result.issues.append(
                Issue("warning", "too-costly", f"$lastn returned the first {limit} results; narrow the criteria")
            )
        if q.includes and result.matches:
            result.included = self.includes(q.includes, result.matches, result.issues)
        return result

    # -- includes --------------------------------------------------------------------------------
    def includes(self, incs: list[Include], matches: list[Stored], issues: list[Issue]) -> list[Stored]:
        seen = {(m.res_type, m.res_id) for m in matches}
        found: list[Stored] = []
        frontier = list(matches)
        first_round = True
        limit = self.settings.max_include
        while frontier:
            new: list[Stored] = []
            for inc in incs:
                if not first_round and not inc.iterate:
                    continue
                got = self._rev_include(inc, frontier) if inc.reverse else self._include(inc, frontier)
                for st in got:
                    key = (st.res_type, st.res_id)
                    if key in seen:
                        continue
                    seen.add(key)
                    new.append(st)
                    if len(found) + len(new) >= limit:
                        issues.append(Issue("warning", "too-costly", f"Included resources were limited to {limit}"))
                        found.extend(new)
                        return found
            found.extend(new)
            frontier = new
            first_round = False
            if not any(i.iterate for i in incs):
                break
        return found

    def _fetch(self, cond: ColumnElement[bool], a: Alias) -> list[Stored]:
        cols = [a.c[c] for c in _ROW_COLS] + [json_out(a.c.content, self.tx.pg).label("content")]
        stmt = select(*cols).where(a.c.deleted == false(), cond).limit(self.settings.max_include + 1)
        return [Stored.from_row(r) for r in self.tx.conn.execute(stmt)]

    def _by_type(self, a: Alias, keys: set[tuple[str, str]]) -> ColumnElement[bool]:
        """Rows of ``a`` with these (type, id) keys that the row filter lets through, per type."""
        by_type: dict[str, list[str]] = {}
        for t, i in sorted(keys):
            by_type.setdefault(t, []).append(i)
        return _any(
            [
                and_(
                    a.c.res_type == t,
                    a.c.res_id.in_(ids) if len(ids) > 1 else a.c.res_id == ids[0],
                    *self.sql.visible(a, t),
                )
                for t, ids in by_type.items()
            ]
        )

    def _include(self, inc: Include, frontier: list[Stored]) -> list[Stored]:
        src = [m for m in frontier if inc.source_type in ("*", m.res_type)]
        if not src:
            return []
        ref = sp_reference
        conds: list[ColumnElement[bool]] = [ref.c.rid.in_([m.rid for m in src]), ref.c.target_id.is_not(None)]
        if inc.param != "*":
            conds.append(_param_is(ref.c.param, None if inc.source_type == "*" else inc.source_type, inc.param))
        if inc.target_type:
            conds.append(ref.c.target_type == inc.target_type)
        targets = {(t, i) for t, i in self.tx.conn.execute(select(ref.c.target_type, ref.c.target_id).where(*conds))}
        if not targets:
            return []
        a = self.sql.alias()
        return self._fetch(self._by_type(a, targets), a)

    def _rev_include(self, inc: Include, frontier: list[Stored]) -> list[Stored]:
        ref = sp_reference
        keys = {(m.res_type, m.res_id) for m in frontier if inc.target_type in (None, m.res_type)}
        if not keys:
            return []
        by_type: dict[str, list[str]] = {}
        for t, i in sorted(keys):
            by_type.setdefault(t, []).append(i)
        conds = [_any([and_(ref.c.target_type == t, ref.c.target_id.in_(ids)) for t, ids in by_type.items()])]
        if inc.source_type != "*":
            conds.append(ref.c.res_type == inc.source_type)
        if inc.param != "*":
            conds.append(_param_is(ref.c.param, None if inc.source_type == "*" else inc.source_type, inc.param))
        a = self.sql.alias()
        source_type = None if inc.source_type == "*" else inc.source_type
        return self._fetch(and_(a.c.rid.in_(select(ref.c.rid).where(*conds)), *self.sql.visible(a, source_type)), a)


def search_ids(tx: Tx, rtype: str, query: str, limit: int = 2) -> list[Stored]:
    """Matches of a conditional-interaction query (strict: unknown parameters are an error)."""
    pairs = parse_pairs(query.split("?", 1)[1] if "?" in query else query)
    if not pairs:
        raise FhirError(400, "invalid", "A conditional interaction needs search criteria")
    s = tx.store.settings
    q = QueryParser(s.max_chain_depth, s.max_or_values).parse(rtype, pairs, strict=True)
    if not q.criteria:
        raise FhirError(400, "invalid", "A conditional interaction needs search criteria")
    q.count = limit
    q.total = "none"
    q.sort = []
    return Searcher(tx).search(q).matches
