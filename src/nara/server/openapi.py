"""OpenAPI 3.1 description of Nära's endpoints outside the FHIR API (``GET /openapi.json``).

The FHIR API under ``/fhir`` describes itself with its CapabilityStatement (``/fhir/metadata``), which is the
format FHIR clients read; this document covers the rest: health, the development identity provider (OAuth 2.0
authorization code with PKCE, client credentials, JWKS), SMART discovery and the pages. Written out by hand
because these few routes are plain Starlette routes with no request models to derive a schema from.
"""

from __future__ import annotations

from typing import Any

from nara import __version__

_JSON = "application/json"
_HTML = "text/html"


def _content(media: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {media: {"schema": schema or {"type": "string" if media != _JSON else "object"}}}


def _response(description: str, media: str | None = None, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"description": description}
    if media:
        out["content"] = _content(media, schema)
    return out


def _form_body(properties: dict[str, Any], required: list[str], more: bool = False) -> dict[str, Any]:
    """An ``application/x-www-form-urlencoded`` request body; ``more``: other string fields pass through."""
    schema: dict[str, Any] = {"type": "object", "required": required, "properties": properties}
    if more:
        schema["additionalProperties"] = {"type": "string"}
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


_OAUTH_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
}
_TOKEN = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in"],
    "properties": {
        "access_token": {"type": "string", "description": "a signed JWT (RS256)"},
        "token_type": {"const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
        "patient": {"type": "string", "description": "SMART launch context for citizens and proxies"},
    },
}
_DEV_ONLY = " Only when the development identity provider is on (`nara demo`, or `NARA_DEV_IDP=true`); else 404."
_AUTHORIZE_PARAMS = [
    {"name": name, "in": "query", "required": required, "schema": {"type": "string"}, "description": text}
    for name, required, text in (
        ("response_type", True, "`code`"),
        ("client_id", True, "the client's id"),
        ("redirect_uri", True, "a loopback or same-host http(s) URL"),
        ("code_challenge", True, "PKCE challenge (base64url SHA-256 of the verifier)"),
        ("code_challenge_method", True, "`S256`"),
        ("scope", False, "SMART v2 scopes, e.g. `openid fhirUser user/*.rs`"),
        ("state", False, "echoed back to the redirect URI"),
        ("aud", False, "the FHIR base URL the token is for"),
    )
]
_SMART = {
    "summary": "SMART App Launch discovery",
    "responses": {"200": _response("the server's SMART configuration (endpoints, scopes, capabilities)", _JSON)},
}


def openapi_document(root: str) -> dict[str, Any]:
    """The document for a server whose site root is ``root`` (e.g. ``http://127.0.0.1:8080``)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Nära: endpoints outside the FHIR API",
            "version": __version__,
            "description": (
                "The FHIR R4 API is at `/fhir` and describes itself in its CapabilityStatement at "
                "`/fhir/metadata` (see docs/api.md). This document describes the other endpoints."
            ),
        },
        "servers": [{"url": root}],
        "externalDocs": {"description": "FHIR CapabilityStatement", "url": f"{root}/fhir/metadata"},
        "paths": {
            "/": {
                "get": {
                    "summary": "Landing page: what Nära is, the demo logins, links to the API",
                    "responses": {"200": _response("the page", _HTML)},
                }
            },
            "/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _response("OpenAPI 3.1", _JSON)}}
            },
            "/favicon.ico": {
                "get": {"summary": "Site icon", "responses": {"200": _response("an SVG icon", "image/svg+xml")}}
            },
            "/healthz": {
                "get": {
                    "summary": "Liveness and database reachability (for load balancers and orchestrators)",
                    "responses": {
                        "200": _response("the server and its database answer", _JSON),
                        "503": _response("the database is unreachable", _JSON),
                    },
                }
            },
            "/noop": {
                "get": {
                    "summary": "No-op on the same HTTP stack: the benchmark suite's baseline",
                    "responses": {"200": _response("`{}`", _JSON)},
                }
            },
            "/.well-known/smart-configuration": {"get": _SMART},
            "/fhir/.well-known/smart-configuration": {"get": _SMART},
            "/auth/jwks": {
                "get": {
                    "summary": "Public keys of the development identity provider." + _DEV_ONLY,
                    "responses": {"200": _response("a JWK Set", _JSON), "404": _response("not enabled", _JSON)},
                }
            },
            "/auth/authorize": {
                "get": {
                    "summary": "Authorization endpoint: the login page listing the demo users." + _DEV_ONLY,
                    "parameters": _AUTHORIZE_PARAMS,
                    "responses": {
                        "200": _response("the login page", _HTML),
                        "400": _response("a readable error page (e.g. PKCE missing, redirect URI refused)", _HTML),
                        "404": _response("not enabled", _JSON),
                    },
                },
                "post": {
                    "summary": "The login form: issues a one-time code and redirects to the client",
                    "requestBody": _form_body(
                        {
                            "user": {"type": "string", "description": "the chosen demo user (JSON)"},
                            "csrf": {"type": "string", "description": "the form's one-time token"},
                        },
                        required=["user", "csrf"],
                        more=True,
                    ),
                    "responses": {
                        "303": {
                            "description": "redirect to `redirect_uri` with `code` and `state`",
                            "headers": {"Location": {"schema": {"type": "string"}}},
                        },
                        "400": _response("a readable error page", _HTML),
                    },
                },
            },
            "/auth/token": {
                "post": {
                    "summary": "Token endpoint: `authorization_code` (with the PKCE verifier) or "
                    "`client_credentials` (HTTP Basic or form credentials)." + _DEV_ONLY,
                    "requestBody": _form_body(
                        {
                            k: {"type": "string"}
                            for k in (
                                "grant_type",
                                "code",
                                "redirect_uri",
                                "code_verifier",
                                "client_id",
                                "client_secret",
                                "scope",
                            )
                        },
                        required=["grant_type"],
                    ),
                    "responses": {
                        "200": _response("an access token", _JSON, _TOKEN),
                        "400": _response("OAuth error: `invalid_grant`, `unsupported_grant_type`", _JSON, _OAUTH_ERROR),
                        "401": _response("OAuth error `invalid_client`", _JSON, _OAUTH_ERROR),
                        "404": _response("not enabled", _JSON),
                    },
                }
            },
            "/auth/login": {
                "get": {
                    "summary": "Start the login for people trying the API: redirects to the login page." + _DEV_ONLY,
                    "responses": {"303": {"description": "redirect to `/auth/authorize`"}},
                }
            },
            "/auth/demo-callback": {
                "get": {
                    "summary": "End of that login: shows the access token to copy",
                    "parameters": [
                        {"name": "code", "in": "query", "required": True, "schema": {"type": "string"}},
                        {"name": "state", "in": "query", "required": True, "schema": {"type": "string"}},
                    ],
                    "responses": {
                        "200": _response("a page with the token", _HTML),
                        "400": _response("a readable error page", _HTML),
                    },
                }
            },
        },
    }
