"""The ASGI application: FHIR REST API under ``/fhir`` plus a landing page and health check."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nara.config import Settings
from nara.fhir.outcome import FhirError, operation_outcome
from nara.security.actors import Actor
from nara.security.gate import Gate, attach_policy, current_policy, interaction_kind, redact, redact_versions
from nara.server import auth
from nara.server.batch import process_bundle
from nara.server.dispatch import Context, FhirRequest, Outcome, dispatch
from nara.server.http import (
    FORM,
    JSON_TYPES,
    PATCH_JSON,
    FhirResponse,
    check_accept,
    media_type,
    page_headers,
    prefer,
    read_body,
    wants_pretty,
)
from nara.store.store import Store

log = logging.getLogger("nara.server")
FHIR_PREFIX = "/fhir"


def base_url(request: Request, settings: Settings) -> str:
    if settings.base_url:
        return settings.base_url.rstrip("/")
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}{FHIR_PREFIX}"


def error_response(exc: FhirError, pretty: bool = False) -> Response:
    return FhirResponse(exc.outcome(), exc.status, dict(exc.headers), pretty)


async def fhir_endpoint(request: Request) -> Response:
    app_state = request.app.state
    settings: Settings = app_state.settings
    store: Store = app_state.store
    pretty = wants_pretty(request)
    path = request.path_params.get("path", "")
    method = request.method.upper()
    try:
        check_accept(request)
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            allowed: tuple[str, ...] = JSON_TYPES
            if method == "PATCH":
                allowed = (*JSON_TYPES, PATCH_JSON)
            if method == "POST" and path.rstrip("/").endswith("_search"):
                # POST _search: parameters in an x-www-form-urlencoded body (or none at all)
                raw = await request.body()
                if len(raw) > settings.max_body_bytes:
                    raise FhirError(
                        413, "too-long", f"Request body larger than the limit of {settings.max_body_bytes} bytes"
                    )
                if raw.strip() and media_type(request.headers.get("content-type")) != FORM:
                    raise FhirError(415, "not-supported", f"POST _search takes {FORM}, not another body")
                body = parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True)
            else:
                body = await read_body(request, settings.max_body_bytes, allowed)
        headers = {k.lower(): v for k, v in request.headers.items()}
        query = [(k, v) for k, v in request.query_params.multi_items() if k not in ("_format", "_pretty")]
        req = FhirRequest(method, path, query, headers, body)
        gate: Gate = app_state.gate
        ctx = Context(
            base_url=base_url(request, settings),
            settings=settings,
            strict=prefer(request, "handling") == "strict",
            explain_allowed=settings.explain_enabled,
            prefer_return=prefer(request, "return"),
            audit=gate.audit_read,
            audit_before=gate.prepare_read_audit,
            redact=redact,
            redact_versions=redact_versions,
            flush_log=gate.drain_outbox,
        )
        if path.strip("/") == "metadata" and method in ("GET", "HEAD"):
            outcome = await run_in_threadpool(_execute_public, store, ctx, req)
        else:
            authorization = request.headers.get("authorization")
            if store.serves_on_loop and runs_on_loop(method, path) and gate.knows_token(authorization):
                outcome = await store.run_on_loop(_authenticate_and_execute, store, gate, authorization, ctx, req)
            else:
                outcome = await run_in_threadpool(_authenticate_and_execute, store, gate, authorization, ctx, req)
    except FhirError as exc:
        return error_response(exc, pretty)
    status = outcome.status
    body_out = None if method == "HEAD" or status == 304 else outcome.body
    return FhirResponse(body_out, status, outcome.headers, pretty)


# Served on the event loop where the store can (PostgreSQL): reads by id, version reads, searches and histories,
# whose work is mostly waiting for the database. Writes, batches and operations ($everything, $export, the log
# extract) keep their thread: their longer CPU work would hold the loop and every other request with it. So
# does a request whose token is not yet verified: verifying may fetch the identity provider's keys.
LOOP_INTERACTIONS = frozenset({"read", "vread", "search", "history"})


def runs_on_loop(method: str, path: str) -> bool:
    return method in ("GET", "HEAD") and interaction_kind(method, path) in LOOP_INTERACTIONS


def _execute_public(store: Store, ctx: Context, req: FhirRequest) -> Outcome:
    with store.transaction(write=False) as tx:
        return dispatch(tx, ctx, req)


def _authenticate_and_execute(
    store: Store, gate: Gate, authorization: str | None, ctx: Context, req: FhirRequest
) -> Outcome:
    """Identity, then the request, in one hand-off to the thread pool (each hand-off costs the event loop)."""
    return _execute(store, gate, gate.authenticate(authorization, req), ctx, req)


def _execute(store: Store, gate: Gate, actor: Actor, ctx: Context, req: FhirRequest) -> Outcome:
    """Run the request under the actor's policy; every transaction it opens carries that policy."""
    token = current_policy.set(gate.policy(actor))
    ctx.audit_denial = partial(gate.audit_refused_request, actor)  # also for the entries of a batch
    try:
        try:
            return _run(store, ctx, req)
        except FhirError as exc:
            if exc.status == 403:
                ctx.audit_denial(exc.refused_request or req, exc)  # a transaction's refused entry: that entry
                raise
            if not gate.rules_unreadable(exc):
                raise
        # The consent and block store could not be read: fail closed for other units' data (R-BLK-5).
        current_policy.set(gate.policy(actor, rules_available=False))
        out = _run(store, ctx, req)
        out.headers["Warning"] = '199 nara "Consents and blocks could not be read; only own-unit data is shown"'
        return out
    finally:
        current_policy.reset(token)


def _run(store: Store, ctx: Context, req: FhirRequest) -> Outcome:
    if req.method == "POST" and req.path.strip("/") == "":
        return Outcome(200, process_bundle(store, ctx, req.body))
    # Reads write only their audit record (see Store.transaction).
    read_like = interaction_kind(req.method.upper(), req.path) is not None and req.method.upper() in ("GET", "HEAD")
    with store.transaction(write=not read_like, records_audit=True) as tx:
        return dispatch(tx, ctx, req)


async def landing(request: Request) -> Response:
    from nara.server.landing import demo_users_of, landing_page

    users = await run_in_threadpool(demo_users_of, request.app.state.store)
    settings = request.app.state.settings
    page = landing_page(base_url(request, settings), users, settings.security.dev_idp)
    return HTMLResponse(page, headers=page_headers())


# The site icon browsers ask for on every page (a 404 there is an error in every visitor's console).
FAVICON = (
    b'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 32 32"><rect width="32" height="32" rx="6" fill="#1f5f8b"/>'
    b'<text x="16" y="23" font-family="sans-serif" font-size="20" font-weight="bold" fill="#fff" '
    b'text-anchor="middle">N</text></svg>'
)


async def favicon(request: Request) -> Response:
    return Response(FAVICON, media_type="image/svg+xml", headers={"Cache-Control": "max-age=86400"})


async def openapi(request: Request) -> Response:
    from nara.server.openapi import openapi_document

    root = base_url(request, request.app.state.settings).removesuffix(FHIR_PREFIX)
    return JSONResponse(openapi_document(root))


async def health(request: Request) -> Response:
    store: Store = request.app.state.store

    def ping() -> bool:
        with store.engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True

    try:
        await run_in_threadpool(ping)
    except Exception:
        return JSONResponse({"status": "unavailable", "database": "unreachable"}, status_code=503)
    return JSONResponse({"status": "ok"})


async def noop(request: Request) -> Response:
    """A no-op endpoint on the same stack, the HTTP baseline for benchmarks."""
    return Response(b"{}", media_type="application/json")


async def unhandled(request: Request, exc: Exception) -> Response:
    log.exception("Unhandled error on %s %s", request.method, request.url.path)
    outcome = operation_outcome([])
    outcome["issue"] = [
        {"severity": "fatal", "code": "exception", "diagnostics": "An internal error occurred; nothing was changed"}
    ]
    return FhirResponse(outcome, 500)


def create_app(settings: Settings | None = None, store: Store | None = None) -> Starlette:
    settings = settings or Settings()
    own_store = store is None

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal store
        if store is None:
            store = Store.from_url(settings.database_url, settings.store, pool_size=settings.pool_size)
        app.state.store = store
        app.state.settings = settings
        if getattr(app.state, "gate", None) is None:
            app.state.gate = make_gate(store, settings)
        app.state.gate.start_sealer()
        yield
        app.state.gate.stop_sealer()
        await store.close_loop()
        if own_store:
            store.dispose()

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    routes = [
        *auth.routes,
        Route("/", landing),
        Route("/favicon.ico", favicon),
        Route("/openapi.json", openapi),
        Route("/healthz", health),
        Route("/noop", noop),
        Route(FHIR_PREFIX, fhir_endpoint, methods=methods),
        Route(FHIR_PREFIX + "/{path:path}", fhir_endpoint, methods=methods),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers={Exception: unhandled})
    app.state.settings = settings
    if store is not None:
        app.state.store = store
        app.state.gate = make_gate(store, settings)
    return app


def make_gate(store: Store, settings: Settings) -> Gate:
    gate = Gate(store, settings.security)
    if attach_policy not in store.tx_hooks:
        store.tx_hooks.append(attach_policy)
    return gate
