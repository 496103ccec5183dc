"""The OpenAPI document of the endpoints outside the FHIR API: valid, complete, and true to what they answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.routing import Route

from nara.config import Settings
from nara.server.app import create_app
from tests.conftest import LiveServer


@pytest.fixture
def document(live_server: LiveServer) -> dict[str, Any]:
    r = httpx.get(f"{live_server.root}/openapi.json", timeout=10)  # public: no token
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body: dict[str, Any] = r.json()
    return body


def test_the_document_is_valid_openapi_3_1_and_names_this_server(
    document: dict[str, Any], live_server: LiveServer
) -> None:
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    assert document["servers"] == [{"url": live_server.root}]
    assert document["externalDocs"]["url"] == f"{live_server.url}/metadata"


def test_every_route_outside_the_fhir_api_is_described_with_its_methods(
    document: dict[str, Any], tmp_path: Path
) -> None:
    # An app of its own: an app registers its audit hook on the store it is given, so it must not share the
    # live server's store.
    app = create_app(Settings(database_url=f"sqlite:///{tmp_path / 'routes.db'}"))
    served: dict[str, set[str]] = {}
    for route in app.routes:
        assert isinstance(route, Route)
        if route.path == "/fhir" or route.path.startswith("/fhir/{"):
            continue  # the FHIR API: described by its CapabilityStatement
        served[route.path] = {m.lower() for m in (route.methods or ())} - {"head"}
    described = {path: set(ops) - {"parameters", "summary"} for path, ops in document["paths"].items()}
    assert described == served


@pytest.mark.parametrize(
    ("method", "path", "data"),
    [
        ("get", "/", None),
        ("get", "/healthz", None),
        ("get", "/noop", None),
        ("get", "/favicon.ico", None),
        ("get", "/.well-known/smart-configuration", None),
        ("get", "/fhir/.well-known/smart-configuration", None),
        ("get", "/auth/jwks", None),
        ("get", "/auth/login", None),
        ("get", "/auth/authorize", None),
        ("get", "/auth/demo-callback?code=x&state=y", None),
        ("post", "/auth/authorize", {"user": "{}", "csrf": "made-up"}),
        ("post", "/auth/token", {"grant_type": "password"}),
        ("post", "/auth/token", {"grant_type": "authorization_code", "code": "made-up"}),
        ("post", "/auth/token", {"grant_type": "client_credentials", "client_id": "x", "client_secret": "y"}),
    ],
)
def test_what_an_endpoint_answers_is_a_documented_response(
    document: dict[str, Any], live_server: LiveServer, method: str, path: str, data: dict[str, str] | None
) -> None:
    r = httpx.request(method, live_server.root + path, data=data, timeout=10, follow_redirects=False)
    operation = document["paths"][path.split("?")[0]][method]
    assert str(r.status_code) in operation["responses"], (path, r.status_code, r.text[:200])
    documented = operation["responses"][str(r.status_code)].get("content")
    if documented:
        assert r.headers["content-type"].split(";")[0] in documented, (path, r.headers["content-type"])
