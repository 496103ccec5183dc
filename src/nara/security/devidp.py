"""The built-in development identity provider (on only when configured: ``NARA_DEV_IDP=true``).

It signs tokens with a local RSA key kept in ``var/dev-idp-key.json`` (``NARA_DEV_IDP_KEY``), offers
a login page listing the demo users, the OAuth 2.0 authorization-code flow with PKCE (S256) for the
web pages and SMART apps, client credentials for system clients, and ``nara token`` for scripts.
It is not for production: a region plugs in its own OIDC provider (``NARA_OIDC_ISSUERS``).
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import threading
import time
from dataclasses import dataclass
from html import escape
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from joserfc import jwt
from joserfc.jwk import KeySet, KeySetSerialization, RSAKey

DEV_ISSUER = "urn:nara:dev-idp"
DEFAULT_AUDIENCE = "nara"
TOKEN_TTL_SECONDS = 3600
CODE_TTL_SECONDS = 120
DEFAULT_SCOPES = {
    "staff": "openid fhirUser user/*.cruds",
    "citizen": "openid fhirUser patient/*.cruds",
    "proxy": "openid fhirUser patient/*.cruds",
    "system": "system/*.cruds",
}


def key_path() -> Path:
    return Path(os.environ.get("NARA_DEV_IDP_KEY", "var/dev-idp-key.json"))


_key_lock = threading.Lock()


def signing_key(path: Path | None = None) -> RSAKey:
    """The development signing key, created on first use and kept on disk (mode 600)."""
    path = path or key_path()
    with _key_lock:
        if path.exists():
            return RSAKey.import_key(orjson.loads(path.read_bytes()))
        key = RSAKey.generate_key(2048, parameters={"kid": secrets.token_hex(8), "use": "sig", "alg": "RS256"})
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(key.as_dict(private=True)))
        tmp.chmod(0o600)
        try:
            os.link(tmp, path)  # atomic and exclusive: concurrent workers agree on the first key written
        except FileExistsError:
            key = RSAKey.import_key(orjson.loads(path.read_bytes()))
        finally:
            tmp.unlink(missing_ok=True)
        return key


def public_jwks(key: RSAKey) -> KeySetSerialization:
    return {"keys": [key.as_dict(private=False)]}


def key_set(key: RSAKey) -> KeySet:
    return KeySet.import_key_set(public_jwks(key))


def mint(
    key: RSAKey,
    sub: str,
    kind: str,
    *,
    audience: str = DEFAULT_AUDIENCE,
    assignment: str | None = None,
    patient: str | None = None,
    scope: str | None = None,
    name: str | None = None,
    ttl: int = TOKEN_TTL_SECONDS,
    extra: dict[str, Any] | None = None,
) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": DEV_ISSUER,
        "aud": audience,
        "sub": sub,
        "iat": now,
        "nbf": now - 1,
        "exp": now + ttl,
        "jti": secrets.token_hex(12),
        "nara_kind": kind,
        "scope": scope or DEFAULT_SCOPES.get(kind, ""),
    }
    if assignment:
        claims["assignment"] = assignment
    if patient:
        claims["patient"] = patient
    if name:
        claims["name"] = name
    if extra:
        claims.update(extra)
    header = {"alg": "RS256", "kid": key.kid, "typ": "JWT"}
    return jwt.encode(header, claims, key)


@dataclass
class PendingCode:
    claims: dict[str, Any]
    client_id: str
    redirect_uri: str
    challenge: str
    expires: float


class DevIdentityProvider:
    """In-memory authorization codes (a single demo process) around the signing key."""

    def __init__(self, key: RSAKey, audience: str = DEFAULT_AUDIENCE, clients: dict[str, str] | None = None) -> None:
        self.key = key
        self.audience = audience
        # client-credentials clients: client_id -> secret (NARA_DEV_IDP_CLIENTS="id:secret,...")
        self.clients = clients or {}
        self.codes: dict[str, PendingCode] = {}
        self.csrf: dict[str, float] = {}
        self._lock = threading.Lock()

    def new_csrf(self) -> str:
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            self.csrf = {k: v for k, v in self.csrf.items() if v > now}
            self.csrf[token] = now + 600
        return token

    def take_csrf(self, token: str) -> bool:
        with self._lock:
            exp = self.csrf.pop(token, 0)
        return exp > time.time()

    def issue_code(self, claims: dict[str, Any], client_id: str, redirect_uri: str, challenge: str) -> str:
        code = secrets.token_urlsafe(32)
        with self._lock:
            self.codes[code] = PendingCode(claims, client_id, redirect_uri, challenge, time.time() + CODE_TTL_SECONDS)
        return code

    def redeem(self, code: str, client_id: str, redirect_uri: str, verifier: str) -> dict[str, Any] | None:
        with self._lock:
            pending = self.codes.pop(code, None)
        if pending is None or pending.expires < time.time():
            return None
        if pending.client_id != client_id or pending.redirect_uri != redirect_uri:
            return None
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
        if not secrets.compare_digest(digest, pending.challenge):
            return None
        return pending.claims


def login_page(users: list[dict[str, Any]], params: dict[str, str], csrf: str) -> str:
    hidden = (
        "".join(f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">' for k, v in params.items())
        + f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
    )
    rows = []
    for i, u in enumerate(users):
        value = escape(orjson.dumps({k: u.get(k) for k in ("kind", "sub", "assignment", "patient", "name")}).decode())
        rows.append(
            f'<li><label><input type="radio" name="user" value="{value}"{" checked" if i == 0 else ""}> '
            f"<strong>{escape(str(u.get('name', '')))}</strong> – {escape(str(u.get('description', '')))}</label></li>"
        )
    listing = "\n".join(rows) or "<li>No demo users found (run <code>nara demo</code>).</li>"
    return f"""<!doctype html><html lang="sv"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1"><title>Logga in – Nära (utveckling)</title>
<style>body{{font-family:system-ui,sans-serif;max-width:44rem;margin:2rem auto;padding:0 1rem}}
li{{margin:.4rem 0;list-style:none}}</style></head><body>
<h1>Logga in</h1><p>Development identity provider: choose a demo user. Not for production use.</p>
<form method="post" action="authorize">{hidden}<ul>{listing}</ul>
<button type="submit">Log in</button></form></body></html>"""


def redirect_with(uri: str, params: dict[str, str]) -> str:
    sep = "&" if "?" in uri else "?"
    return uri + sep + urlencode(params)
