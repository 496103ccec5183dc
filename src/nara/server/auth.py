"""HTTP side of identity: SMART discovery and the development identity provider's endpoints.

``/fhir/.well-known/smart-configuration`` is public. The ``/auth/*`` endpoints exist only when the
development identity provider is configured (``NARA_DEV_IDP=true``, on in ``nara demo``).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
from html import escape
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from nara.security.devidp import DEV_ISSUER, DevIdentityProvider, login_page, mint, public_jwks, redirect_with
from nara.security.gate import Gate
from nara.server.http import NO_STORE, page_headers

DEMO_CLIENT = "nara-demo"
SCOPES_SUPPORTED = [
    "openid",
    "fhirUser",
    "launch/patient",
    "offline_access",
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
]


def _error_page(title: str, message: str, *, again: bool = False, status: int = 400) -> HTMLResponse:
    """A small, complete HTML page for a failed login step: what went wrong, never a stack trace."""
    link = '<p><a href="/auth/login">Log in again</a></p>' if again else ""
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>{escape(title)} – Nära</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}</style></head><body>
<h1>{escape(title)}</h1><p>{escape(message)}</p>{link}</body></html>"""
    return HTMLResponse(html, status_code=status, headers=page_headers(no_store=True))


def _root(request: Request) -> str:
    host = request.headers.get("host") or f"{request.url.hostname}:{request.url.port}"
    return f"{request.url.scheme}://{host}"


def _gate(request: Request) -> Gate:
    gate: Gate = request.app.state.gate
    return gate


def _idp(request: Request) -> DevIdentityProvider:
    idp = _gate(request).devidp
    if idp is None:
        raise _NotEnabled
    return idp


class _NotEnabled(Exception):
    pass


async def smart_configuration(request: Request) -> Response:
    root = _root(request)
    gate = _gate(request)
    conf: dict[str, Any] = {
        "capabilities": [
            "launch-standalone",
            "client-public",
            "client-confidential-symmetric",
            "sso-openid-connect",
            "context-standalone-patient",
            "permission-v2",
            "permission-v1",
            "permission-patient",
            "permission-user",
        ],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "grant_types_supported": ["authorization_code", "client_credentials"],
    }
    if gate.devidp is not None:
        conf.update(
            issuer=DEV_ISSUER,
            jwks_uri=f"{root}/auth/jwks",
            authorization_endpoint=f"{root}/auth/authorize",
            token_endpoint=f"{root}/auth/token",
            token_endpoint_auth_methods_supported=["client_secret_post", "client_secret_basic", "none"],
        )
    elif gate.settings.issuers:
        iss, discovery = gate.settings.issuers[0]
        conf.update(issuer=iss, openid_configuration=discovery)
    return JSONResponse(conf, headers={"Cache-Control": "max-age=300"})


async def jwks(request: Request) -> Response:
    try:
        idp = _idp(request)
    except _NotEnabled:
        return JSONResponse({"error": "not_found"}, status_code=404)
    return JSONResponse(public_jwks(idp.key))


def _allowed_redirect(request: Request, uri: str) -> bool:
    """Development IdP: only loopback or same-host redirect URIs (no open redirects)."""
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https") or not parts.hostname or _origin(uri) is None:
        return False
    return parts.hostname in ("127.0.0.1", "localhost", "::1") or parts.netloc == request.headers.get("host")


def _origin(uri: str) -> str | None:
    """``scheme://host[:port]`` of a URL, rebuilt from its parsed parts (so nothing else of it can reach a header);
    None when the port is not a number."""
    parts = urlsplit(uri)
    try:
        port = parts.port
    except ValueError:
        return None
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def _demo_users(request: Request) -> list[dict[str, Any]]:
    store = request.app.state.store
    try:
        from nara.demo.users import demo_users
    except ImportError:
        return []
    users = demo_users(store)
    return [u if isinstance(u, dict) else dict(vars(u)) for u in users]


async def authorize(request: Request) -> Response:
    try:
        idp = _idp(request)
    except _NotEnabled:
        return JSONResponse({"error": "not_found"}, status_code=404)
    if request.method == "GET":
        params = dict(request.query_params)
        problem = _check_authorize_params(request, params)
        if problem:
            return _error_page("Bad request", problem)
        users = await run_in_threadpool(_demo_users, request)
        keep: dict[str, str] = {
            k: params[k]
            for k in (
                "response_type",
                "client_id",
                "redirect_uri",
                "scope",
                "state",
                "code_challenge",
                "code_challenge_method",
                "aud",
            )
            if k in params
        }
        # The form posts here and is then redirected to the client's redirect_uri (checked above).
        headers = page_headers((_origin(keep["redirect_uri"]) or "",), no_store=True)
        return HTMLResponse(login_page(users, keep, idp.new_csrf()), headers=headers)
    params = await _form(request)
    if not idp.take_csrf(params.get("csrf", "")):
        return _error_page("Expired form", "Reload the login page and try again.")
    problem = _check_authorize_params(request, params)
    if problem:
        return _error_page("Bad request", problem)
    try:
        user = orjson.loads(params.get("user", ""))
    except orjson.JSONDecodeError:
        user = None
    if not isinstance(user, dict) or not user.get("sub") or not user.get("kind"):  # checked even under python -O
        return _error_page("Bad request", "Choose a user.")
    claims = {
        "sub": str(user["sub"]),
        "kind": str(user["kind"]),
        "assignment": user.get("assignment"),
        "patient": user.get("patient"),
        "name": user.get("name"),
        "scope": params.get("scope"),
    }
    code = idp.issue_code(claims, params["client_id"], params["redirect_uri"], params["code_challenge"])
    target = redirect_with(params["redirect_uri"], {"code": code, "state": params.get("state", "")})
    return RedirectResponse(target, status_code=303)


def _check_authorize_params(request: Request, params: dict[str, str]) -> str | None:
    if params.get("response_type") != "code":
        return "response_type must be code"
    if not params.get("client_id"):
        return "client_id is required"
    if not _allowed_redirect(request, params.get("redirect_uri", "")):
        return "redirect_uri must be a loopback or same-host http(s) URL"
    if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
        return "PKCE is required: code_challenge with code_challenge_method=S256"
    return None


async def _form(request: Request, limit: int = 64 * 1024) -> dict[str, str]:
    """An application/x-www-form-urlencoded body (small: login and token requests)."""
    raw = await request.body()
    if len(raw) > limit:
        return {}
    return dict(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))


def _token_error(error: str, description: str, status: int = 400) -> Response:
    return JSONResponse({"error": error, "error_description": description}, status_code=status, headers=NO_STORE)


async def token(request: Request) -> Response:
    try:
        idp = _idp(request)
    except _NotEnabled:
        return JSONResponse({"error": "not_found"}, status_code=404)
    form = await _form(request)
    grant = form.get("grant_type")
    client_id, secret = form.get("client_id", ""), form.get("client_secret", "")
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("basic "):
        try:
            client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            return _token_error("invalid_client", "Malformed Basic credentials", 401)
    if grant == "authorization_code":
        claims = idp.redeem(
            form.get("code", ""), client_id, form.get("redirect_uri", ""), form.get("code_verifier", "")
        )
        if claims is None:
            return _token_error("invalid_grant", "The code is unknown, used, expired, or the PKCE verifier is wrong")
        kind = claims["kind"]
        access = mint(
            idp.key,
            claims["sub"],
            kind,
            audience=idp.audience,
            assignment=claims.get("assignment"),
            patient=claims.get("patient"),
            name=claims.get("name"),
            scope=claims.get("scope") or None,
        )
        body: dict[str, Any] = {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": 3600,
            "scope": claims.get("scope") or "",
        }
        if kind in ("citizen", "proxy") and claims.get("patient_id"):
            body["patient"] = claims["patient_id"]  # SMART launch context
        return JSONResponse(body, headers=NO_STORE)
    if grant == "client_credentials":
        expected = idp.clients.get(client_id)
        if not expected or not secrets.compare_digest(expected.encode(), secret.encode()):
            return _token_error("invalid_client", "Unknown client or wrong secret", 401)
        scope = form.get("scope") or "system/*.cruds"
        access = mint(idp.key, client_id, "system", audience=idp.audience, scope=scope)
        return JSONResponse(
            {"access_token": access, "token_type": "Bearer", "expires_in": 3600, "scope": scope}, headers=NO_STORE
        )
    return _token_error("unsupported_grant_type", "Use authorization_code (with PKCE) or client_credentials")


async def demo_login(request: Request) -> Response:
    """Start the login flow for the demo client and show the resulting token (for people trying the API)."""
    try:
        _idp(request)
    except _NotEnabled:
        return JSONResponse({"error": "not_found"}, status_code=404)
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    state = secrets.token_urlsafe(16)
    root = _root(request)
    target = redirect_with(
        f"{root}/auth/authorize",
        {
            "response_type": "code",
            "client_id": DEMO_CLIENT,
            "redirect_uri": f"{root}/auth/demo-callback",
            "scope": "openid fhirUser",
            "state": state,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        },
    )
    response = RedirectResponse(target, status_code=303)
    cookie = {"httponly": True, "samesite": "lax", "max_age": 600, "path": "/auth"}
    response.set_cookie("nara_pkce", verifier, **cookie)  # type: ignore[arg-type]
    response.set_cookie("nara_state", state, **cookie)  # type: ignore[arg-type]
    return response


async def demo_callback(request: Request) -> Response:
    try:
        idp = _idp(request)
    except _NotEnabled:
        return JSONResponse({"error": "not_found"}, status_code=404)
    state = request.query_params.get("state", "")
    if not state or state != request.cookies.get("nara_state"):
        return _error_page("Login failed", "The login state did not match; start again.", again=True)
    root = _root(request)
    claims = idp.redeem(
        request.query_params.get("code", ""),
        DEMO_CLIENT,
        f"{root}/auth/demo-callback",
        request.cookies.get("nara_pkce", ""),
    )
    if claims is None:
        return _error_page("Login failed", "The code was not accepted; start again.", again=True)
    access = mint(
        idp.key,
        claims["sub"],
        claims["kind"],
        audience=idp.audience,
        assignment=claims.get("assignment"),
        patient=claims.get("patient"),
        name=claims.get("name"),
    )
    who = escape(str(claims.get("name") or claims["sub"]))
    html = f"""<!doctype html><html lang="sv"><head><meta charset="utf-8"><title>Inloggad – Nära</title>
<style>body{{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem}}
textarea{{width:100%;height:8rem;font-family:monospace}}</style></head><body>
<h1>Logged in as {who}</h1>
<p>Your access token (valid one hour). Use it as a bearer token against the FHIR API:</p>
<textarea readonly id="token">{escape(access)}</textarea>
<pre>curl -H "Authorization: Bearer $TOKEN" {escape(root)}/fhir/Patient?_count=5</pre>
<p><a href="/">Back to the start page</a></p></body></html>"""
    response = HTMLResponse(html, headers=page_headers(no_store=True))
    response.delete_cookie("nara_pkce", path="/auth")
    response.delete_cookie("nara_state", path="/auth")
    return response


routes = [
    Route("/fhir/.well-known/smart-configuration", smart_configuration),
    Route("/.well-known/smart-configuration", smart_configuration),
    Route("/auth/jwks", jwks),
    Route("/auth/authorize", authorize, methods=["GET", "POST"]),
    Route("/auth/token", token, methods=["POST"]),
    Route("/auth/login", demo_login),
    Route("/auth/demo-callback", demo_callback),
]
