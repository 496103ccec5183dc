"""Parsing FHIR search query strings (R4 search.html): values, modifiers, chains, result parameters."""

from __future__ import annotations

import pytest

from nara.fhir.outcome import FhirError
from nara.fhir.query import (
    QueryParser,
    SearchQuery,
    common_params,
    parse_pairs,
    split_escaped,
    split_prefix,
    split_values,
)


def parse(rtype: str | None, query: str, strict: bool = True, **kw: int) -> SearchQuery:
    return QueryParser(**kw).parse(rtype, parse_pairs(query), strict=strict)


def test_split_values_honours_escapes() -> None:
    assert split_values("a,b") == ["a", "b"]
    assert split_values(r"a\,b,c") == [r"a\,b", "c"]
    assert split_escaped(r"sys|a\|b", "|") == ["sys", r"a\|b"]
    assert split_escaped("8480-6$gt140", "$") == ["8480-6", "gt140"]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("gt2026", ("gt", "2026")), ("2026", ("eq", "2026")), ("ap-5", ("ap", "-5")), ("eq.5", ("eq", ".5"))],
)
def test_split_prefix(raw: str, expected: tuple[str, str]) -> None:
    assert split_prefix(raw) == expected


def test_prefix_looking_words_are_values() -> None:
    assert split_prefix("gtx") == ("eq", "gtx")


def test_criteria_are_typed_and_or_values_kept_together() -> None:
    q = parse("Patient", "name=a,b&birthdate=ge1950&gender:not=male")
    assert [(c.param, c.type, c.modifier, c.values) for c in q.criteria] == [
        ("name", "string", None, ["a", "b"]),
        ("birthdate", "date", None, ["ge1950"]),
        ("gender", "token", "not", ["male"]),
    ]


def test_chain_builds_nested_criteria_per_target_type() -> None:
    q = parse("Observation", "subject:Patient.organization.name=x")
    c = q.criteria[0]
    assert c.param == "subject" and c.target_types == ("Patient",)
    inner = c.chain["Patient"]
    assert inner.param == "organization" and inner.chain["Organization"].param == "name"


def test_chain_without_type_modifier_uses_targets_that_know_the_parameter() -> None:
    c = parse("Observation", "subject.name=x").criteria[0]
    assert set(c.target_types) == {"Patient", "Group", "Device", "Location"} & set(c.chain)
    assert "Patient" in c.chain


def test_has_nests() -> None:
    c = parse("Patient", "_has:Observation:patient:_has:Provenance:target:agent=Organization/1").criteria[0]
    assert (c.has_type, c.has_param) == ("Observation", "patient")
    inner = c.chain["Observation"]
    assert (inner.has_type, inner.has_param) == ("Provenance", "target")


def test_chain_depth_limit() -> None:
    with pytest.raises(FhirError) as e:
        parse("Observation", "subject:Patient.organization.partof.name=x", max_chain_depth=1)
    assert e.value.code == "too-costly"


def test_or_value_limit_per_parameter_and_query() -> None:
    with pytest.raises(FhirError):
        parse("Patient", "name=" + ",".join("abc"), max_or_values=2)
    with pytest.raises(FhirError):
        parse("Patient", "name=a&family=b&given=c", max_or_values=2)
    assert len(parse("Patient", "name=a&family=b", max_or_values=2).criteria) == 2


def test_result_parameters() -> None:
    q = parse(
        "Observation",
        "_count=5&_sort=-date,code&_include=Observation:patient&_revinclude:iterate=Provenance:target"
        "&_summary=data&_elements=code,subject&_total=accurate",
    )
    assert q.count == 5
    assert [(s.param, s.type, s.descending) for s in q.sort] == [("date", "date", True), ("code", "token", False)]
    assert [(i.source_type, i.param, i.reverse, i.iterate) for i in q.includes] == [
        ("Observation", "patient", False, False),
        ("Provenance", "target", True, True),
    ]
    assert q.summary == "data" and q.elements == ["code", "subject"] and q.total == "accurate"
    assert q.criteria == []


@pytest.mark.parametrize(
    "query",
    [
        "_count=-1",
        "_count=many",
        "_summary=maybe",
        "_total=some",
        "_include=Observation",
        "_include=Nope:x",
        "_include=Observation:code",
        "_sort=nonsense",
        "_contained=true",
        "_type=Nope",
        "code:below=x",
        "code:of-type=x",
        "subject:Nope=1",
        "code:missing=yes",
        "code=",
    ],
)
def test_invalid_parameters_are_400_when_strict(query: str) -> None:
    with pytest.raises(FhirError) as e:
        parse("Observation", query)
    assert e.value.status == 400


def test_lenient_parsing_keeps_good_criteria_and_warns() -> None:
    q = parse("Patient", "name=a&shoe=1&gender:below=x", strict=False)
    assert [c.param for c in q.criteria] == ["name"]
    assert [i.severity for i in q.issues] == ["warning", "warning"]


def test_type_is_read_before_the_criteria() -> None:
    q = parse(None, "name=berg&_type=Patient")
    assert q.types == ["Patient"] and q.criteria[0].type == "string"


def test_common_params_of_several_types() -> None:
    both = common_params(("Patient", "Practitioner"))
    assert {"name", "family", "identifier", "_tag"} <= set(both)
    assert "gender" in both and "birthdate" not in both
    assert set(common_params()) >= {"_tag", "_security", "_profile", "_source"}
