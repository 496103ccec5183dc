"""The CapabilityStatement tells the truth: every search parameter it lists works, on both databases."""

from __future__ import annotations

from typing import Any

from nara.fhir.outcome import FhirError
from nara.fhir.searchparams import registry, search_params
from nara.fhir.spec import spec
from nara.server.capability import capability_statement
from nara.store.store import Store
from tests.store.search_fixtures import search

SAMPLE = {
    "token": "http://example.org|x",
    "string": "x",
    "date": "ge2026-01-01",
    "number": "gt1.5",
    "quantity": "lt5|http://unitsofmeasure.org|mg",
    "reference": "Patient/x",
    "uri": "http://example.org/x",
    "special": "x",
}
SECOND = {"token": "a|b", "quantity": "gt1", "number": "gt1", "date": "ge2026", "string": "x", "uri": "urn:x"}


def sample(rtype: str, code: str, ptype: str) -> str:
    if ptype == "composite":
        p = search_params(rtype)[code]
        return f"http://example.org|x${SECOND.get(p.components[1][1], 'x')}"
    return SAMPLE[ptype]


def listed() -> dict[str, list[dict[str, Any]]]:
    cs = capability_statement("http://nara.test/fhir")
    return {r["type"]: r["searchParam"] for r in cs["rest"][0]["resource"]}


def test_capability_lists_exactly_the_compiled_parameters() -> None:
    by_type = listed()
    assert set(by_type) == set(spec().resource_types)
    for rtype, entries in by_type.items():
        names = [e["name"] for e in entries]
        assert len(names) == len(set(names)), rtype
        assert set(names) == set(search_params(rtype)) | {"_list", "_has"}, rtype
    left_out = {code for (_, code) in registry().unsupported}
    assert {"_text", "_content", "_query", "near"} <= left_out
    assert not any(e["name"] in ("_text", "_content", "near") for entries in by_type.values() for e in entries)


def test_capability_types_match_the_definitions() -> None:
    for rtype, entries in listed().items():
        params = search_params(rtype)
        for e in entries:
            if e["name"] in params:
                assert e["type"] == params[e["name"]].type, (rtype, e["name"])


def test_every_listed_parameter_is_accepted_and_runs(store: Store) -> None:
    failures = []
    for rtype, entries in sorted(listed().items()):
        for e in entries:
            name, ptype = e["name"], e["type"]
            if name == "_has":
                query = "_has:Provenance:target:agent=Practitioner/x"
            elif name == "_list":
                query = "_list=x"
            else:
                query = f"{name}={sample(rtype, name, ptype)}&{name}:missing=true&_total=none"
            try:
                result = search(store, rtype, query, strict=True)
            except FhirError as exc:
                failures.append(f"{rtype}?{query}: {exc.issues[0].diagnostics}")
                continue
            assert result.matches == []
    assert failures == []
