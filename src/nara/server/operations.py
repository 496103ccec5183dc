"""FHIR operations (``$name``), registered with :func:`nara.server.dispatch.operation`.

- ``Patient/[id]/$everything`` (start, end, _since, _type, _count, paged with _cursor);
- ``Observation/$lastn`` (max, plus any Observation search parameter, e.g. patient and category).

Both run through the request's search engine (:func:`nara.server.dispatch.searcher`), so the access
policy's row filter applies inside their SQL exactly as for a search.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from nara.fhir.dates import parse_range
from nara.fhir.outcome import FhirError, Issue
from nara.fhir.spec import spec
from nara.server.bundles import page_url, search_bundle
from nara.server.dispatch import (
    OPERATIONS,
    Context,
    FhirRequest,
    Outcome,
    operation,
    parse_search,
    redact_result,
    searcher,
)
from nara.store.crud import Tx

# (resource type or "*" for system level) -> operation names, for the CapabilityStatement.
DECLARED: dict[str, list[str]] = {"Patient": ["everything"], "Observation": ["lastn"]}


def capability_operations() -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for rtype, names in DECLARED.items():
        out[rtype] = [
            {"name": n, "definition": f"http://hl7.org/fhir/OperationDefinition/{rtype}-{n}"}
            for n in names
            if n in OPERATIONS
        ]
    return out


def operation_params(req: FhirRequest) -> list[tuple[str, str]]:
    """The operation's parameters: the query string, plus a POSTed ``Parameters`` resource."""
    pairs = list(req.query)
    body = req.body
    if req.method.upper() == "POST" and body is not None:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError(400, "invalid", "An operation's POST body must be a Parameters resource")
        for p in body.get("parameter", []):
            name = p.get("name") if isinstance(p, dict) else None
            value = next((v for k, v in p.items() if k.startswith("value")), None) if isinstance(p, dict) else None
            if not isinstance(name, str) or value is None or isinstance(value, dict | list):
                raise FhirError(400, "invalid", "Operation parameters must be simple values (valueString, ...)")
            pairs.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return pairs


def _one(pairs: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in pairs if k == name]
    if len(values) > 1:
        raise FhirError(400, "invalid", f"Parameter '{name}' may be given only once", [name])
    return values[0] if values else None


def _date(pairs: list[tuple[str, str]], name: str, upper: bool = False) -> datetime | None:
    raw = _one(pairs, name)
    if raw is None:
        return None
    rng = parse_range(raw)
    if rng is None:
        raise FhirError(400, "invalid", f"'{name}' must be a FHIR date or dateTime, not {raw[:40]!r}", [name])
    return rng[1] if upper else rng[0]


def _count(pairs: list[tuple[str, str]], name: str) -> int | None:
    raw = _one(pairs, name)
    if raw is None:
        return None
    if not raw.isdigit():
        raise FhirError(400, "invalid", f"'{name}' must be a non-negative integer, not {raw[:40]!r}", [name])
    return int(raw)


@operation("everything")
def everything(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    if rtype != "Patient" or rid is None:
        raise FhirError(400, "not-supported", "$everything is supported on one patient: Patient/[id]/$everything")
    if req.method.upper() not in ("GET", "POST"):
        raise FhirError(405, "not-supported", f"{req.method} is not allowed on $everything")
    pairs = operation_params(req)
    known = {"start", "end", "_since", "_type", "_count", "_cursor"}
    unknown = sorted({k for k, _ in pairs if k not in known})
    if unknown and ctx.strict:
        raise FhirError(400, "not-supported", f"Unknown $everything parameter '{unknown[0]}'", [unknown[0]])
    types: list[str] | None = None
    raw_types = _one(pairs, "_type")
    if raw_types:
        types = [t.strip() for t in raw_types.split(",") if t.strip()]
        bad = [t for t in types if t not in spec().resource_types]
        if bad:
            raise FhirError(400, "invalid", f"Unknown resource type {bad[0]!r} in _type", ["_type"])
    engine = searcher(tx, ctx)
    if not engine.search(parse_search(ctx, "Patient", [("_id", rid), ("_total", "none")])).matches:
        tx.hidden_or_missing("Patient", rid)  # 403 when the policy hides the patient (logged as a denial), else 404
    result = engine.everything(
        rid,
        start=_date(pairs, "start"),
        end=_date(pairs, "end", upper=True),
        since=_date(pairs, "_since"),
        types=types,
        count=_count(pairs, "_count"),
        cursor=_one(pairs, "_cursor"),
    )
    redact_result(tx, ctx, result)
    for name in unknown:
        result.issues.append(Issue("warning", "not-supported", f"Unknown $everything parameter '{name}' (ignored)"))
    path = f"{ctx.base_url}/Patient/{rid}/$everything"
    echo = [(k, v) for k, v in pairs if k != "_cursor"]
    links = {"next": page_url(path, echo, _cursor=result.next_cursor)} if result.next_cursor else {}
    bundle = search_bundle(
        ctx.base_url, page_url(path, list(pairs)), result.matches, result.included, None, links, result.issues
    )
    return Outcome(200, bundle, returned=result.matches + result.included)


@operation("lastn")
def lastn(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    if rtype != "Observation" or rid is not None:
        raise FhirError(400, "not-supported", "$lastn is a type-level operation: Observation/$lastn")
    pairs = operation_params(req)
    max_n = _count(pairs, "max")
    if max_n == 0:
        raise FhirError(400, "invalid", "'max' must be at least 1", ["max"])
    q = parse_search(ctx, "Observation", [(k, v) for k, v in pairs if k != "max"])
    result = searcher(tx, ctx).lastn(q, max_n or 1)
    redact_result(tx, ctx, result)
    path = f"{ctx.base_url}/Observation/$lastn"
    bundle: dict[str, Any] = search_bundle(
        ctx.base_url,
        page_url(path, list(pairs)),
        result.matches,
        result.included,
        len(result.matches),
        {},
        result.issues,
        q.summary,
        q.elements or None,
    )
    return Outcome(200, bundle, returned=result.matches + result.included)
