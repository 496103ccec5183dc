"""Bundles the server returns: searchset, history, and the builders for their entries and links.

Stored resources are spliced into the response as pre-serialized JSON (``orjson.Fragment``), so a
search page is never parsed and re-serialized unless ``_summary``/``_elements`` ask for a subset.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any
from urllib.parse import urlencode

import orjson

from nara.fhir.dates import instant
from nara.fhir.outcome import Issue, operation_outcome
from nara.fhir.summary import select_elements, summarize
from nara.store.crud import Stored


def status_line(code: int) -> str:
    try:
        return f"{code} {HTTPStatus(code).phrase}"
    except ValueError:
        return str(code)


def resource_body(st: Stored, summary: str | None = None, elements: list[str] | None = None) -> Any:
    """The resource for a response: raw JSON when untouched, a subset dict for _summary/_elements."""
    if summary and summary not in ("false", "count"):
        return summarize(st.resource(), summary)
    if elements:
        return select_elements(st.resource(), elements)
    return orjson.Fragment(st.json_bytes())


def full_url(base: str, st: Stored) -> str:
    return f"{base}/{st.res_type}/{st.res_id}"


def search_bundle(
    base: str,
    self_link: str,
    matches: list[Stored],
    included: list[Stored],
    total: int | None,
    links: dict[str, str],
    issues: list[Issue],
    summary: str | None = None,
    elements: list[str] | None = None,
) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    if summary != "count":
        for st in matches:
            entries.append(
                {
                    "fullUrl": full_url(base, st),
                    "resource": resource_body(st, summary, elements),
                    "search": {"mode": "match"},
                }
            )
        for st in included:
            entries.append(
                {
                    "fullUrl": full_url(base, st),
                    "resource": resource_body(st, summary, elements),
                    "search": {"mode": "include"},
                }
            )
    if issues:
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": self_link}] + [
        {"relation": rel, "url": url} for rel, url in links.items()
    ]
    if entries:
        bundle["entry"] = entries
    return bundle


def history_entry(base: str, st: Stored) -> dict[str, Any]:
    method = st.method if st.method in ("POST", "PUT", "DELETE", "PATCH") else "PUT"
    entry: dict[str, Any] = {"fullUrl": full_url(base, st)}
    if not st.deleted and st.content is not None:
        entry["resource"] = orjson.Fragment(st.json_bytes())
    url = st.res_type if method == "POST" else f"{st.res_type}/{st.res_id}"
    entry["request"] = {"method": method, "url": url}
    status = 201 if method == "POST" else 204 if method == "DELETE" else 200
    entry["response"] = {
        "status": status_line(status),
        "etag": st.etag,
        "lastModified": instant(st.last_updated),
    }
    return entry


def history_bundle(
    base: str, self_link: str, entries: list[Stored], total: int | None, links: dict[str, str]
) -> dict[str, Any]:
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": "self", "url": self_link}] + [
        {"relation": rel, "url": url} for rel, url in links.items()
    ]
    if entries:
        bundle["entry"] = [history_entry(base, st) for st in entries]
    return bundle


def page_url(base_path: str, params: list[tuple[str, str]], **extra: str) -> str:
    items = [(k, v) for k, v in params if k not in extra]
    items.extend(extra.items())
    query = urlencode(items)
    return f"{base_path}?{query}" if query else base_path
