"""The R4 search parameters Nära indexes, and the extraction of index values from a resource.

For every resource type, each search parameter from the official R4 definitions is compiled once
(see :mod:`nara.fhir.pathexpr`). :func:`extract` turns a resource into plain index rows per
parameter type; the store writes them in the same transaction as the resource.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from typing import Any

from nara.fhir.dates import MIN_DT, parse_range, period_range
from nara.fhir.identifiers import stated_personal_number
from nara.fhir.pathexpr import Compiler, Evaluator, Node, UnsupportedExpression, reference_type, split_union
from nara.fhir.pathexpr import parse as parse_expr
from nara.fhir.spec import SearchParamDef, spec
from nara.fhir.text import normalize

# Parameters answered from the resource table itself rather than index rows.
RESOURCE_COLUMN_PARAMS = frozenset({"_id", "_lastUpdated"})
UCUM = "http://unitsofmeasure.org"
CURRENCY = "urn:iso:std:iso:4217"
QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"})
# The FHIR types each parameter type has index rows for (None: any primitive).
INDEXABLE_TYPES: dict[str, frozenset[str] | None] = {
    "token": frozenset(
        {"CodeableConcept", "Coding", "Identifier", "ContactPoint", "boolean", "code", "string", "id", "uri", "url"}
        | {"canonical", "oid", "uuid", "markdown"}
    ),
    "string": frozenset({"string", "markdown", "HumanName", "Address", "code", "id", "uri", "url", "canonical"}),
    "date": frozenset({"date", "dateTime", "instant", "Period", "Timing", "string"}),
    "number": frozenset({"decimal", "integer", "positiveInt", "unsignedInt", "Range"}),
    "quantity": QUANTITY_TYPES | {"Money", "Range"},
    "reference": frozenset({"Reference", "canonical", "uri", "url"}),
    "uri": frozenset({"uri", "url", "canonical", "oid", "uuid"}),
}
PARAM_TYPES = ("token", "string", "date", "number", "quantity", "reference", "uri", "composite")

TokenRow = tuple[str | None, str | None, str | None]  # system, code, display/text (normalised)
StringRow = tuple[str, str]  # normalised, exact
DateRow = tuple[datetime, datetime]
NumberRow = tuple[float, float]
QuantityRow = tuple[str | None, str | None, str | None, float, float]  # system, code, unit, lo, hi
ReferenceRow = tuple[str | None, str | None, str | None, str | None, str | None]  # type, id, url, idsys, idval
UriRow = tuple[str]
CompositeRow = tuple[str | None, str | None, str | None, str | None, float | None, float | None, str | None]


Branch = tuple[str, Evaluator, frozenset[str] | None, list[tuple[str, Evaluator]] | None]


@dataclass
class SearchParam:
    code: str
    type: str
    resource_type: str
    expression: str
    evaluator: Evaluator
    targets: tuple[str, ...] = ()
    # composite: (component code, component type, evaluator relative to each root node)
    components: list[tuple[str, str, Evaluator]] = field(default_factory=list)
    # Top-level JSON properties the expression reads (None: cannot tell); without them nothing is indexed.
    root_keys: frozenset[str] | None = None
    # The expression's top-level union branches as (text, evaluator, root keys, stages): extraction
    # evaluates each branch once per resource, and each path prefix (stage) once, shared by every
    # parameter that uses it; branches that are not plain paths have no stages and run whole.
    branches: tuple[Branch, ...] = ()
    # composite: the component expressions (compared when looking for union aliases)
    component_exprs: tuple[str, ...] = ()
    # A union alias (``combo-code`` = ``code`` | ``component-code``) has no rows of its own: its rows are
    # those of these parameters. Empty for parameters stored under their own code.
    stored_as: tuple[str, ...] = ()


@dataclass
class IndexRows:
    """Index rows of one resource, by parameter type: param code -> rows."""

    token: list[tuple[str, TokenRow]] = field(default_factory=list)
    string: list[tuple[str, StringRow]] = field(default_factory=list)
    date: list[tuple[str, DateRow]] = field(default_factory=list)
    number: list[tuple[str, NumberRow]] = field(default_factory=list)
    quantity: list[tuple[str, QuantityRow]] = field(default_factory=list)
    reference: list[tuple[str, ReferenceRow]] = field(default_factory=list)
    uri: list[tuple[str, UriRow]] = field(default_factory=list)
    composite: list[tuple[str, CompositeRow]] = field(default_factory=list)


# ---- value conversion per parameter type ------------------------------------------------------
def token_values(node: Node) -> list[TokenRow]:
    value, (tname, _) = node
    if tname == "CodeableConcept" and isinstance(value, dict):
        rows: list[TokenRow] = []
        for c in value.get("coding", ()):
            if isinstance(c, dict):
                rows.extend(token_values((c, ("Coding", ""))))
        text = value.get("text")
        if isinstance(text, str):
            rows.append((None, None, normalize(text)))
        return rows
    if tname == "Coding" and isinstance(value, dict):
        disp = value.get("display")
        return [(value.get("system"), value.get("code"), normalize(disp) if isinstance(disp, str) else None)]
    if tname == "Identifier" and isinstance(value, dict):
        typ = value.get("type")
        text = typ.get("text") if isinstance(typ, dict) else None
        label = normalize(text) if isinstance(text, str) else None
        system, written = value.get("system"), value.get("value")
        rows = [(system, written, label)]
        number = stated_personal_number(system, written) if isinstance(written, str) else None
        if number is not None and number != written:
            # Also under its 12 digits when written with a hyphen (YYYYMMDD-NNNC): a login, an identifier
            # look-up or a search by the number finds the record (R-ID-1).
            rows.append((system, number, label))
        return rows
    if tname == "ContactPoint" and isinstance(value, dict):
        v = value.get("value")
        return [(None, v, None)] if isinstance(v, str) else []
    if isinstance(value, bool):
        return [(None, "true" if value else "false", None)]
    if isinstance(value, str):
        return [(None, value, None)]
    return []


_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def string_values(node: Node) -> list[StringRow]:
    value, (tname, _) = node
    if isinstance(value, str):
        return [(normalize(value), value[:255])]
    parts = _NAME_PARTS if tname == "HumanName" else _ADDRESS_PARTS if tname == "Address" else ()
    out: list[StringRow] = []
    if isinstance(value, dict):
        for p in parts:
            v = value.get(p)
            for s in v if isinstance(v, list) else [v]:
                if isinstance(s, str):
                    out.append((normalize(s), s[:255]))
    return out


def date_values(node: Node) -> list[DateRow]:
    value, (tname, _) = node
    if isinstance(value, str):
        rng = parse_range(value)
        return [rng] if rng else []
    if not isinstance(value, dict):
        return []
    if tname == "Period":
        rng = period_range(value)
        return [rng] if rng else []
    if tname == "Timing":
        out: list[DateRow] = []
        for ev in value.get("event", ()):
            if isinstance(ev, str) and (r := parse_range(ev)):
                out.append(r)
        rep = value.get("repeat")
        if isinstance(rep, dict) and isinstance(rep.get("boundsPeriod"), dict):
            r2 = period_range(rep["boundsPeriod"])
            if r2:
                out.append(r2)
        return out
    return []


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, int | float):
        return None
    return float(v)


def number_values(node: Node) -> list[NumberRow]:
    value, (tname, _) = node
    if tname == "Range" and isinstance(value, dict):
        low, high = value.get("low") or {}, value.get("high") or {}
        lo, hi = _num(low.get("value")), _num(high.get("value"))
        if lo is None and hi is None:
            return []
        return [(lo if lo is not None else float("-inf"), hi if hi is not None else float("inf"))]
    v = _num(value)
    return [(v, v)] if v is not None else []


def quantity_values(node: Node) -> list[QuantityRow]:
    value, (tname, _) = node
    if not isinstance(value, dict):
        return []
    if tname in QUANTITY_TYPES:
        v = _num(value.get("value"))
        if v is None:
            return []
        return [(value.get("system"), value.get("code"), value.get("unit"), v, v)]
    if tname == "Money":
        v = _num(value.get("value"))
        return [(CURRENCY, value.get("currency"), None, v, v)] if v is not None else []
    if tname == "Range":
        low, high = value.get("low") or {}, value.get("high") or {}
        lo, hi = _num(low.get("value")), _num(high.get("value"))
        if lo is None and hi is None:
            return []
        unit_src = low if lo is not None else high
        return [
            (
                unit_src.get("system"),
                unit_src.get("code"),
                unit_src.get("unit"),
                lo if lo is not None else float("-inf"),
                hi if hi is not None else float("inf"),
            )
        ]
    return []


def reference_values(node: Node, root: dict[str, Any]) -> list[ReferenceRow]:
    value = node[0]
    if isinstance(value, str):  # canonical / uri
        return [(None, None, value.split("|", 1)[0], None, None)]
    if not isinstance(value, dict):
        return []
    out: list[ReferenceRow] = []
    ref = value.get("reference")
    if isinstance(ref, str) and not ref.startswith("#"):
        # Relative references (Type/id) point into this server; absolute ones (URLs, urn:) are kept by URL.
        rtype = reference_type(ref) if "://" not in ref and not ref.startswith("urn:") else None
        parts = ref.split("/")
        if "_history" in parts:
            parts = parts[: parts.index("_history")]
        if rtype is not None and "?" not in ref and len(parts) == 2:
            out.append((rtype, parts[-1], None, None, None))
        else:
            out.append((None, None, ref, None, None))
    ident = value.get("identifier")
    if isinstance(ident, dict) and isinstance(ident.get("value"), str):
        out.append((None, None, None, ident.get("system"), ident["value"]))
    return out


def uri_values(node: Node) -> list[UriRow]:
    v = node[0]
    return [(v,)] if isinstance(v, str) else []


def _component_scalar(ptype: str, node: Node, root: dict[str, Any]) -> list[tuple[Any, ...]]:
    """The second component of a composite as (system, code, lo, hi, text)."""
    if ptype == "token":
        return [(s, c, None, None, None) for s, c, _ in token_values(node)]
    if ptype == "quantity":
        return [(s, c or u, lo, hi, None) for s, c, u, lo, hi in quantity_values(node)]
    if ptype == "number":
        return [(None, None, lo, hi, None) for lo, hi in number_values(node)]
    if ptype == "date":
        return [(None, None, date_seconds(lo), date_seconds(hi), None) for lo, hi in date_values(node)]
    if ptype == "string":
        return [(None, None, None, None, norm) for norm, _ in string_values(node)]
    if ptype == "reference":
        return [(None, None, None, None, f"{t}/{i}" if t else url) for t, i, url, _, _ in reference_values(node, root)]
    if ptype == "uri":
        return [(None, None, None, None, u) for (u,) in uri_values(node)]
    return []


def date_seconds(dt: datetime) -> float:
    """Seconds since 0001-01-01 (how composite rows store a date component)."""
    return (dt - MIN_DT).total_seconds()


# ---- registry ----------------------------------------------------------------------------------
class Registry:
    def __init__(self) -> None:
        self.spec = spec()
        self.compiler = Compiler(self.spec)
        self.by_type: dict[str, dict[str, SearchParam]] = {}
        self.unsupported: dict[tuple[str, str], str] = {}

    def _defs_for(self, rtype: str) -> list[SearchParamDef]:
        out = []
        domain = self.spec.types[rtype].base == "DomainResource"
        for p in self.spec.search_params:
            if rtype in p.base or p.base[0] == "Resource" or (p.base[0] == "DomainResource" and domain):
                out.append(p)
        return out

    def params(self, rtype: str) -> dict[str, SearchParam]:
        found = self.by_type.get(rtype)
        if found is not None:
            return found
        out: dict[str, SearchParam] = {}
        for d in self._defs_for(rtype):
            sp = self._compile(d, rtype)
            if sp is not None:
                out[d.code] = sp
        _find_union_aliases(out)
        self.by_type[rtype] = out
        return out

    def _compile(self, d: SearchParamDef, rtype: str) -> SearchParam | None:
        if d.type == "special" or not d.expression:
            self.unsupported[(rtype, d.code)] = "no expression or special parameter"
            return None
        if d.code == "deceased" and rtype == "Patient":
            dkeys = frozenset({"deceasedBoolean", "deceasedDateTime"})
            return SearchParam(
                d.code,
                d.type,
                rtype,
                d.expression,
                _patient_deceased,
                root_keys=dkeys,
                branches=((d.expression, _patient_deceased, dkeys, None),),
            )
        try:
            fn = self.compiler.compile(d.expression, rtype)
        except UnsupportedExpression as exc:
            self.unsupported[(rtype, d.code)] = str(exc)
            return None
        if fn is None:
            return None
        if not self._indexable(d, rtype):
            self.unsupported[(rtype, d.code)] = "expression yields no indexable value"
            return None
        sp = SearchParam(d.code, d.type, rtype, d.expression, fn, _effective_targets(d, rtype))
        sp.root_keys = self.compiler.root_keys(d.expression, rtype)
        branches: list[Branch] = []
        for text in split_union(d.expression):
            bfn = self.compiler.compile(text, rtype)
            if bfn is not None:
                keys = self.compiler.root_keys(text, rtype)
                branches.append((text, bfn, keys, self.compiler.stages(text, rtype)))
        sp.branches = tuple(branches)
        if d.type == "composite":
            if len(d.component) != 2:
                self.unsupported[(rtype, d.code)] = "composite with more than two components"
                return None
            root_shapes = self._root_shapes(d.expression, rtype)
            defs = {p.code: p for p in self._defs_for(rtype)}
            for code, expr in d.component:
                cdef = defs.get(code)
                try:
                    cfn = self.compiler.compile_relative(expr, root_shapes)
                except UnsupportedExpression as exc:
                    self.unsupported[(rtype, d.code)] = str(exc)
                    return None
                if cdef is None or cfn is None:
                    self.unsupported[(rtype, d.code)] = f"component {code} not resolvable"
                    return None
                sp.components.append((code, cdef.type, cfn))
                sp.component_exprs += (expr,)
            if sp.components[0][1] != "token":
                self.unsupported[(rtype, d.code)] = "composite whose first component is not a token"
                return None
            # A branch rooted at the resource itself: its value component decides whether rows can exist.
            value_keys = self.compiler.relative_root_keys(d.component[1][1], rtype)
            sp.branches = tuple((t, f, value_keys if k is None else k, st) for t, f, k, st in sp.branches)
            union: set[str] = set()
            for _, _, k, _ in sp.branches:
                if k is None:
                    break
                union |= k
            else:
                sp.root_keys = frozenset(union)
        return sp

    def _indexable(self, d: SearchParamDef, rtype: str) -> bool:
        """Whether some value the expression can yield has index rows for the parameter's type."""
        assert d.expression is not None
        if d.type == "composite":
            return True
        _, shapes = self.compiler._node(parse_expr(d.expression), {(rtype, "")}, rtype)
        wanted = INDEXABLE_TYPES[d.type]
        return any(self.spec.is_primitive(t) if wanted is None else t in wanted for t, ctx in shapes if not ctx)

    def _root_shapes(self, expr: str, rtype: str) -> set[tuple[str, str]]:
        from nara.fhir.pathexpr import Path, Union, parse

        node = parse(expr)
        shapes: set[tuple[str, str]] = set()
        parts = node.parts if isinstance(node, Union) else [node]
        for part in parts:
            if isinstance(part, Path) and part.head == rtype:
                if not part.steps:
                    shapes.add((rtype, ""))
                else:
                    name = part.steps[-1].name
                    ctx = ".".join(s.name for s in part.steps)
                    el = self.spec.context(rtype, ctx.rsplit(".", 1)[0] if "." in ctx else "").get(name)
                    if el is not None and el.backbone is not None:
                        shapes.add((rtype, el.backbone))
                    elif el is not None:
                        shapes.add((el.type, ""))
        return shapes


def _find_union_aliases(params: dict[str, SearchParam]) -> None:
    """Mark parameters whose branches are exactly the union of other parameters' branches.

    Observation's ``combo-code`` is ``Observation.code | Observation.component.code``, which are the
    ``code`` and ``component-code`` parameters: its index rows would repeat theirs, so it stores none
    and searches on it read the rows of those parameters (a third fewer rows for a blood pressure).
    """
    for code, p in params.items():
        mine = {b[0] for b in p.branches}
        if len(mine) < 2:
            continue
        parts = [
            q
            for qc, q in params.items()
            if qc != code
            and q.type == p.type
            and not q.stored_as
            and q.component_exprs == p.component_exprs
            and q.branches
            and {b[0] for b in q.branches} <= mine
        ]
        if parts and set().union(*({b[0] for b in q.branches} for q in parts)) == mine:
            p.stored_as = tuple(sorted(q.code for q in parts))


def index_codes(rtype: str | None, code: str) -> tuple[str, ...]:
    """The parameter codes under which the index rows of ``rtype``'s parameter ``code`` are stored."""
    if rtype is None:
        return (code,)
    p = search_params(rtype).get(code)
    return p.stored_as if p is not None and p.stored_as else (code,)


def _patient_deceased(nodes: list[Node], root: dict[str, Any]) -> list[Node]:
    res = root
    if res.get("deceasedBoolean") is True or "deceasedDateTime" in res:
        return [(True, ("boolean", ""))]
    if "deceasedBoolean" in res:
        return [(False, ("boolean", ""))]
    return []


@cache
def registry() -> Registry:
    return Registry()


def search_params(rtype: str) -> dict[str, SearchParam]:
    return registry().params(rtype)


_CONVERTERS: dict[str, Callable[..., list[Any]]] = {
    "token": token_values,
    "string": string_values,
    "date": date_values,
    "number": number_values,
    "quantity": quantity_values,
    "uri": uri_values,
}


@cache
def _indexed_params(rtype: str) -> tuple[tuple[str, SearchParam, frozenset[str] | None], ...]:
    """The parameters of ``rtype`` that have index rows, with the top-level keys they need."""
    return tuple(
        (code, sp, sp.root_keys)
        for code, sp in search_params(rtype).items()
        if code not in RESOURCE_COLUMN_PARAMS and not sp.stored_as
    )


def _evaluate_branches(
    sp: SearchParam,
    root_nodes: list[Node],
    resource: dict[str, Any],
    present: Any,
    evaluated: dict[str, list[Node]],
) -> list[Node]:
    nodes: list[Node] = []
    for text, fn, keys, stages in sp.branches:
        if keys is not None and keys.isdisjoint(present):
            continue
        got = evaluated.get(text)
        if got is None:
            if stages is None:
                got = fn(root_nodes, resource)
            else:
                got = root_nodes
                for key, step in stages:
                    cached = evaluated.get(key)
                    if cached is None:
                        cached = evaluated[key] = step(got, resource) if got else []
                    got = cached
            evaluated[text] = got
        nodes = got if not nodes else nodes + got
    return nodes


def extract(resource: dict[str, Any], *, plain: bool = False) -> IndexRows:
    """All index rows for ``resource`` (its type's search parameters, R4 definitions).

    Parameters whose expression reads none of the resource's top-level properties are skipped without
    evaluation, and union branches shared by several parameters are evaluated once. ``plain`` turns
    both shortcuts off and evaluates every whole expression (the tests check that both agree).
    """
    rtype = resource["resourceType"]
    rows = IndexRows()
    root_nodes: list[Node] = [(resource, (rtype, ""))]
    present = frozenset(resource)
    evaluated: dict[str, list[Node]] = {}
    for code, sp, keys in _indexed_params(rtype):
        if plain:
            nodes = sp.evaluator(root_nodes, resource)
        elif keys is not None and keys.isdisjoint(present):
            continue
        else:
            nodes = _evaluate_branches(sp, root_nodes, resource, present, evaluated)
        if not nodes:
            continue
        t = sp.type
        if t == "reference":
            seen_ref: set[ReferenceRow] = set()
            for n in nodes:
                for r in reference_values(n, resource):
                    if r not in seen_ref:
                        seen_ref.add(r)
                        rows.reference.append((code, r))
        elif t == "composite":
            seen_c: set[CompositeRow] = set()
            (_, _, f1), (_, t2, f2) = sp.components
            for n in nodes:
                first = [tv for m in f1([n], resource) for tv in token_values(m)]
                second = [sv for m in f2([n], resource) for sv in _component_scalar(t2, m, resource)]
                for s1, c1, _ in first:
                    if c1 is None:
                        continue
                    for s2, c2, lo, hi, text in second:
                        row = (s1, c1, s2, c2, lo, hi, text)
                        if row not in seen_c:
                            seen_c.add(row)
                            rows.composite.append((code, row))
        else:
            conv = _CONVERTERS[t]
            target: list[Any] = getattr(rows, t)
            seen: set[Any] = set()
            for n in nodes:
                for r in conv(n):
                    if r not in seen:
                        seen.add(r)
                        target.append((code, r))
    return rows


def patient_compartment_params(rtype: str) -> tuple[str, ...]:
    return spec().patient_compartment.get(rtype, ())


def compartment_patient(resource: dict[str, Any], rows: IndexRows) -> str | None:
    """The Patient whose compartment this resource belongs to (the first match, in definition order)."""
    rtype = resource["resourceType"]
    if rtype == "Patient":
        rid = resource.get("id")
        return rid if isinstance(rid, str) else None
    if rtype in ("Binary", "Bundle"):
        # Outside the Patient compartment by definition, yet they carry a patient's data: a Binary by its
        # securityContext, a document by its Composition's subject.
        target = _relative_reference(_carrier_subject(resource))
        return target[1] if target is not None and target[0] == "Patient" else None
    params = patient_compartment_params(rtype)
    if not params:
        return None
    for p in params:
        for code, (t, i, _url, _s, _v) in rows.reference:
            if code == p and t == "Patient" and i:
                return i
    return None


def _carrier_subject(resource: dict[str, Any]) -> Any:
    """What a Binary or Bundle says its patient data belongs to: the Binary's securityContext, or the subject
    of the Composition that opens a document Bundle."""
    if resource["resourceType"] == "Binary":
        return resource.get("securityContext")
    entries = resource.get("entry")
    opening = entries[0] if isinstance(entries, list) and entries else None
    first = opening.get("resource") if isinstance(opening, dict) else None
    if isinstance(first, dict) and first.get("resourceType") == "Composition":
        return first.get("subject")
    return None


def carrier_reference(resource: dict[str, Any]) -> tuple[str, str] | None:
    """The (type, id) a Binary or document Bundle says its data belongs to, when that is not a Patient."""
    ref = _carrier_subject(resource) if resource.get("resourceType") in ("Binary", "Bundle") else None
    target = _relative_reference(ref)
    return target if target is not None and target[0] != "Patient" else None


def _relative_reference(ref: Any) -> tuple[str, str] | None:
    """The (type, id) of a relative Reference ``Type/id``, or None."""
    value = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(value, str) or value.count("/") != 1:
        return None
    rtype, rid = value.split("/")
    return (rtype, rid) if rtype[:1].isupper() and rid else None


_RESOLVE_IS = re.compile(r"resolve\(\) is ([A-Za-z]+)")


def _effective_targets(d: SearchParamDef, rtype: str) -> tuple[str, ...]:
    """The target types a reference parameter can really index for ``rtype``.

    Some R4 definitions list more targets than their expression lets through: ``clinical-patient`` names
    Patient and Group, but every branch is ``….where(resolve() is Patient)``. When each branch of this
    type's expression filters by ``resolve() is``, only those types can appear in the index.
    """
    if d.type != "reference" or not d.expression:
        return d.target
    branches = [b.strip() for b in d.expression.split("|") if b.strip().startswith(rtype + ".")]
    found: set[str] = set()
    for b in branches:
        m = _RESOLVE_IS.search(b)
        if m is None:
            return d.target
        found.add(m.group(1))
    return tuple(t for t in d.target if t in found) if found else d.target
