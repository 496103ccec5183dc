"""The landing page: what Nära is, the demo logins (escaped), links to the API and the CapabilityStatement."""

from __future__ import annotations

from pathlib import Path

import pytest

from nara.demo.users import DemoUser
from nara.server.landing import landing_page

USERS = [
    DemoUser("citizen", "citizen", "194603213424", "Anna Hassan", "Invånare: sees their own record (80 år)"),
    DemoUser(
        "district-nurse",
        "staff",
        "SE2321009181-P00110",
        "Therese <Persson>",
        "Distriktssköterska at a health centre",
        assignment="SE2321009181-M00110",
    ),
    DemoUser("guardian", "proxy", "199607302396", "Joakim Nordin", "Vårdnadshavare", patient="202107012383"),
]


def test_landing_page_lists_each_demo_user_with_their_login_and_what_they_can_do() -> None:
    page = landing_page("http://127.0.0.1:8080/fhir", USERS)
    assert "Demo logins" in page
    for u in USERS:
        assert u.sub in page
        assert u.description in page
    assert "SE2321009181-M00110" in page and "202107012383" in page
    assert "Therese &lt;Persson&gt;" in page and "<Persson>" not in page


def test_landing_page_links_the_fhir_base_metadata_and_login() -> None:
    page = landing_page("http://example.test/fhir", USERS)
    assert 'href="http://example.test/fhir/metadata"' in page
    assert 'href="http://example.test/fhir"' in page
    assert 'href="http://example.test/auth/login"' in page
    assert "docs/api.md" in page


def test_without_a_demo_region_the_page_says_how_to_make_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "absent.db"
    monkeypatch.setenv("NARA_DATABASE_URL", f"sqlite:///{missing}")
    page = landing_page("http://127.0.0.1:8080/fhir")
    assert "nara demo" in page and "Logs in as" not in page
    assert not missing.exists(), "rendering the page must not create a database"


def test_without_the_development_login_the_page_links_no_dead_login() -> None:
    page = landing_page("http://example.test/fhir", USERS, login_enabled=False)
    assert "/auth/login" not in page
    assert "development login is off" in page and "nara token --user" in page
    for u in USERS:
        assert u.sub in page
