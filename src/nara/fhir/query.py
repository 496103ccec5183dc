"""Parsing FHIR search query strings into criteria and result parameters (R4 search.html).

The parser knows the search parameters of each type (from :mod:`nara.fhir.searchparams`) and turns
``name[:modifier][.chain]=v1,v2`` pairs into :class:`Criterion` trees. Problems are collected as
issues: unknown parameters are ignored and reported (lenient handling) or rejected (strict).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from urllib.parse import parse_qsl

from nara.fhir.outcome import FhirError, Issue
from nara.fhir.searchparams import SearchParam, search_params
from nara.fhir.spec import spec

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
ORDERED_TYPES = frozenset({"date", "number", "quantity"})
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_include",
        "_revinclude",
        "_summary",
        "_elements",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_cursor",
        "_type",
        "_explain",
    }
)
MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"text", "not", "missing", "of-type"},
    "reference": {"missing", "identifier"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"missing", "below", "above"},
    "composite": {"missing"},
}
SPECIAL_PARAMS = {"_id": "token", "_lastUpdated": "date", "_list": "special", "_has": "special"}


@dataclass
class Criterion:
    """One search criterion: values are OR-ed; criteria in a query are AND-ed."""

    param: str
    type: str
    modifier: str | None = None
    values: list[str] = field(default_factory=list)
    # chained search: this criterion is on a reference and ``chain`` applies to its target(s)
    target_types: tuple[str, ...] = ()
    chain: dict[str, Criterion] = field(default_factory=dict)  # target type -> criterion on it
    # reverse chaining (_has): resources of has_type whose has_param points here and match ``chain``
    has_type: str | None = None
    has_param: str | None = None
    definition: SearchParam | None = None


@dataclass
class Include:
    source_type: str  # "*" allowed
    param: str  # "*" allowed
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass
class SortKey:
    param: str
    type: str
    descending: bool


@dataclass
class SearchQuery:
    resource_type: str | None
    criteria: list[Criterion] = field(default_factory=list)
    types: list[str] = field(default_factory=list)  # for system-level search (_type)
    count: int | None = None
    sort: list[SortKey] = field(default_factory=list)
    includes: list[Include] = field(default_factory=list)
    summary: str | None = None
    elements: list[str] = field(default_factory=list)
    total: str | None = None
    contained: str = "false"
    cursor: str | None = None
    explain: bool = False
    issues: list[Issue] = field(default_factory=list)
    # the criteria as (name, value) pairs, re-used to build paging links
    echo: list[tuple[str, str]] = field(default_factory=list)


def split_values(raw: str) -> list[str]:
    """Split on unescaped commas and unescape ``\\,``, ``\\$``, ``\\|`` and ``\\\\``."""
    out, cur, i = [], [], 0
    while i < len(raw):
        ch = raw[i]
        if ch == "\\" and i + 1 < len(raw):
            cur.append(raw[i : i + 2])
            i += 2
            continue
        if ch == ",":
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    out.append("".join(cur))
    return out


def unescape(value: str) -> str:
    return re.sub(r"\\([\\,$|])", r"\1", value)


def split_escaped(value: str, sep: str) -> list[str]:
    """Split on an unescaped separator (``|`` for tokens, ``$`` for composites)."""
    parts, cur, i = [], [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            cur.append(value[i : i + 2])
            i += 2
            continue
        if ch == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    return parts


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and (value[2].isdigit() or value[2] in "-+."):
        return value[:2], value[2:]
    return "eq", value


def parse_pairs(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query.lstrip("?"), keep_blank_values=True)


class QueryParser:
    """Parses one query; ``max_or_values`` bounds the values of one parameter and of the whole query."""

    def __init__(self, max_chain_depth: int = 3, max_or_values: int = 500) -> None:
        self.max_chain_depth = max_chain_depth
        self.max_or_values = max_or_values
        self._values_left = max_or_values
        self._types: list[str] = []

    def parse(self, resource_type: str | None, pairs: list[tuple[str, str]], strict: bool = False) -> SearchQuery:
        q = SearchQuery(resource_type)
        # _type first: the criteria of a system-level search are read against the listed types.
        ordered = [p for p in pairs if p[0] == "_type"] + [p for p in pairs if p[0] != "_type"]
        self._values_left = self.max_or_values
        for name, value in ordered:
            try:
                self._one(q, name, value)
            except FhirError as e:
                if strict or e.status != 400 or e.code in ("too-costly",):
                    raise
                # Lenient handling: the parameter is ignored and reported as a warning in the Bundle.
                for i in e.issues:
                    i.severity = "warning"
                    i.diagnostics += " (ignored)"
                q.issues.extend(e.issues)
        if strict and q.issues:
            raise FhirError(400, q.issues[0].code, q.issues[0].diagnostics, issues=q.issues)
        return q

    # -- one name=value pair ---------------------------------------------------------------------
    def _one(self, q: SearchQuery, name: str, value: str) -> None:
        base = name.split(":", 1)[0]
        if base in RESULT_PARAMS:
            self._result_param(q, name, value)
            return
        rtype = q.resource_type
        if rtype is None and len(q.types) == 1:
            rtype = q.types[0]
        self._types = q.types
        crit = self._criterion(rtype, name, value, depth=0)
        q.criteria.append(crit)
        q.echo.append((name, value))

    def _criterion(self, rtype: str | None, name: str, value: str, depth: int) -> Criterion:
        if depth > self.max_chain_depth:
            raise FhirError(400, "too-costly", f"Chain deeper than {self.max_chain_depth} levels: '{name}'")
        if name.startswith("_has:"):
            return self._has(rtype, name, value, depth)
        head, _, rest = name.partition(".")
        pname, _, modifier = head.partition(":")
        if pname in ("_id", "_lastUpdated", "_list"):
            ptype = SPECIAL_PARAMS[pname]
            definition = None
        else:
            params = search_params(rtype) if rtype else common_params(tuple(self._types) if depth == 0 else ())
            definition = params.get(pname)
            if definition is None:
                where = rtype or "all resource types"
                raise FhirError(400, "not-supported", f"Unknown search parameter '{pname}' for {where}", [name])
            ptype = definition.type
        crit = Criterion(pname, ptype, modifier or None, definition=definition)
        if rest:  # chained
            if ptype != "reference":
                raise FhirError(400, "invalid", f"Chaining needs a reference parameter; '{pname}' is {ptype}", [name])
            targets = self._targets(rtype, definition, modifier)
            crit.modifier = None
            crit.target_types = targets
            chained_targets = tuple(t for t in targets if self._has_param(t, rest))
            if not chained_targets:
                raise FhirError(400, "not-supported", f"Chained parameter '{rest}' is not known on {targets}", [name])
            crit.target_types = chained_targets
            crit.chain = {t: self._criterion(t, rest, value, depth + 1) for t in chained_targets}
            return crit
        self._check_modifier(crit, name)
        values = split_values(value)
        if len(values) > self.max_or_values:
            raise FhirError(400, "too-costly", f"More than {self.max_or_values} OR values for '{name}'", [name])
        if crit.modifier == "missing":
            if value not in ("true", "false"):
                raise FhirError(400, "invalid", f":missing takes true or false, not {value!r}", [name])
        elif any(v == "" for v in values):
            raise FhirError(400, "invalid", f"Empty value for search parameter '{name}'", [name])
        self._values_left -= len(values)
        if self._values_left < 0:
            raise FhirError(
                400, "too-costly", f"More than {self.max_or_values} search values in one query (at '{name}')", [name]
            )
        crit.values = values
        if ptype == "reference" and crit.modifier and crit.modifier not in ("missing", "identifier"):
            crit.target_types = self._targets(rtype, definition, crit.modifier)
        elif ptype == "reference" and definition is not None and definition.targets:
            # a logical id (``subject=123``) can only mean one of the parameter's target types
            crit.target_types = tuple(t for t in definition.targets if t in spec().resource_types)
        return crit

    def _has(self, rtype: str | None, name: str, value: str, depth: int) -> Criterion:
        parts = name.split(":", 3)
        if len(parts) < 4 or not rtype:
            raise FhirError(400, "invalid", f"Malformed _has parameter '{name}' (expected _has:Type:param:filter)")
        _, has_type, has_param, rest = parts
        if has_type not in spec().resource_types:
            raise FhirError(400, "invalid", f"Unknown resource type '{has_type}' in '{name}'", [name])
        ref = search_params(has_type).get(has_param)
        if ref is None or ref.type != "reference":
            raise FhirError(400, "invalid", f"'{has_param}' is not a reference parameter of {has_type}", [name])
        inner = self._criterion(has_type, rest, value, depth + 1)
        return Criterion("_has", "special", None, [], has_type=has_type, has_param=has_param, chain={has_type: inner})

    def _targets(self, rtype: str | None, definition: SearchParam | None, modifier: str) -> tuple[str, ...]:
        if modifier:
            if modifier not in spec().resource_types:
                raise FhirError(400, "invalid", f"Unknown resource type modifier ':{modifier}'")
            return (modifier,)
        if definition is None or not definition.targets:
            return tuple(sorted(spec().resource_types))
        return tuple(t for t in definition.targets if t in spec().resource_types)

    def _has_param(self, rtype: str, chained_name: str) -> bool:
        first = chained_name.split(".", 1)[0].split(":", 1)[0]
        return first in ("_id", "_lastUpdated", "_has") or first in search_params(rtype)

    def _check_modifier(self, crit: Criterion, name: str) -> None:
        m = crit.modifier
        if m is None:
            return
        if crit.param == "_id" and m in ("missing", "not"):
            return
        allowed = MODIFIERS.get(crit.type, set())
        if crit.type == "reference" and m in spec().resource_types:
            return
        if m not in allowed:
            raise FhirError(400, "not-supported", f"Modifier ':{m}' is not supported on '{crit.param}'", [name])
        if m == "of-type":
            raise FhirError(400, "not-supported", "Modifier ':of-type' is not supported", [name])

    # -- result parameters -----------------------------------------------------------------------
    def _result_param(self, q: SearchQuery, name: str, value: str) -> None:
        base, _, modifier = name.partition(":")
        if base == "_count":
            if not value.isdigit():
                raise FhirError(400, "invalid", f"_count must be a non-negative integer, not {value!r}", ["_count"])
            q.count = int(value)
        elif base == "_sort":
            for key in value.split(","):
                key = key.strip()
                if not key:
                    continue
                desc = key.startswith("-")
                pname = key.lstrip("-")
                ptype = self._sort_type(q.resource_type, q.types, pname)
                q.sort.append(SortKey(pname, ptype, desc))
        elif base in ("_include", "_revinclude"):
            q.includes.append(
                self._include(value, reverse=base == "_revinclude", iterate=modifier in ("iterate", "recurse"))
            )
        elif base == "_summary":
            if value not in ("true", "false", "text", "data", "count"):
                raise FhirError(400, "invalid", f"Unknown _summary value {value!r}", ["_summary"])
            q.summary = value
        elif base == "_elements":
            q.elements = [e.strip() for e in value.split(",") if e.strip()]
        elif base == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise FhirError(400, "invalid", f"_total must be none, estimate or accurate, not {value!r}")
            q.total = value
        elif base == "_contained":
            if value not in ("true", "false", "both"):
                raise FhirError(400, "invalid", f"_contained must be true, false or both, not {value!r}")
            q.contained = value
            if value != "false":
                raise FhirError(400, "not-supported", "Searching contained resources (_contained) is not supported")
        elif base == "_type":
            for t in value.split(","):
                if t not in spec().resource_types:
                    raise FhirError(400, "invalid", f"Unknown resource type {t!r} in _type")
                q.types.append(t)
        elif base == "_cursor":
            q.cursor = value
        elif base == "_explain":
            q.explain = value == "true"
        # _format, _pretty and _containedType are handled by the HTTP layer or ignored.

    def _sort_type(self, rtype: str | None, types: list[str], pname: str) -> str:
        if pname in ("_id", "_lastUpdated"):
            return SPECIAL_PARAMS[pname]
        params = search_params(rtype) if rtype else common_params(tuple(types))
        d = params.get(pname)
        if d is None:
            raise FhirError(400, "not-supported", f"Unknown sort parameter '{pname}'", ["_sort"])
        if d.type == "composite":
            raise FhirError(400, "not-supported", f"Cannot sort on composite parameter '{pname}'", ["_sort"])
        return d.type

    def _include(self, value: str, reverse: bool, iterate: bool) -> Include:
        parts = value.split(":")
        if value == "*":
            return Include("*", "*", None, iterate, reverse)
        if len(parts) < 2 or len(parts) > 3:
            raise FhirError(400, "invalid", f"Malformed include {value!r}; expected Type:param[:targetType]")
        src, param = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if src != "*" and src not in spec().resource_types:
            raise FhirError(400, "invalid", f"Unknown resource type {src!r} in include")
        if param != "*" and src != "*":
            d = search_params(src).get(param)
            if d is None or d.type != "reference":
                raise FhirError(400, "invalid", f"'{param}' is not a reference parameter of {src}")
        if target is not None and target not in spec().resource_types:
            raise FhirError(400, "invalid", f"Unknown target type {target!r} in include")
        return Include(src, param, target, iterate, reverse)


@cache
def common_params(types: tuple[str, ...] = ()) -> dict[str, SearchParam]:
    """Parameters usable in a system-level search: those of Resource, or, when ``_type`` lists types,
    those every listed type defines with the same code and parameter type."""
    if not types:
        return {k: v for k, v in search_params("Basic").items() if k.startswith("_")}
    first, *rest = types
    out = {}
    for code, p in search_params(first).items():
        others = [search_params(t).get(code) for t in rest]
        if all(o is not None and o.type == p.type for o in others):
            out[code] = p
    return out
