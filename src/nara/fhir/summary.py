"""Subsetting resources for ``_summary`` and ``_elements`` (R4 search.html#summary, #elements)."""

from __future__ import annotations

from functools import cache
from typing import Any

from nara.fhir.spec import spec

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue", "code": "SUBSETTED"}
ALWAYS = ("resourceType", "id", "meta")


@cache
def _top_level(rtype: str) -> tuple[frozenset[str], frozenset[str]]:
    """(summary JSON names, mandatory JSON names) of a resource type's top-level elements."""
    sp = spec()
    summary: set[str] = set()
    mandatory: set[str] = set()
    elements = dict(sp.types["Resource"].raw["elements"])
    td = sp.types[rtype]
    if td.base == "DomainResource":
        elements.update(sp.types["DomainResource"].raw["elements"])
    elements.update(td.raw["elements"])
    for path, el in elements.items():
        if "." in path:
            continue
        names = [path]
        if path.endswith("[x]"):
            stem = path[:-3]
            names = [stem + t[0].upper() + t[1:] for t in el.get("t", [])]
        if el.get("summary"):
            summary.update(names)
        if el.get("min", 0) >= 1:
            mandatory.update(names)
    return frozenset(summary), frozenset(mandatory)


def _mark(res: dict[str, Any]) -> dict[str, Any]:
    meta = dict(res.get("meta") or {})
    tags = [t for t in meta.get("tag", []) if t.get("code") != "SUBSETTED"]
    meta["tag"] = [*tags, SUBSETTED]
    res["meta"] = meta
    return res


def summarize(res: dict[str, Any], mode: str) -> dict[str, Any]:
    """The resource as ``_summary=true|text|data`` asks (``false`` returns it unchanged)."""
    if mode in ("false", "count"):
        return res
    rtype = res.get("resourceType", "")
    if rtype not in spec().resource_types:
        return res
    summary, mandatory = _top_level(rtype)
    if mode == "true":
        out = {k: v for k, v in res.items() if k in ALWAYS or k in summary or k.lstrip("_") in summary}
    elif mode == "text":
        out = {k: v for k, v in res.items() if k in ALWAYS or k == "text" or k in mandatory}
    elif mode == "data":
        out = {k: v for k, v in res.items() if k != "text"}
    else:
        return res
    return _mark(out)


def select_elements(res: dict[str, Any], elements: list[str]) -> dict[str, Any]:
    """Only the listed top-level elements, plus resourceType, id, meta and mandatory elements."""
    rtype = res.get("resourceType", "")
    wanted = set()
    for e in elements:
        name = e.split(".", 1)[-1] if "." in e and e.split(".", 1)[0] == rtype else e
        wanted.add(name.split(".", 1)[0])
    _, mandatory = _top_level(rtype) if rtype in spec().resource_types else (frozenset(), frozenset())
    out = {}
    for k, v in res.items():
        base = k.lstrip("_")
        choice_stem = next((w for w in wanted if base.startswith(w) and base[len(w) : len(w) + 1].isupper()), None)
        if k in ALWAYS or base in wanted or base in mandatory or choice_stem:
            out[k] = v
    return _mark(out)
