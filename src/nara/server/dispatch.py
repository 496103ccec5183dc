"""FHIR interactions on one request, independent of HTTP: REST routes and Bundle entries both use it.

:func:`dispatch` takes a :class:`FhirRequest` (method, path relative to the FHIR base, query,
headers, parsed body) and runs it inside the given transaction, returning an :class:`Outcome`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any
from urllib.parse import urlencode

import orjson

from nara.config import Settings
from nara.fhir.canonical import BASE
from nara.fhir.dates import parse_instant
from nara.fhir.outcome import FhirError, info_outcome
from nara.fhir.query import QueryParser, SearchQuery
from nara.fhir.spec import spec
from nara.server.bundles import history_bundle, page_url, resource_body, search_bundle
from nara.store.crud import Stored, Tx, WriteResult
from nara.store.history import history
from nara.store.search import RowFilter, Searcher, SearchResult


@dataclass
class FhirRequest:
    method: str
    path: str  # relative to the FHIR base, without leading slash: "Patient/1/_history/2"
    query: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body: Any = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        for k, v in self.query:
            if k == name:
                return v
        return None


@dataclass
class Context:
    base_url: str
    settings: Settings
    strict: bool = False
    explain_allowed: bool = False
    prefer_return: str | None = None  # minimal | representation | operationoutcome
    # The access policy's read filter, added inside every search SQL (matches, totals, includes, operations).
    row_filter: RowFilter | None = None
    # Called after each interaction with (tx, request, outcome): the audit record of reads.
    audit: Callable[[Tx, FhirRequest, Outcome], None] | None = None
    # Called before each interaction with (tx, request): lets a read by id write its record in its own statement.
    audit_before: Callable[[Tx, FhirRequest], None] | None = None
    # Applied to every resource version before it is returned (e.g. hiding protected addresses, R-ID-3).
    redact: Callable[[Tx, Stored], Stored] | None = None
    # Applied after ``redact`` to the versions a history or vread returns, as the current versions govern them.
    redact_versions: Callable[[Tx, list[Stored]], list[Stored]] | None = None
    # Called with (request, error) when an interaction is refused (403): the denial's audit record.
    audit_denial: Callable[[FhirRequest, FhirError], None] | None = None
    # Called before the access log is read: brings this host's read-audit outbox into the log first.
    flush_log: Callable[[], None] | None = None


@dataclass
class Outcome:
    status: int
    body: Any = None  # dict | orjson.Fragment | None
    headers: dict[str, str] = field(default_factory=dict)
    stored: Stored | None = None
    # Every resource version the interaction returned (for the audit record).
    returned: list[Stored] = field(default_factory=list)
    # Patients whose access log the interaction showed (an auditor's AuditEvent search or $log-review): named in
    # its audit record with access type log-review, so each sees it in her log extract.
    logs_shown: list[str] = field(default_factory=list)
    # The operation wrote the interaction's audit record itself (its own action, access type, reason, assertion).
    recorded: bool = False


Operation = Callable[[Tx, Context, FhirRequest, str | None, str | None], Outcome]
OPERATIONS: dict[str, Operation] = {}


def operation(name: str) -> Callable[[Operation], Operation]:
    """Register a FHIR operation ``$name`` (see nara.server.operations)."""

    def deco(fn: Operation) -> Operation:
        OPERATIONS[name] = fn
        return fn

    return deco


def version_headers(st: Stored, base: str) -> dict[str, str]:
    return {
        "ETag": st.etag,
        "Last-Modified": format_datetime(st.last_updated.replace(tzinfo=UTC), usegmt=True),
        "Location": f"{base}/{st.res_type}/{st.res_id}/_history/{st.version}",
    }


def _parser(ctx: Context) -> QueryParser:
    s = ctx.settings.store
    return QueryParser(s.max_chain_depth, s.max_or_values)


def _query_string(req: FhirRequest) -> str:
    return urlencode(req.query)


def _is_type(name: str) -> bool:
    return name in spec().resource_types


def dispatch(tx: Tx, ctx: Context, req: FhirRequest) -> Outcome:
    """Run one interaction; then the context's audit hook records what was read (writes audit themselves)."""
    if ctx.audit_before is not None:
        ctx.audit_before(tx, req)
    out = _dispatch(tx, ctx, req)
    if ctx.audit is not None:
        ctx.audit(tx, req, out)
    return out


def _dispatch(tx: Tx, ctx: Context, req: FhirRequest) -> Outcome:
    parts = [p for p in req.path.strip("/").split("/") if p]
    m = req.method.upper()
    n = len(parts)
    if n == 0:
        if m == "GET":
            return search(tx, ctx, req, None)
        raise FhirError(405, "not-supported", f"{m} is not allowed on the base URL")
    head = parts[0]
    if head == "metadata" and n == 1 and m == "GET":
        from nara.server.capability import capability_statement

        return Outcome(200, capability_statement(ctx.base_url))
    if head == "_history" and n == 1 and m == "GET":
        return history_interaction(tx, ctx, req, None, None)
    if head.startswith("$"):
        return run_operation(tx, ctx, req, head[1:], None, None)
    if head == "_search" and n == 1 and m == "POST":
        return search(tx, ctx, req, None)
    if not _is_type(head):
        raise FhirError(404, "not-supported", f"Unknown resource type or path '{head[:64]}'")
    rtype = head
    if rtype == "AuditEvent" and n <= 2:
        # The access log is kept apart from the clinical store and written only by the server.
        if m not in ("GET", "HEAD"):
            raise FhirError(405, "not-supported", "AuditEvent is read-only: the server writes the access log itself")
        from nara.server.security_operations import audit_events

        return audit_events(tx, ctx, req, parts[1] if n == 2 else None)
    if n == 1:
        if m == "GET":
            return search(tx, ctx, req, rtype)
        if m == "POST":
            return create(tx, ctx, req, rtype)
        if m == "PUT":
            return conditional_update(tx, ctx, req, rtype)
        if m == "DELETE":
            return conditional_delete(tx, ctx, req, rtype)
        if m == "PATCH":
            return conditional_patch(tx, ctx, req, rtype)
        raise FhirError(405, "not-supported", f"{m} is not allowed on /{rtype}")
    second = parts[1]
    if n == 2 and second == "_search" and m == "POST":
        return search(tx, ctx, req, rtype)
    if n == 2 and second == "_history" and m == "GET":
        return history_interaction(tx, ctx, req, rtype, None)
    if second.startswith("$"):
        return run_operation(tx, ctx, req, second[1:], rtype, None)
    rid = second
    if n == 2:
        if m in ("GET", "HEAD"):
            return read(tx, ctx, req, rtype, rid)
        if m == "PUT":
            return update(tx, ctx, req, rtype, rid)
        if m == "DELETE":
            return delete(tx, ctx, req, rtype, rid)
        if m == "PATCH":
            return patch(tx, ctx, req, rtype, rid)
        raise FhirError(405, "not-supported", f"{m} is not allowed on /{rtype}/{{id}}")
    third = parts[2]
    if third == "_history" and m == "GET":
        if n == 3:
            return history_interaction(tx, ctx, req, rtype, rid)
        if n == 4:
            _check_scope(tx, rtype, "vread")
            st = _redacted(tx, ctx, tx.vread(rtype, rid, parts[3]))
            if ctx.redact_versions is not None:
                st = ctx.redact_versions(tx, [st])[0]
            return Outcome(200, orjson.Fragment(st.json_bytes()), version_headers(st, ctx.base_url), st, [st])
    if third.startswith("$") and n == 3:
        return run_operation(tx, ctx, req, third[1:], rtype, rid)
    if n == 3 and m == "GET" and rtype == "Patient" and (_is_type(third) or third == "*"):
        return search(tx, ctx, req, None if third == "*" else third, compartment=(rtype, rid))
    if n == 4 and m == "GET" and parts[3] == "_search" and _is_type(third):
        return search(tx, ctx, req, third, compartment=(rtype, rid))
    raise FhirError(404, "not-supported", f"Unknown path '/{req.path[:120]}'")


# ---- instance interactions --------------------------------------------------------------------
def _redacted(tx: Tx, ctx: Context, st: Stored) -> Stored:
    return ctx.redact(tx, st) if ctx.redact is not None else st


def redact_result(tx: Tx, ctx: Context, result: SearchResult) -> None:
    """The context's redaction (e.g. protected addresses) on every match and include a search returns."""
    if ctx.redact is not None:
        result.matches = [ctx.redact(tx, st) for st in result.matches]
        result.included = [ctx.redact(tx, st) for st in result.included]


def _check_scope(tx: Tx, rtype: str, action: str) -> None:
    """The token's SMART scopes allow ``action`` (read or search) on ``rtype`` (403 otherwise)."""
    if tx.policy is not None:
        tx.policy.check_scope(rtype, action)


def read(tx: Tx, ctx: Context, req: FhirRequest, rtype: str, rid: str) -> Outcome:
    _check_scope(tx, rtype, "read")
    st = _redacted(tx, ctx, tx.read(rtype, rid))
    headers = version_headers(st, ctx.base_url)
    headers.pop("Location")
    inm = req.header("if-none-match")
    if inm is not None and inm.strip() in (st.etag, f'"{st.version}"', "*"):
        return Outcome(304, None, headers, st, [st])  # the data was read to answer: logged as read
    ims = req.header("if-modified-since")
    if ims:
        try:
            since = parsedate_to_datetime(ims)
            if since.tzinfo is not None and st.last_updated.replace(microsecond=0) <= since.astimezone(UTC).replace(
                tzinfo=None
            ):
                return Outcome(304, None, headers, st, [st])  # the data was read to answer: logged as read
        except (TypeError, ValueError):
            pass
    summary = req.param("_summary")
    elements = req.param("_elements")
    body = resource_body(st, summary, elements.split(",") if elements else None)
    return Outcome(200, body, headers, st, [st])


def write_outcome(tx: Tx, ctx: Context, res: WriteResult, default_status: int | None = None) -> Outcome:
    st = res.stored
    status = default_status or res.status
    if st is not None:
        st = _redacted(tx, ctx, st)
    if st is None:
        return Outcome(status if status != 204 else 204, None if status == 204 else info_outcome("No change"))
    headers = version_headers(st, ctx.base_url)
    pref = ctx.prefer_return or "representation"
    if st.deleted:
        headers.pop("Location", None)
        return Outcome(
            200 if pref == "operationoutcome" else 204,
            info_outcome(f"Deleted {st.res_type}/{st.res_id}") if pref == "operationoutcome" else None,
            {"ETag": st.etag},
            st,
        )
    body: Any
    if pref == "minimal":
        body = None
    elif pref == "operationoutcome":
        verb = "Created" if res.created else "Found existing" if res.unchanged else "Updated"
        body = info_outcome(f"{verb} {st.res_type}/{st.res_id} version {st.version}")
    else:
        body = orjson.Fragment(st.json_bytes()) if st.content is not None else None
    # A conditional create that found its match wrote nothing and returns what is stored: a read, logged as one.
    return Outcome(status, body, headers, st, [st] if res.unchanged else [])


def _body(req: FhirRequest) -> Any:
    if req.body is None:
        raise FhirError(400, "invalid", "The request has no body; a FHIR resource is required")
    return req.body


def create(tx: Tx, ctx: Context, req: FhirRequest, rtype: str) -> Outcome:
    body = _body(req)
    res = tx.create(body, rtype, if_none_exist=req.header("if-none-exist"))
    return write_outcome(tx, ctx, res)


def update(tx: Tx, ctx: Context, req: FhirRequest, rtype: str, rid: str) -> Outcome:
    res = tx.update(rtype, rid, _body(req), if_match=req.header("if-match"))
    return write_outcome(tx, ctx, res)


def conditional_update(tx: Tx, ctx: Context, req: FhirRequest, rtype: str) -> Outcome:
    qs = _query_string(req)
    if not qs:
        raise FhirError(400, "invalid", f"PUT /{rtype} needs an id in the URL or search criteria (conditional update)")
    res = tx.conditional_update(rtype, qs, _body(req), if_match=req.header("if-match"))
    return write_outcome(tx, ctx, res)


def _patch_ops(req: FhirRequest) -> Any:
    body = _body(req)
    if isinstance(body, dict) and body.get("resourceType") == "Binary":
        data = body.get("data")
        if body.get("contentType") != "application/json-patch+json" or not isinstance(data, str):
            raise FhirError(400, "invalid", "A PATCH Binary must carry application/json-patch+json data")
        try:
            return orjson.loads(base64.b64decode(data))
        except (ValueError, orjson.JSONDecodeError):
            raise FhirError(400, "invalid", "The PATCH Binary data is not base64-encoded JSON") from None
    if isinstance(body, dict) and body.get("resourceType") == "Parameters":
        raise FhirError(415, "not-supported", "FHIRPath Patch is not supported; use JSON Patch")
    return body


def patch(tx: Tx, ctx: Context, req: FhirRequest, rtype: str, rid: str) -> Outcome:
    res = tx.patch(rtype, rid, _patch_ops(req), if_match=req.header("if-match"))
    return write_outcome(tx, ctx, res)


def conditional_patch(tx: Tx, ctx: Context, req: FhirRequest, rtype: str) -> Outcome:
    qs = _query_string(req)
    if not qs:
        raise FhirError(400, "invalid", f"PATCH /{rtype} needs an id or search criteria")
    matches = tx.match(rtype, qs, limit=2)
    if len(matches) != 1:
        raise FhirError(
            412 if matches else 404,
            "multiple-matches" if matches else "not-found",
            f"Conditional patch '{qs}' matched {len(matches) if matches else 'no'} resources",
        )
    return patch(tx, ctx, req, rtype, matches[0].res_id)


def delete(tx: Tx, ctx: Context, req: FhirRequest, rtype: str, rid: str) -> Outcome:
    res = tx.delete(rtype, rid)
    return write_outcome(tx, ctx, res)


def conditional_delete(tx: Tx, ctx: Context, req: FhirRequest, rtype: str) -> Outcome:
    qs = [(k, v) for k, v in req.query if k != "_cascade"]
    if not qs:
        raise FhirError(400, "invalid", f"DELETE /{rtype} needs an id or search criteria (conditional delete)")
    res = tx.conditional_delete(rtype, urlencode(qs), multiple=ctx.settings.store.max_conditional_delete > 1)
    return write_outcome(tx, ctx, res)


# ---- search and history ------------------------------------------------------------------------
def parse_search(ctx: Context, rtype: str | None, params: list[tuple[str, str]]) -> SearchQuery:
    q = _parser(ctx).parse(rtype, params, strict=ctx.strict)
    if q.explain and not ctx.explain_allowed:
        raise FhirError(403, "forbidden", "_explain is available only to operators (NARA_EXPLAIN)")
    return q


def searcher(tx: Tx, ctx: Context) -> Searcher:
    """The search engine for one request, carrying the request's row filter (search and operations use it)."""
    return Searcher(tx, ctx.base_url, ctx.row_filter)


def search(
    tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, compartment: tuple[str, str] | None = None
) -> Outcome:
    params = list(req.query)
    if req.method.upper() == "POST" and isinstance(req.body, list):
        params.extend(req.body)  # form-encoded body of POST _search
    if rtype is None and compartment is None:
        types = [v for k, v in params if k == "_type"]
        if not types and any(not k.startswith("_") for k, _ in params):
            raise FhirError(400, "invalid", "System-level search with criteria needs _type")
    for searched in [rtype] if rtype else [t for k, v in params if k == "_type" for t in v.split(",") if t]:
        _check_scope(tx, searched, "search")
    q = parse_search(ctx, rtype, params)
    result = searcher(tx, ctx).search(q, compartment)
    redact_result(tx, ctx, result)
    if compartment is not None:
        path = f"{ctx.base_url}/{compartment[0]}/{compartment[1]}/{rtype or '*'}"
    else:
        path = f"{ctx.base_url}/{rtype}" if rtype else ctx.base_url
    echo = [(k, v) for k, v in params if k not in ("_cursor", "_explain")]
    links: dict[str, str] = {}
    if result.next_cursor:
        links["next"] = page_url(path, echo, _cursor=result.next_cursor)
    if result.prev_cursor:
        links["previous"] = page_url(path, echo, _cursor=result.prev_cursor)
    self_params = echo + ([("_cursor", q.cursor)] if q.cursor else [])
    bundle = search_bundle(
        ctx.base_url,
        page_url(path, self_params),
        result.matches,
        result.included,
        result.total,
        links,
        result.issues,
        q.summary,
        q.elements or None,
    )
    if result.explain is not None:
        bundle.setdefault("meta", {})["extension"] = [
            {
                "url": f"{BASE}/StructureDefinition/search-explain",
                "valueString": orjson.dumps(result.explain).decode(),
            }
        ]
    return Outcome(200, bundle, returned=result.matches + result.included)


def history_interaction(tx: Tx, ctx: Context, req: FhirRequest, rtype: str | None, rid: str | None) -> Outcome:
    if rtype is not None:
        _check_scope(tx, rtype, "history" if rid else "search")  # a type's history lists its resources, as a search
    since = at = None
    raw_since, raw_at = req.param("_since"), req.param("_at")
    if raw_since:
        since = parse_instant(raw_since)
        if since is None:
            raise FhirError(400, "invalid", f"_since must be a FHIR instant, not {raw_since[:40]!r}")
    if raw_at:
        at = parse_instant(raw_at)
        if at is None:
            raise FhirError(400, "invalid", f"_at must be a FHIR date/dateTime, not {raw_at[:40]!r}")
    raw_count = req.param("_count")
    count = ctx.settings.store.default_count
    if raw_count is not None:
        if not raw_count.isdigit():
            raise FhirError(400, "invalid", f"_count must be a non-negative integer, not {raw_count!r}")
        count = min(int(raw_count), ctx.settings.store.max_count)
    page = history(tx, rtype, rid, since=since, at=at, count=count, cursor=req.param("_cursor"))
    if ctx.redact is not None:
        page.entries = [ctx.redact(tx, st) for st in page.entries]
    if ctx.redact_versions is not None:
        page.entries = ctx.redact_versions(tx, page.entries)
    path = ctx.base_url + "".join(f"/{p}" for p in (rtype, rid) if p) + "/_history"
    echo = [(k, v) for k, v in req.query if k != "_cursor"]
    links = {"next": page_url(path, echo, _cursor=page.next_cursor)} if page.next_cursor else {}
    bundle = history_bundle(ctx.base_url, page_url(path, list(req.query)), page.entries, page.total, links)
    return Outcome(200, bundle, returned=page.entries)


def run_operation(tx: Tx, ctx: Context, req: FhirRequest, name: str, rtype: str | None, rid: str | None) -> Outcome:
    from nara.server import operations, security_operations  # noqa: F401  (register the operations)

    fn = OPERATIONS.get(name)
    if fn is None:
        raise FhirError(404, "not-supported", f"Unknown operation ${name[:64]}")
    return fn(tx, ctx, req, rtype, rid)
