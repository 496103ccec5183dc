"""The CapabilityStatement: generated from what the server actually implements."""

from __future__ import annotations

from functools import cache
from typing import Any

from nara import __version__
from nara.fhir.searchparams import search_params
from nara.fhir.spec import FHIR_VERSION, spec

SEARCH_PARAM_BASE = "http://hl7.org/fhir/SearchParameter"
# Parameters the server answers without an index (resource table columns) or specially.
SPECIAL = [
    {"name": "_id", "type": "token", "documentation": "Logical id of the resource"},
    {"name": "_lastUpdated", "type": "date", "documentation": "When the resource version was stored"},
    {"name": "_list", "type": "special", "documentation": "Resources listed in the given List (by List id)"},
    {"name": "_has", "type": "special", "documentation": "Reverse chaining, nestable: _has:Type:param:filter"},
]
SEARCH_DOCUMENTATION = (
    "Search: every listed parameter with the R4 prefixes eq, ne, gt, lt, ge, le, sa, eb, ap (date, number, "
    "quantity) and the modifiers :missing, :exact and :contains (string), :text and :not (token), :identifier "
    "and :[type] (reference), :below and :above (uri); OR with commas, AND by repeating a parameter; chained "
    "parameters (several hops) and _has (nested); _include and _revinclude with :iterate and *; _sort on "
    "several parameters with -; _count, _total (none, estimate, accurate), _summary, _elements; search by GET "
    "and POST _search, system-level with _type, and in the Patient compartment. Paging uses opaque keyset "
    "cursors (_cursor) that stay correct while data changes. Unknown parameters are ignored and reported in "
    "the Bundle, or rejected with Prefer: handling=strict. Not supported: _contained, _text, _content, _query, "
    "the modifiers :of-type, :in, :not-in, :above and :below on tokens and references, and composite "
    "parameters of more than two components."
)
INTERACTIONS = [
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
]


def _operations() -> dict[str, list[dict[str, str]]]:
    from nara.server import operations

    return operations.capability_operations()


@cache
def _rest_resources() -> list[dict[str, Any]]:
    ops = _operations()
    out = []
    for rtype in sorted(spec().resource_types):
        params = search_params(rtype)
        entries = list(SPECIAL)
        includes = ["*"]
        for code in sorted(params):
            if code in ("_id", "_lastUpdated"):
                continue
            p = params[code]
            entry = {"name": code, "type": p.type, "documentation": p.expression}
            if code.startswith("_"):
                entry["definition"] = f"{SEARCH_PARAM_BASE}/Resource{code.replace('_', '-', 1)}"
            entries.append(entry)
            if p.type == "reference":
                includes.append(f"{rtype}:{code}")
        res: dict[str, Any] = {
            "type": rtype,
            "interaction": [{"code": c} for c in INTERACTIONS],
            "versioning": "versioned-update",
            "readHistory": True,
            "updateCreate": True,
            "conditionalCreate": True,
            "conditionalRead": "full-support",
            "conditionalUpdate": True,
            "conditionalDelete": "multiple",
            "referencePolicy": ["literal", "logical", "resolves", "local"],
            "searchInclude": includes,
            "searchRevInclude": ["*"],
            "searchParam": entries,
        }
        if rtype in ops:
            res["operation"] = ops[rtype]
        out.append(res)
    return out


def capability_statement(base_url: str) -> dict[str, Any]:
    ops = _operations()
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-22",
        "publisher": "Nära",
        "kind": "instance",
        "software": {"name": "Nära", "version": __version__},
        "implementation": {"description": "Nära FHIR R4 server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "patchFormat": ["application/json-patch+json"],
        "rest": [
            {
                "mode": "server",
                "documentation": SEARCH_DOCUMENTATION,
                "resource": _rest_resources(),
                "interaction": [
                    {"code": "transaction"},
                    {"code": "batch"},
                    {"code": "search-system"},
                    {"code": "history-system"},
                ],
                "searchParam": SPECIAL,
                **({"operation": ops["*"]} if "*" in ops else {}),
            }
        ],
    }
