"""The web pages in a real headless browser (Debian's chromium driven by Playwright), on SQLite and PostgreSQL.

The landing page at ``/``, the development identity provider's login flow (``/auth/login`` → ``/auth/authorize``
→ ``/auth/demo-callback``) and its error pages. The token the browser ends up with is then used from the test,
over plain HTTP, against the FHIR API. Every page must load without script errors.

The browser is the system's ``chromium`` (``make test`` installs it with apt when missing; ``NARA_TEST_CHROMIUM``
names another binary). When it is missing these tests fail: they never skip.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import KeySet
from playwright.sync_api import Browser, ConsoleMessage, Page, Playwright, sync_playwright

from nara.demo.generate import Options, generate
from nara.demo.users import DemoUser, demo_users
from nara.fhir.identifiers import PERSONNUMMER
from nara.security.devidp import DEV_ISSUER
from nara.server import landing
from nara.store.store import Store
from tests.conftest import Backend, LiveServer, reset_settings, shared_data_dir, truncate

PATIENTS = 60  # enough for every demo login with or without the official test numbers (30 was not without them)


def chromium_path() -> str:
    """Debian's chromium (or ``NARA_TEST_CHROMIUM``); a missing browser fails the test with the fix."""
    configured = os.environ.get("NARA_TEST_CHROMIUM")
    path = configured or shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).is_file():
        pytest.fail(
            f"No Chromium at {path}: the web-page tests need Debian's chromium "
            "(apt-get install -y chromium; `make test` installs it when missing)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    """One headless browser for the module; each test gets its own context (cookies) and page."""
    chromium = playwright.chromium.launch(executable_path=chromium_path(), headless=True)
    try:
        yield chromium
    finally:
        chromium.close()


@dataclass
class Tab:
    """A browser page and the script errors and console errors it reported."""

    page: Page
    page_errors: list[str] = field(default_factory=list)
    console_errors: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.console_errors.append(f"{message.text} ({message.location.get('url', '')})")


@pytest.fixture
def tab(browser: Browser) -> Iterator[Tab]:
    context = browser.new_context(locale="sv-SE")
    page = context.new_page()
    page.set_default_timeout(10_000)
    t = Tab(page)
    page.on("pageerror", lambda error: t.page_errors.append(str(error)))
    page.on("console", t.on_console)
    try:
        yield t
    finally:
        context.close()


def forget_cached_demo_users(store: Store) -> None:
    # The landing page reads the demo users once per served store; these tests recreate the database under the
    # running server, which a deployment never does.
    landing._users_cache.pop(id(store), None)


@pytest.fixture
def empty_store(live_server: LiveServer, store: Store) -> Iterator[Store]:
    """The live server's database, empty (no demo region)."""
    forget_cached_demo_users(store)
    yield store
    forget_cached_demo_users(store)


# The demo logins of the region this module generated, per store: the tests only read it, so while the database
# still holds exactly that region (no other test emptied it in between) the next test reuses it.
_generated: dict[int, list[DemoUser]] = {}


@pytest.fixture
def demo_region(live_server: LiveServer, backend: Backend) -> Iterator[list[DemoUser]]:
    """A small synthetic demo region in the live server's database; its demo logins."""
    store = backend.store
    reset_settings(store)
    forget_cached_demo_users(store)
    users = demo_users(store) if id(store) in _generated else []
    if not users or users != _generated[id(store)]:
        truncate(store)
        numbers = shared_data_dir() / "testpersonnummer.txt"
        generate(store, Options(patients=PATIENTS, seed=7, personnummer_file=numbers if numbers.exists() else None))
        users = _generated[id(store)] = demo_users(store)
    assert [u.key for u in users] == [
        "citizen", "guardian", "district-nurse", "municipal-nurse", "hospital-physician", "social-care-officer",
        "auditor", "administrator",
    ]  # fmt: skip
    yield users
    forget_cached_demo_users(store)


def assert_no_script_errors(tab: Tab) -> None:
    assert tab.page_errors == [], f"uncaught script errors: {tab.page_errors}"
    assert tab.console_errors == [], f"console errors: {tab.console_errors}"


def claims_of(token: str, live: LiveServer) -> dict[str, object]:
    """The token's claims, its signature checked against the server's published key set."""
    keys = KeySet.import_key_set(httpx.get(f"{live.root}/auth/jwks", timeout=10).json())
    return dict(jwt.decode(token, keys).claims)


def fhir_get(live: LiveServer, path: str, token: str | None) -> httpx.Response:
    headers = {"Accept": "application/fhir+json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.get(f"{live.url}/{path}", headers=headers, timeout=30)


def log_in_through_the_browser(tab: Tab, live: LiveServer, user: DemoUser, users: list[DemoUser]) -> str:
    """From the landing page: follow the login link, choose ``user`` on the login page, return the shown token."""
    page = tab.page
    page.goto(live.root + "/")
    page.get_by_role("link", name="/auth/login").click()
    page.wait_for_url(re.compile(r"/auth/authorize\?"))
    assert page.title() == "Logga in – Nära (utveckling)"
    options = page.locator("form li")
    assert options.count() == len(users)
    listed = options.all_inner_texts()
    for u, text in zip(users, listed, strict=True):
        assert u.name in text and u.description in text
    assert page.get_by_role("radio").first.is_checked()  # a choice is preselected
    page.locator("label", has_text=user.name).get_by_role("radio").check()
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/auth/demo-callback\?"))
    assert "code=" in page.url and "state=" in page.url
    assert page.title() == "Inloggad – Nära"
    assert page.get_by_role("heading", level=1).inner_text() == f"Logged in as {user.name}"
    token = page.locator("#token").input_value().strip()
    assert token.count(".") == 2, "the page shows a compact JWT"
    return token


def test_landing_page_without_a_demo_region_says_how_to_make_one(
    tab: Tab, live_server: LiveServer, empty_store: Store
) -> None:
    response = tab.page.goto(live_server.root + "/")
    assert response is not None and response.status == 200
    assert tab.page.title() == "Nära – shared health and social care"
    body = tab.page.locator("body").inner_text()
    assert "This database has no demo region" in body and "nara demo" in body
    assert tab.page.locator("table").count() == 0
    assert_no_script_errors(tab)


def test_landing_page_lists_every_demo_login_and_its_links_work(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser]
) -> None:
    page = tab.page
    response = page.goto(live_server.root + "/")
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    assert page.title() == "Nära – shared health and social care"
    assert page.get_by_role("heading", level=1).inner_text() == "Nära"

    rows = page.locator("table tbody tr")
    assert rows.count() == len(demo_region) == 8
    for user, text in zip(demo_region, rows.all_inner_texts(), strict=True):
        assert user.name in text and user.sub in text and user.description in text
        if user.assignment:
            assert user.assignment in text
        if user.patient:
            assert user.patient in text

    # Every link on the page answers as it says: the FHIR base asks for a token, the CapabilityStatement and the
    # OpenAPI document are open, the login link starts the login flow.
    hrefs = page.locator("a[href]").evaluate_all("links => links.map(a => a.href)")
    expected = {
        live_server.url: 401,
        f"{live_server.url}/metadata": 200,
        f"{live_server.root}/openapi.json": 200,
        f"{live_server.root}/auth/login": 303,
    }
    assert sorted(hrefs) == sorted(expected)
    for href, status in expected.items():
        answered = page.request.get(href, max_redirects=0).status
        assert answered == status, f"{href} answered {answered}"

    # Following the CapabilityStatement link shows the server's CapabilityStatement.
    with page.expect_navigation() as navigation:
        page.get_by_role("link", name=f"{live_server.url}/metadata").click()
    capability = navigation.value
    assert capability is not None and capability.status == 200
    assert page.url == f"{live_server.url}/metadata"
    statement = orjson.loads(capability.body())
    assert statement["resourceType"] == "CapabilityStatement"
    assert statement["fhirVersion"].startswith("4.0")
    assert "Patient" in {r["type"] for r in statement["rest"][0]["resource"]}
    assert_no_script_errors(tab)


def log_in_as(tab: Tab, live: LiveServer, users: list[DemoUser], key: str) -> tuple[DemoUser, str, dict[str, object]]:
    """Log in as the demo user ``key`` through the browser; the user, the token, and its checked claims."""
    user = next(u for u in users if u.key == key)
    token = log_in_through_the_browser(tab, live, user, users)
    assert_no_script_errors(tab)
    claims = claims_of(token, live)
    assert claims["sub"] == user.sub and claims["nara_kind"] == user.kind and claims["name"] == user.name
    assert claims.get("assignment") == user.assignment
    return user, token, claims


def test_citizen_logs_in_in_the_browser_and_the_token_reads_only_their_own_record(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser]
) -> None:
    citizen, token, claims = log_in_as(tab, live_server, demo_region, "citizen")
    assert claims["iss"] == DEV_ISSUER and claims["aud"] == "nara" and claims["nara_kind"] == "citizen"

    assert fhir_get(live_server, "Patient", None).status_code == 401
    answer = fhir_get(live_server, "Patient?_count=50", token)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["total"] == 1
    (own,) = [e["resource"] for e in bundle["entry"]]
    assert {"system": PERSONNUMMER, "value": citizen.sub} in [
        {"system": i.get("system"), "value": i.get("value")} for i in own["identifier"]
    ]


@pytest.mark.parametrize(
    "key",
    [
        "citizen", "guardian", "district-nurse", "municipal-nurse", "hospital-physician", "social-care-officer",
        "auditor", "administrator",
    ],
)  # fmt: skip
def test_each_demo_user_logs_in_in_the_browser_and_queries_the_api_with_the_token(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser], key: str
) -> None:
    _user, token, _claims = log_in_as(tab, live_server, demo_region, key)
    answer = fhir_get(live_server, "Patient?_count=5", token)
    assert answer.status_code == 200, answer.text
    bundle = answer.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    assert fhir_get(live_server, "Patient?_count=5", token[:-4] + "AAAA").status_code == 401  # tampered


def test_district_nurse_logs_in_in_the_browser_and_the_token_acts_in_their_assignment(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser]
) -> None:
    nurse, token, claims = log_in_as(tab, live_server, demo_region, "district-nurse")
    assert claims["nara_kind"] == "staff" and claims["assignment"]

    answer = fhir_get(live_server, "Patient?_count=1", token)
    assert answer.status_code == 200, answer.text
    assert answer.json()["resourceType"] == "Bundle"
    role = fhir_get(live_server, f"PractitionerRole/{nurse.assignment}", token)
    assert role.status_code == 200, role.text
    assert role.json()["practitioner"]["reference"] == f"Practitioner/{nurse.sub}"


def log_in_as_posted_user(tab: Tab, live: LiveServer, user: DemoUser) -> str:
    """Start the demo login, then post the login form with a user value of our own (as a crafted form would)."""
    page = tab.page
    page.goto(live.root + "/auth/login")
    page.wait_for_url(re.compile(r"/auth/authorize\?"))
    value = orjson.dumps({"kind": user.kind, "sub": user.sub, "name": user.name}).decode()
    page.locator("input[name=user]").first.evaluate("(radio, value) => { radio.value = value }", value)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(r"/auth/demo-callback\?"))
    return page.locator("#token").input_value().strip()


def test_the_callback_page_escapes_the_name_of_the_user(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser]
) -> None:
    # A name written into the page must show as text, never as markup.
    hostile = DemoUser("citizen", "citizen", demo_region[0].sub, "<b id=injected>Eve</b>", "x")
    token = log_in_as_posted_user(tab, live_server, hostile)
    assert tab.page.locator("#injected").count() == 0
    assert tab.page.get_by_role("heading", level=1).inner_text() == f"Logged in as {hostile.name}"
    assert claims_of(token, live_server)["name"] == hostile.name
    assert_no_script_errors(tab)


def test_authorize_without_pkce_shows_a_readable_400_page(tab: Tab, live_server: LiveServer) -> None:
    params = {
        "response_type": "code",
        "client_id": "nara-demo",
        "redirect_uri": f"{live_server.root}/auth/demo-callback",
        "scope": "openid fhirUser",
        "state": "s1",
    }
    response = tab.page.goto(f"{live_server.root}/auth/authorize?{urlencode(params)}")
    assert response is not None and response.status == 400
    assert response.headers["content-type"].startswith("text/html")
    page = tab.page
    assert page.title() == "Bad request – Nära"
    assert page.get_by_role("heading", level=1).inner_text() == "Bad request"
    text = page.locator("body").inner_text()
    assert "PKCE is required: code_challenge with code_challenge_method=S256" in text
    assert "Traceback" not in text and 'File "' not in text and "Exception" not in text
    assert page.evaluate("document.compatMode") == "CSS1Compat", "the error page is a standards-mode HTML document"
    assert tab.page_errors == []
    # The only console error is the browser's own note of the 400 status.
    assert all("status of 400" in e for e in tab.console_errors), tab.console_errors


def test_callback_without_a_started_login_shows_a_readable_400_page(tab: Tab, live_server: LiveServer) -> None:
    response = tab.page.goto(f"{live_server.root}/auth/demo-callback?code=made-up&state=made-up")
    assert response is not None and response.status == 400
    page = tab.page
    assert page.title() == "Login failed – Nära"
    assert "The login state did not match; start again." in page.locator("body").inner_text()
    assert page.locator("#token").count() == 0
    # The page offers the way back into the flow.
    with page.expect_navigation():
        page.get_by_role("link", name="Log in again").click()
    assert re.search(r"/auth/authorize\?", page.url)
    assert page.title() == "Logga in – Nära (utveckling)"
    assert tab.page_errors == []
    assert all("status of 400" in e for e in tab.console_errors), tab.console_errors


class _AppCallback(BaseHTTPRequestHandler):
    """A SMART app's redirect endpoint on another loopback port: records the query it was sent."""

    received: list[str] = []

    def do_GET(self) -> None:
        type(self).received.append(self.path)
        body = b"<!doctype html><html><head><title>App</title></head><body>signed in</body></html>"
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_HEAD(self) -> None:
        self.do_GET()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def smart_app() -> Iterator[str]:
    """A redirect URI served by a separate little web server, as a locally running SMART app would have."""
    _AppCallback.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _AppCallback)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/callback"
    finally:
        server.shutdown()
        server.server_close()


def test_a_smart_app_on_another_port_gets_a_code_through_the_browser_login_and_redeems_it_with_pkce(
    tab: Tab, live_server: LiveServer, demo_region: list[DemoUser], smart_app: str
) -> None:
    """Standalone launch: the page's Content-Security-Policy lets the login form's redirect reach the app (Chromium
    applies form-action to it), and the code is bound to the app's client id, redirect URI and PKCE verifier."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    params = {
        "response_type": "code",
        "client_id": "my-smart-app",
        "redirect_uri": smart_app,
        "scope": "openid fhirUser user/*.read",
        "state": "app-state-1",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
        "aud": live_server.url,
    }
    page = tab.page
    response = page.goto(f"{live_server.root}/auth/authorize?{urlencode(params)}")
    assert response is not None and response.status == 200
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy
    assert f"form-action 'self' {smart_app.removesuffix('/callback')}" in policy
    assert response.headers["referrer-policy"] == "no-referrer"
    nurse = next(u for u in demo_region if u.key == "district-nurse")
    page.locator("label", has_text=nurse.name).get_by_role("radio").check()
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(re.compile(re.escape(smart_app) + r"\?"))
    assert page.title() == "App"
    assert_no_script_errors(tab)

    (path,) = [p for p in _AppCallback.received if p.startswith("/callback")]  # (the browser also asks for a favicon)
    query = parse_qs(urlsplit(path).query)
    assert query["state"] == ["app-state-1"]
    (code,) = query["code"]
    token_url = f"{live_server.root}/auth/token"
    form = {"grant_type": "authorization_code", "code": code, "client_id": "my-smart-app", "redirect_uri": smart_app}
    granted = httpx.post(token_url, data={**form, "code_verifier": verifier}, timeout=10)
    assert granted.status_code == 200, granted.text
    claims = claims_of(granted.json()["access_token"], live_server)
    assert claims["sub"] == nurse.sub and claims["assignment"] == nurse.assignment
    assert fhir_get(live_server, "Patient?_count=1", granted.json()["access_token"]).status_code == 200
    # The code is single use: replaying it (a stolen code) gets nothing.
    replay = httpx.post(token_url, data={**form, "code_verifier": verifier}, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_the_login_form_cannot_be_sent_to_a_redirect_uri_on_another_host(tab: Tab, live_server: LiveServer) -> None:
    params = {
        "response_type": "code",
        "client_id": "my-smart-app",
        "redirect_uri": "https://attacker.example/callback",
        "state": "s",
        "code_challenge": "x" * 43,
        "code_challenge_method": "S256",
    }
    response = tab.page.goto(f"{live_server.root}/auth/authorize?{urlencode(params)}")
    assert response is not None and response.status == 400
    assert "redirect_uri must be a loopback or same-host" in tab.page.locator("body").inner_text()
    assert tab.page.locator("form").count() == 0
    assert "attacker.example" not in response.headers["content-security-policy"]


def test_every_page_carries_the_security_headers(tab: Tab, live_server: LiveServer, empty_store: Store) -> None:
    for path in ("/", "/auth/demo-callback?code=x&state=y"):
        response = tab.page.goto(live_server.root + path)
        assert response is not None
        headers = response.headers
        assert headers["content-security-policy"].startswith("default-src 'none'; style-src 'unsafe-inline'"), path
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY", path
        assert headers["referrer-policy"] == "no-referrer", path
    assert tab.page_errors == []
