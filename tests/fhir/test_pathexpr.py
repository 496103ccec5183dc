"""The FHIRPath subset of R4 search-parameter expressions, compiled against the R4 model."""

from __future__ import annotations

from typing import Any

import pytest

from nara.fhir.pathexpr import (
    Compiler,
    UnsupportedExpression,
    evaluate,
    parse,
    reference_type,
    split_union,
)
from nara.fhir.spec import spec


@pytest.fixture(scope="module")
def compiler() -> Compiler:
    return Compiler(spec())


def values(compiler: Compiler, expr: str, res: dict[str, Any]) -> list[Any]:
    fn = compiler.compile(expr, res["resourceType"])
    assert fn is not None
    return [v for v, _ in evaluate(fn, res, res["resourceType"])]


def shapes(compiler: Compiler, expr: str, res: dict[str, Any]) -> list[str]:
    fn = compiler.compile(expr, res["resourceType"])
    assert fn is not None
    return [s[0] for _, s in evaluate(fn, res, res["resourceType"])]


OBS: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
    "subject": {"reference": "Patient/p1"},
    "effectivePeriod": {"start": "2026-01-01"},
    "component": [
        {"code": {"text": "sys"}, "valueQuantity": {"value": 120}},
        {"code": {"text": "dia"}, "valueQuantity": {"value": 80}},
        {"code": {"text": "note"}, "valueString": "x"},
    ],
    "contained": [{"resourceType": "Patient", "id": "c1"}],
    "performer": [{"reference": "#c1"}, {"reference": "Practitioner/d1"}],
}


def test_simple_paths_flatten_arrays(compiler: Compiler) -> None:
    assert values(compiler, "Observation.status", OBS) == ["final"]
    assert values(compiler, "Observation.code.coding.code", OBS) == ["85354-9"]
    assert values(compiler, "Observation.component.code.text", OBS) == ["sys", "dia", "note"]


def test_choice_elements_are_resolved_with_their_types(compiler: Compiler) -> None:
    assert shapes(compiler, "Observation.effective", OBS) == ["Period"]
    assert values(compiler, "(Observation.component.value as Quantity).value", OBS) == [120, 80]
    assert values(compiler, "Observation.component.value.ofType(string)", OBS) == ["x"]
    assert values(compiler, "Observation.component.value.as(Quantity).value", OBS) == [120, 80]


def test_union_and_indexer(compiler: Compiler) -> None:
    assert values(compiler, "Observation.status | Observation.component[1].code.text", OBS) == ["final", "dia"]


def test_where_resolve_is_checks_the_reference_type_including_contained(compiler: Compiler) -> None:
    got = values(compiler, "Observation.performer.where(resolve() is Patient)", OBS)
    assert got == [{"reference": "#c1"}]
    got = values(compiler, "Observation.performer.where(resolve() is Practitioner)", OBS)
    assert got == [{"reference": "Practitioner/d1"}]


def test_where_field_equals_literal(compiler: Compiler) -> None:
    pat = {
        "resourceType": "Patient",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
    }
    assert values(compiler, "Patient.telecom.where(system='email')", pat) == [{"system": "email", "value": "a@b"}]


def test_branches_for_other_types_do_not_apply(compiler: Compiler) -> None:
    assert compiler.compile("Patient.name | Practitioner.name", "Practitioner") is not None
    assert compiler.compile("Patient.name", "Practitioner") is None


def test_unsupported_expressions_raise(compiler: Compiler) -> None:
    for expr in ("Observation.code.exists()", "%resource.id", "Patient.name.first()"):
        with pytest.raises(UnsupportedExpression):
            compiler.compile(expr, expr.split(".")[0].lstrip("%") or "Observation")


def test_unknown_element_gives_no_evaluator(compiler: Compiler) -> None:
    assert compiler.compile("Observation.nonsense", "Observation") is None


def test_root_keys_name_the_json_properties_read(compiler: Compiler) -> None:
    assert compiler.root_keys("Observation.effective", "Observation") == {
        "effectiveDateTime",
        "effectivePeriod",
        "effectiveTiming",
        "effectiveInstant",
    }
    assert compiler.root_keys("Observation.code | Observation.component.code", "Observation") == {
        "code",
        "component",
    }
    assert compiler.root_keys("(Observation.value as Quantity)", "Observation") == {
        "valueQuantity",
        "valueCodeableConcept",
        "valueString",
        "valueBoolean",
        "valueInteger",
        "valueRange",
        "valueRatio",
        "valueSampledData",
        "valueTime",
        "valueDateTime",
        "valuePeriod",
    }
    assert compiler.root_keys("Resource.meta.tag", "Observation") == {"meta"}
    assert compiler.root_keys("Observation", "Observation") is None
    assert compiler.root_keys("Patient.name", "Observation") == frozenset()


def test_split_union_respects_parentheses_and_literals() -> None:
    assert split_union("A.b | (A.c | A.d) | A.e.where(x='|')") == ["A.b", "(A.c | A.d)", "A.e.where(x='|')"]


def test_parse_builds_a_tree() -> None:
    node = parse("Observation.subject.where(resolve() is Patient)")
    assert node.head == "Observation" and len(node.steps) == 2


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        ("Patient/1", "Patient"),
        ("http://x.se/fhir/Patient/1", "Patient"),
        ("Patient/1/_history/2", "Patient"),
        ("Patient?identifier=x|1", "Patient"),
        ("urn:uuid:1234", None),
        ("1", None),
    ],
)
def test_reference_type(ref: str, expected: str | None) -> None:
    assert reference_type(ref) == expected


def test_reference_type_of_contained() -> None:
    assert reference_type("#c1", OBS) == "Patient"
    assert reference_type("#nope", OBS) is None
