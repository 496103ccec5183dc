"""HTTP details of the FHIR API: content negotiation, bodies, Prefer, and FHIR JSON responses."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from nara.fhir.outcome import FhirError

FHIR_JSON = "application/fhir+json"
JSON_TYPES = ("application/fhir+json", "application/json", "application/json+fhir", "text/json")
XML_TYPES = ("application/fhir+xml", "application/xml", "text/xml", "application/xml+fhir")
PATCH_JSON = "application/json-patch+json"
FORM = "application/x-www-form-urlencoded"
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}  # for tokens and the pages that show them


def media_type(header: str | None) -> str:
    return (header or "").split(";", 1)[0].strip().lower()


def check_accept(request: Request) -> None:
    """406 when the client accepts only XML (or asks for it with _format)."""
    fmt = request.query_params.get("_format")
    if fmt is not None:
        f = fmt.lower()
        if f in ("json", "html") or f in JSON_TYPES or f.startswith("application/fhir+json"):
            return
        if "xml" in f:
            raise FhirError(406, "not-supported", "Only JSON is supported (_format=json)")
        raise FhirError(406, "not-supported", f"Unknown _format {fmt!r}; use json")
    accept = request.headers.get("accept", "")
    if not accept:
        return
    kinds = [media_type(p) for p in accept.split(",")]
    if any(k in JSON_TYPES or k in ("*/*", "application/*", "text/html", "") for k in kinds):
        return
    if any(k in XML_TYPES for k in kinds):
        raise FhirError(406, "not-supported", "Only JSON is supported (Accept: application/fhir+json)")


async def read_body(request: Request, limit: int, allowed: tuple[str, ...] = JSON_TYPES) -> Any:
    """The parsed JSON body, enforcing the size limit and content type."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise FhirError(413, "too-long", f"Request body larger than the limit of {limit} bytes")
        except ValueError:
            raise FhirError(400, "invalid", "Malformed Content-Length header") from None
    ctype = media_type(request.headers.get("content-type"))
    if ctype in XML_TYPES:
        raise FhirError(415, "not-supported", "XML is not supported; send application/fhir+json")
    if ctype and ctype not in allowed:
        raise FhirError(415, "not-supported", f"Unsupported Content-Type {ctype!r}; send application/fhir+json")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError(413, "too-long", f"Request body larger than the limit of {limit} bytes")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise FhirError(400, "invalid", "The request has no body; a FHIR resource is required")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise FhirError(
            400, "structure", f"The body is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
        ) from None


def prefer(request: Request, key: str) -> str | None:
    """A preference from the Prefer header, e.g. return=minimal or handling=strict."""
    header = request.headers.get("prefer", "")
    for part in header.split(","):
        for item in part.split(";"):
            k, _, v = item.strip().partition("=")
            if k.strip().lower() == key:
                return v.strip().strip('"').lower()
    return None


def wants_pretty(request: Request) -> bool:
    return request.query_params.get("_pretty", "false").lower() == "true"


def json_bytes(body: Any, pretty: bool = False) -> bytes:
    if pretty:
        return orjson.dumps(body, option=orjson.OPT_INDENT_2)
    return orjson.dumps(body)


class FhirResponse(Response):
    media_type = FHIR_JSON

    def __init__(
        self,
        body: Any = None,
        status_code: int = 200,
        headers: dict[str, str] | None = None,
        pretty: bool = False,
    ) -> None:
        if body is None:
            content = b""
        elif isinstance(body, bytes):
            content = orjson.dumps(orjson.loads(body), option=orjson.OPT_INDENT_2) if pretty else body
        elif pretty:
            # Pre-serialized fragments are not re-indented by orjson: round-trip them once.
            content = json_bytes(orjson.loads(orjson.dumps(body)), True)
        else:
            content = json_bytes(body)
        super().__init__(
            content,
            status_code=status_code,
            headers=headers,
            media_type=FHIR_JSON + "; charset=utf-8" if body is not None else None,
        )


def page_headers(form_targets: tuple[str, ...] = (), *, no_store: bool = False) -> dict[str, str]:
    """Security headers for Nära's own HTML pages (landing page, development login).

    The pages carry no scripts and only inline styles, so the Content-Security-Policy allows nothing else;
    ``form_targets`` are origins a form may post or redirect to beside the page's own (Chromium applies
    ``form-action`` to the redirect after a post, e.g. the login's redirect to a SMART app on another port).
    No referrer leaves the page (the login callback URL carries a one-time code).
    """
    form_action = " ".join(["'self'", *form_targets])
    headers = {
        "Content-Security-Policy": (
            "default-src 'none'; style-src 'unsafe-inline'; img-src 'self'; "
            f"form-action {form_action}; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "no-referrer",
    }
    if no_store:
        headers.update(NO_STORE)
    return headers
