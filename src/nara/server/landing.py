"""The landing page at ``/``: what Nära is, the demo logins and where to go next."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nara.store.store import Store

# Demo users per served store, read once (they only change when the demo database is recreated).
_users_cache: dict[int, list[dict[str, Any]]] = {}
_lock = threading.Lock()


def _as_dict(user: object) -> dict[str, Any]:
    return dict(user) if isinstance(user, dict) else dict(vars(user))


def demo_users_of(store: Store) -> list[dict[str, Any]]:
    """The demo users in the served database (cached per store), or none when it has no demo region."""
    with _lock:
        if id(store) in _users_cache:
            return _users_cache[id(store)]
    try:
        from nara.demo.users import demo_users

        users = [_as_dict(u) for u in demo_users(store)]
    except Exception:  # no schema or no demo data yet: the page still works
        return []
    if users:
        with _lock:
            _users_cache[id(store)] = users
    return users


def _user_rows(users: Sequence[object]) -> str:
    rows = []
    for raw in users:
        u = _as_dict(raw)
        kind = {"citizen": "citizen", "proxy": "guardian", "staff": "staff"}.get(str(u.get("kind")), str(u.get("kind")))
        login = f"<code>{escape(str(u.get('sub', '')))}</code>"
        if u.get("assignment"):
            login += f"<br><small>assignment <code>{escape(str(u['assignment']))}</code></small>"
        if u.get("patient"):
            login += f"<br><small>for <code>{escape(str(u['patient']))}</code></small>"
        rows.append(
            f"<tr><td>{escape(str(u.get('name', '')))}<br><small>{escape(kind)}</small></td>"
            f"<td>{login}</td><td>{escape(str(u.get('description', '')))}</td></tr>"
        )
    return "\n".join(rows)


def landing_page(fhir_base: str, users: Sequence[object] = (), login_enabled: bool = True) -> str:
    """The page; ``users`` are the demo logins of the served database, ``login_enabled`` whether this server
    runs the development identity provider (``nara demo``, or ``NARA_DEV_IDP=true``)."""
    base = escape(fhir_base)
    root = escape(fhir_base.removesuffix("/fhir"))
    if users:
        if login_enabled:
            how = f"""Log in through the development identity provider at
<a href="{root}/auth/login"><code>/auth/login</code></a>, pick one of these users, and call the API with the
token (<code>Authorization: Bearer …</code>)."""
        else:
            how = """The development login is off on this server (it is on under <code>nara demo</code>, or with
<code>NARA_DEV_IDP=true</code>); use your region's identity provider, or
<code>nara token --user ID</code> on the server, to get a token for one of these users."""
        demo = f"""<h2>Demo logins</h2>
<p>The demo region is synthetic: a region shaped like Region Örebro län with its twelve municipalities, their
health centres, hospital wards, home health care, home care and LSS units, staff with assignments
(medarbetaruppdrag), and a few thousand people with chronic conditions, medications, lab results, care plans,
home-monitoring series, consents and blocks. {how} Each sees what the Patient Data Act lets them see.</p>
<table><thead><tr><th>Who</th><th>Logs in as</th><th>Can</th></tr></thead>
<tbody>
{_user_rows(users)}
</tbody></table>"""
    else:
        demo = """<h2>Demo logins</h2>
<p>This database has no demo region. Run <code>nara demo</code> (or <code>make demo</code>) for a synthetic
region with demo users, or <code>nara generate</code> to fill a database of your own.</p>"""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Nära – shared health and social care</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.5}}
code{{background:#f3f3f3;padding:0 .25rem}} table{{border-collapse:collapse;width:100%}}
th,td{{text-align:left;vertical-align:top;border-bottom:1px solid #ddd;padding:.4rem}} small{{color:#555}}</style>
</head>
<body>
<h1>Nära</h1>
<p>Nära is an open platform for shared health and social care between a Swedish region and its
municipalities. Everything clinical or administrative about a person is an HL7 FHIR R4 resource in one store
behind one REST API, and every request passes one gate: who is asking (a citizen, a guardian, or staff acting in
an assignment at a unit), whether the Patient Data Act and the SVOD law let them (care relationship, consent,
blocks, emergency access), and an audit record of every access.</p>
<h2>The API</h2>
<ul>
<li>FHIR base URL: <a href="{base}"><code>{base}</code></a> (a bearer token is required)</li>
<li>CapabilityStatement, open to all: <a href="{base}/metadata"><code>{base}/metadata</code></a></li>
<li>The other endpoints (health, login and tokens, SMART discovery) in OpenAPI 3.1:
<a href="{root}/openapi.json"><code>{root}/openapi.json</code></a></li>
<li>API documentation: <code>docs/api.md</code>; the security model: <code>docs/security.md</code>
(in the repository)</li>
<li>Try the service catalogue: <code>{base}/HealthcareService?service-category=primarvard</code>,
<code>{base}/Location?address-city=Örebro</code></li>
</ul>
{demo}
</body></html>
"""
