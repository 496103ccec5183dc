"""``batch`` and ``transaction`` Bundles (R4 http.html#transaction).

A transaction runs in one database transaction: every entry succeeds or nothing is stored. Entries
run in the spec's order (DELETE, POST, PUT/PATCH, GET/HEAD); ``urn:uuid:`` full URLs and conditional
references (``Patient?identifier=...``) are resolved to real ids before anything is written, and the
response lists the entries in the request's order. A batch runs each entry in its own transaction
and reports each entry's own outcome.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from nara.fhir.dates import instant
from nara.fhir.ids import new_id
from nara.fhir.outcome import FhirError
from nara.fhir.spec import spec
from nara.server.bundles import status_line
from nara.server.dispatch import Context, FhirRequest, Outcome, dispatch, write_outcome
from nara.store.crud import Stored, Tx
from nara.store.store import Store

ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


def _entry_request(entry: Any, i: int, base: str) -> FhirRequest:
    where = f"Bundle.entry[{i}]"
    if not isinstance(entry, dict):
        raise FhirError(400, "invalid", f"{where} is not an object", [where])
    request = entry.get("request")
    if not isinstance(request, dict):
        raise FhirError(400, "invalid", f"{where} has no request", [f"{where}.request"])
    method = request.get("method")
    url = request.get("url")
    if method not in ORDER or not isinstance(url, str) or not url:
        raise FhirError(
            400,
            "invalid",
            f"{where}.request needs a method (GET, HEAD, POST, PUT, PATCH, DELETE) and a url",
            [f"{where}.request"],
        )
    if url.startswith(base + "/"):
        url = url[len(base) + 1 :]
    elif "://" in url.split("?", 1)[0]:
        raise FhirError(
            400, "invalid", f"{where}.request.url points at another server: {url[:120]}", [f"{where}.request.url"]
        )
    parts = urlsplit(url)
    headers = {}
    for key, header in (
        ("ifMatch", "if-match"),
        ("ifNoneExist", "if-none-exist"),
        ("ifNoneMatch", "if-none-match"),
        ("ifModifiedSince", "if-modified-since"),
    ):
        if isinstance(request.get(key), str):
            headers[header] = request[key]
    body = entry.get("resource")
    if method in ("POST", "PUT", "PATCH") and body is None:
        raise FhirError(400, "invalid", f"{where} ({method}) has no resource", [f"{where}.resource"])
    return FhirRequest(method, parts.path.strip("/"), parse_qsl(parts.query, keep_blank_values=True), headers, body)


class _ReferenceError(Exception):
    """A reference that cannot be resolved, carrying the JSON path to it as the walk unwinds."""

    def __init__(self, error: FhirError) -> None:
        self.error = error
        self.path: list[str] = []


def _walk_references(node: Any, fn: Callable[[str], str | None], where: str = "") -> None:
    """Apply ``fn`` to every ``reference`` string in ``node`` (in place); errors point at the reference."""
    try:
        _walk(node, fn)
    except _ReferenceError as e:
        e.error.issues[0].expression = [where + "".join(reversed(e.path))]
        raise e.error from None


def _walk(node: Any, fn: Callable[[str], str | None]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            try:
                if k == "reference" and isinstance(v, str):
                    new = fn(v)
                    if new is not None:
                        node[k] = new
                elif isinstance(v, dict | list):
                    _walk(v, fn)
            except FhirError as e:
                err = _ReferenceError(e)
                err.path.append(f".{k}")
                raise err from None
            except _ReferenceError as e:
                e.path.append(f".{k}")
                raise
    elif isinstance(node, list):
        for i, item in enumerate(node):
            if isinstance(item, dict | list):
                try:
                    _walk(item, fn)
                except _ReferenceError as e:
                    e.path.append(f"[{i}]")
                    raise


def _response_entry(out: Outcome, prefer: str | None, method: str) -> dict[str, Any]:
    """The response entry of one request: status, location/etag/lastModified, and a body when due.

    A read (GET/HEAD) carries the resource or Bundle it found; a write carries the resource only with
    ``Prefer: return=representation`` and an OperationOutcome with ``return=OperationOutcome``.
    """
    resp: dict[str, Any] = {"status": status_line(out.status)}
    st = out.stored
    is_read = method in ("GET", "HEAD")
    if st is not None:
        if not is_read and out.status in (200, 201) and not st.deleted:
            resp["location"] = f"{st.res_type}/{st.res_id}/_history/{st.version}"
        resp["etag"] = st.etag
        resp["lastModified"] = instant(st.last_updated)
    entry: dict[str, Any] = {}
    if out.body is not None and method != "HEAD":
        if is_read or prefer == "representation":
            entry["resource"] = out.body
        elif prefer == "operationoutcome" and isinstance(out.body, dict):
            resp["outcome"] = out.body
    if st is not None and "resource" in entry:
        entry["fullUrl"] = f"{st.res_type}/{st.res_id}"
    entry["response"] = resp
    return entry


class TransactionProcessor:
    """Runs one transaction Bundle inside the caller's database transaction (``tx``).

    Order of work: DELETE entries; then the identity of every POST and PUT (server ids assigned,
    ``ifNoneExist`` and conditional-update criteria matched against the store as it is after the
    deletes); a check that no resource is acted on twice; the rewrite of ``urn:uuid:`` and
    conditional references; then POST, PUT/PATCH and GET/HEAD entries.
    """

    def __init__(self, tx: Tx, ctx: Context) -> None:
        self.tx = tx
        self.ctx = ctx
        self.ids: dict[str, str] = {}  # fullUrl (or resolved conditional reference) -> "Type/id"
        self.identities: dict[int, str] = {}  # entry -> "Type/id" it changes
        self.new_ids: dict[int, str] = {}  # entry -> id of the resource it creates

    def run(self, bundle: dict[str, Any]) -> dict[str, Any]:
        entries = bundle.get("entry") or []
        requests = [_entry_request(e, i, self.ctx.base_url) for i, e in enumerate(entries)]
        full_urls = [e.get("fullUrl") if isinstance(e.get("fullUrl"), str) else None for e in entries]
        seen: set[str] = set()
        for i, fu in enumerate(full_urls):
            if fu is not None:
                if fu in seen:
                    raise FhirError(
                        400,
                        "invalid",
                        f"Duplicate fullUrl {fu[:100]} in the transaction",
                        [f"Bundle.entry[{i}].fullUrl"],
                    )
                seen.add(fu)
        order = sorted(range(len(requests)), key=lambda j: ORDER[requests[j].method])
        results: dict[int, Outcome] = {}
        # 1. DELETE first: conditional creates and updates below see the store without those resources.
        for i in order:
            req = requests[i]
            if req.method == "DELETE":
                results[i] = self._execute(i, req)
                st = results[i].stored
                if "/" in req.path:
                    self.identities[i] = "/".join(req.path.split("/")[:2])
                elif st is not None:
                    self.identities[i] = f"{st.res_type}/{st.res_id}"
        # 2. The identity of every created or updated resource, before anything else is written.
        for i in order:
            req = requests[i]
            if req.method in ("POST", "PUT", "PATCH"):
                try:
                    identity = self._identity(i, req, results)
                except FhirError as e:
                    raise _in_entry(e, i, req) from None
                fu = full_urls[i]
                if identity is not None and fu is not None and req.method != "PATCH":
                    self.ids[fu] = identity
        self._check_overlaps()
        # 3. Rewrite references to bundle-internal ids and conditional references.
        for i, req in enumerate(requests):
            if req.body is not None:
                _walk_references(req.body, self._resolve_reference, f"Bundle.entry[{i}].resource")
            req.query = [(k, self._rewrite_value(v)) for k, v in req.query]
        # 4. POST (the plain creates in one multi-row INSERT), then PUT/PATCH, then GET/HEAD.
        self._create_plain_posts([i for i in order if i not in results], requests, results)
        for i in order:
            if i not in results:
                results[i] = self._execute(i, requests[i])
        prefer = self.ctx.prefer_return
        return {
            "resourceType": "Bundle",
            "type": "transaction-response",
            "entry": [_response_entry(results[i], prefer, requests[i].method) for i in range(len(requests))],
        }

    def _identity(self, i: int, req: FhirRequest, results: dict[int, Outcome]) -> str | None:
        """``Type/id`` that entry ``i`` (POST, PUT or PATCH) will write, or None when unknown."""
        where = f"Bundle.entry[{i}].request"
        parts = req.path.split("/")
        if len(parts) >= 2:
            if req.method in ("PUT", "PATCH") and _is_type(parts[0]):
                self.identities[i] = f"{parts[0]}/{parts[1]}"
                return self.identities[i]
            return None
        rtype = parts[0]
        if not _is_type(rtype) or req.method == "PATCH":
            return None  # unknown types are reported when the entry runs; conditional patch matches then
        if req.method == "POST":
            cond = req.header("if-none-exist")
            if cond:
                cond = self._rewrite_query(cond)
                req.headers["if-none-exist"] = cond
                found = self._match_one(rtype, cond, "ifNoneExist", f"{where}.ifNoneExist")
                if found is not None:
                    # Nothing is written for this entry; its answer names what is stored: a read, logged as one.
                    results[i] = Outcome(200, None, {}, found, [found])
                    if self.ctx.audit is not None:
                        self.ctx.audit(self.tx, req, results[i])
                    return f"{rtype}/{found.res_id}"
            self.new_ids[i] = new_id()
        else:  # conditional update: the match decides the identity
            req.query = [(k, self._rewrite_value(v)) for k, v in req.query]
            found = self._match_one(rtype, urlencode(req.query), "Conditional update", f"{where}.url")
            if found is not None:
                self.identities[i] = f"{rtype}/{found.res_id}"
                return self.identities[i]
            body_id = req.body.get("id") if isinstance(req.body, dict) else None
            self.new_ids[i] = body_id if isinstance(body_id, str) else new_id()
        self.identities[i] = f"{rtype}/{self.new_ids[i]}"
        return self.identities[i]

    def _match_one(self, rtype: str, query: str, what: str, where: str) -> Stored | None:
        matches = self.tx.match(rtype, query, limit=2)
        if len(matches) > 1:
            raise FhirError(412, "multiple-matches", f"{what} '{query[:100]}' matches more than one resource", [where])
        return matches[0] if matches else None

    def _check_overlaps(self) -> None:
        """A transaction may change each resource only once (R4 http.html#trules)."""
        owner: dict[str, int] = {}
        for i, identity in sorted(self.identities.items()):
            if identity in owner:
                raise FhirError(
                    400,
                    "invalid",
                    f"Bundle.entry[{owner[identity]}] and Bundle.entry[{i}] both change {identity}; "
                    "a transaction may change each resource only once",
                    [f"Bundle.entry[{i}].request"],
                )
            owner[identity] = i

    def _create_plain_posts(self, pending: list[int], requests: list[FhirRequest], results: dict[int, Outcome]) -> None:
        plain = [
            i for i in pending if requests[i].method == "POST" and i in self.new_ids and "/" not in requests[i].path
        ]
        if len(plain) < 2:
            return
        items = [(requests[i].body, requests[i].path, self.new_ids[i]) for i in plain]
        try:
            created = self.tx.create_many(items)
        except FhirError as e:
            n = getattr(e, "item", None)
            if n is None:
                raise
            raise self._refused(e, plain[n], requests[plain[n]]) from None
        for i, res in zip(plain, created, strict=True):
            results[i] = write_outcome(self.tx, self.ctx, res)

    def _execute(self, i: int, req: FhirRequest) -> Outcome:
        try:
            rid = self.new_ids.get(i)
            if rid is not None and req.method == "POST":
                return write_outcome(self.tx, self.ctx, self.tx.create(req.body, req.path, rid=rid))
            if rid is not None:
                res = self.tx.conditional_update(
                    req.path, urlencode(req.query), req.body, if_match=req.header("if-match"), new_rid=rid
                )
                return write_outcome(self.tx, self.ctx, res)
            return dispatch(self.tx, self.ctx, req)
        except FhirError as e:
            raise self._refused(e, i, req) from None

    def _refused(self, e: FhirError, i: int, req: FhirRequest) -> FhirError:
        """The error of entry ``i`` as the transaction's answer. A refused entry's denial is logged (after the
        transaction, by the request's own handler) with the entry's request, so that it names the patient the
        entry tried to reach (R-LOG-1)."""
        if e.status == 403 and e.refused_request is None:
            e.refused_request = req
        return _in_entry(e, i, req)

    def _resolve_reference(self, ref: str) -> str | None:
        if ref in self.ids:
            return self.ids[ref]
        if ref.startswith("urn:uuid:") or ref.startswith("urn:oid:"):
            raise FhirError(400, "invalid", f"Reference {ref[:100]} does not match any fullUrl in the transaction")
        head, sep, query = ref.partition("?")
        if sep and _is_type(head):
            matches = self.tx.match(head, query, limit=2)
            if len(matches) != 1:
                raise FhirError(
                    412,
                    "not-found" if not matches else "multiple-matches",
                    f"Conditional reference {ref[:100]} matched {len(matches) or 'no'} resources; it must match one",
                )
            resolved = f"{head}/{matches[0].res_id}"
            self.ids[ref] = resolved
            return resolved
        return None

    def _rewrite_value(self, v: str) -> str:
        """A search value with every item that is a known fullUrl replaced by ``Type/id``."""
        if "," not in v:
            return self.ids.get(v, v)
        return ",".join(self.ids.get(part, part) for part in v.split(","))

    def _rewrite_query(self, query: str) -> str:
        pairs = parse_qsl(query.split("?", 1)[-1], keep_blank_values=True)
        return urlencode([(k, self._rewrite_value(v)) for k, v in pairs])


def _is_type(name: str) -> bool:
    return name in spec().resource_types


def _in_entry(e: FhirError, i: int, req: FhirRequest) -> FhirError:
    """The error of entry ``i``, its diagnostics and expressions placed inside the Bundle."""
    where = f"Bundle.entry[{i}]"
    rtype = req.path.split("/", 1)[0]
    for issue in e.issues:
        if not issue.expression:
            issue.expression = [where]
            continue
        placed = []
        for expr in issue.expression:
            if expr.startswith("Bundle."):
                placed.append(expr)
            elif req.body is None:  # a read or delete: the problem is in its URL
                placed.append(f"{where}.request.url")
            elif expr == rtype or expr.startswith(rtype + ".") or expr.startswith(rtype + "["):
                placed.append(f"{where}.resource{expr[len(rtype) :]}")
            else:
                placed.append(f"{where}.resource.{expr}")
        issue.expression = placed
    e.issues[0].diagnostics = f"{where}: {e.issues[0].diagnostics}"
    return e


def run_transaction(store: Store, ctx: Context, bundle: dict[str, Any]) -> dict[str, Any]:
    with store.transaction() as tx:
        return TransactionProcessor(tx, ctx).run(bundle)


def run_batch(store: Store, ctx: Context, bundle: dict[str, Any]) -> dict[str, Any]:
    entries = bundle.get("entry") or []
    out = []
    for i, entry in enumerate(entries):
        req: FhirRequest | None = None
        try:
            req = _entry_request(entry, i, ctx.base_url)
            if isinstance(req.body, dict):
                _walk_references(req.body, _reject_internal, str(req.body.get("resourceType", "")))
            with store.transaction(write=req.method not in ("GET", "HEAD"), records_audit=True) as tx:
                result = dispatch(tx, ctx, req)
            out.append(_response_entry(result, ctx.prefer_return, req.method))
        except FhirError as e:
            if e.status == 403 and req is not None and ctx.audit_denial is not None:
                ctx.audit_denial(req, e)  # a refused entry is a denial like a refused request (R-LOG-1)
            out.append({"response": {"status": status_line(e.status), "outcome": e.outcome()}})
    return {"resourceType": "Bundle", "type": "batch-response", "entry": out}


def _reject_internal(ref: str) -> str | None:
    if ref.startswith("urn:uuid:"):
        raise FhirError(400, "invalid", f"Batch entries cannot reference each other ({ref[:60]}); use a transaction")
    return None


def process_bundle(store: Store, ctx: Context, bundle: Any) -> dict[str, Any]:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError(400, "invalid", "POST to the base URL needs a Bundle of type batch or transaction")
    btype = bundle.get("type")
    if btype not in ("batch", "transaction"):
        raise FhirError(400, "invalid", f"Bundle.type must be batch or transaction, not {btype!r}", ["Bundle.type"])
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError(400, "structure", "Bundle.entry must be an array", ["Bundle.entry"])
    if btype == "transaction":
        return run_transaction(store, ctx, bundle)
    return run_batch(store, ctx, bundle)
