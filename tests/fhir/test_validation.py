"""Structural R4 validation: each kind of violation is found and its ``expression`` points at it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nara.fhir.outcome import FhirError
from nara.fhir.validation import check, validate
from tests.server.test_rest_interactions import bp, patient


def problems(res: Any, expected_type: str | None = None) -> list[tuple[str, str]]:
    """(code, expression) of every issue."""
    out = []
    for issue in validate(res, expected_type):
        assert issue.severity == "error" and issue.diagnostics
        assert len(issue.expression) == 1
        out.append((issue.code, issue.expression[0]))
    return out


def changed(res: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of ``res`` with the value at a dotted path (``a.0.b``) set; ``...`` deletes it."""
    out = copy.deepcopy(res)
    node: Any = out
    keys = [int(k) if k.isdigit() else k for k in path.split(".")]
    for k in keys[:-1]:
        node = node[k]
    if value is ...:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return out


OBS = bp("p1")
PAT = patient()


def test_valid_resources_have_no_issues() -> None:
    assert validate(OBS) == []
    assert validate(PAT) == []
    full = {
        **PAT,
        "id": "p-1.A",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-01T08:00:00.123+01:00", "profile": ["http://x/y"]},
        "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Anna</div>'},
        "_birthDate": {"extension": [{"url": "http://example.org/t", "valueTime": "08:30:00"}]},
        "deceasedBoolean": False,
        "contained": [{"resourceType": "Organization", "id": "org", "name": "Vårdcentralen"}],
        "managingOrganization": {"reference": "#org"},
        "multipleBirthInteger": 2,
    }
    assert validate(full) == []


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        pytest.param(changed(PAT, "nickname", "Annie"), [("structure", "Patient.nickname")], id="unknown top element"),
        pytest.param(
            changed(PAT, "name.0.nick", "A"), [("structure", "Patient.name[0].nick")], id="unknown nested element"
        ),
        pytest.param(
            changed(OBS, "component.1.valueQuantity.units", "mmHg"),
            [("structure", "Observation.component[1].valueQuantity.units")],
            id="unknown element in a datatype",
        ),
        pytest.param(
            changed(PAT, "_gender", 1), [("structure", "Patient._gender")], id="primitive extension not an object"
        ),
        pytest.param(
            changed(PAT, "_name", {"id": "x"}), [("structure", "Patient._name")], id="underscore on a complex element"
        ),
    ],
)
def test_unknown_elements_are_reported_at_their_path(res: dict, expected: list) -> None:
    assert problems(res) == expected


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        pytest.param(changed(PAT, "active", "yes"), [("value", "Patient.active")], id="boolean as string"),
        pytest.param(changed(PAT, "birthDate", 19121212), [("value", "Patient.birthDate")], id="date as number"),
        pytest.param(
            changed(OBS, "component.0.valueQuantity.value", "135"),
            [("value", "Observation.component[0].valueQuantity.value")],
            id="decimal as string",
        ),
        pytest.param(
            changed(PAT, "multipleBirthInteger", 1.5),
            [("value", "Patient.multipleBirthInteger")],
            id="integer as float",
        ),
        pytest.param(
            changed(PAT, "multipleBirthInteger", True),
            [("value", "Patient.multipleBirthInteger")],
            id="integer as bool",
        ),
        pytest.param(changed(OBS, "code", "85354-9"), [("structure", "Observation.code")], id="complex as string"),
        pytest.param(
            changed(PAT, "contained", [{"resourceType": "Nope"}]),
            [("structure", "Patient.contained[0]")],
            id="unknown contained type",
        ),
    ],
)
def test_wrong_datatypes_are_reported(res: dict, expected: list) -> None:
    assert problems(res) == expected


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        pytest.param(changed(PAT, "name", {"family": "A"}), [("structure", "Patient.name")], id="single where array"),
        pytest.param(changed(PAT, "gender", ["female"]), [("structure", "Patient.gender")], id="array where single"),
        pytest.param(changed(PAT, "name", []), [("structure", "Patient.name")], id="empty array"),
        pytest.param(changed(PAT, "gender", None), [("structure", "Patient.gender")], id="null value"),
        pytest.param(
            changed(PAT, "name.0.given", ["Anna", None]),
            [("structure", "Patient.name[0].given[1]")],
            id="null in array",
        ),
        pytest.param(changed(PAT, "name.0", {}), [("structure", "Patient.name[0]")], id="empty object"),
    ],
)
def test_cardinality_shape_is_enforced(res: dict, expected: list) -> None:
    assert problems(res) == expected


def test_null_array_item_with_matching_extension_is_allowed() -> None:
    res = changed(PAT, "name.0.given", ["Anna", None])
    res["name"][0]["_given"] = [None, {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}]
    assert problems(res) == []


@pytest.mark.parametrize(
    ("res", "expected"),
    [
        pytest.param(changed(OBS, "status", ...), [("required", "Observation.status")], id="top level"),
        pytest.param(
            changed(OBS, "component.1.code", ...), [("required", "Observation.component[1].code")], id="in a backbone"
        ),
        pytest.param(
            changed(PAT, "extension", [{"valueString": "x"}]),
            [("required", "Patient.extension[0].url")],
            id="in a datatype",
        ),
        pytest.param(
            {"resourceType": "Observation", "status": "final"},
            [("required", "Observation.code")],
            id="only one missing",
        ),
    ],
)
def test_required_elements_are_enforced(res: dict, expected: list) -> None:
    assert problems(res) == expected


def test_required_primitive_may_be_given_by_its_extension_only() -> None:
    res = changed(OBS, "status", ...)
    res["_status"] = {
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}]
    }
    assert problems(res) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("birthDate", "1912-13-01"),
        ("birthDate", "12-12-1912"),
        ("birthDate", "1912-12-12T00:00:00Z"),
        ("deceasedDateTime", "2026-11-01T08:00:00"),  # a time needs a zone
        ("deceasedDateTime", "2026-11-01 08:00:00Z"),
        ("id", "has space"),
        ("id", "x" * 65),
        ("gender", " female"),
        ("gender", ""),
        ("name.0.family", ""),
        ("multipleBirthInteger", 2**31),
        ("meta", {"lastUpdated": "2026-11-01T08:00Z"}),  # an instant needs seconds
        ("meta", {"lastUpdated": "2026-11-01"}),
        ("meta", {"versionId": "a b"}),
        ("meta", {"profile": ["not a uri with spaces"]}),
        ("text", {"status": "generated", "div": "plain text"}),
        ("photo", [{"data": 42}]),
        ("communication", [{"language": {"text": "sv"}, "preferred": "true"}]),
    ],
)
def test_primitive_formats_are_checked(path: str, value: Any) -> None:
    found = problems(changed(PAT, path, value))
    assert found, f"{path}={value!r} should be rejected"
    expected_prefix = "Patient." + path.split(".")[0]
    assert all(expr.startswith(expected_prefix) for _, expr in found), found


@pytest.mark.parametrize(
    ("res", "code", "expression"),
    [
        (changed(OBS, "issued", "2026-11-01T08:00:00+01:00"), None, None),
        (changed(OBS, "valueTime", "25:00:00"), "value", "Observation.valueTime"),
        (changed(OBS, "valueInteger", 0), None, None),
        (changed(PAT, "photo", [{"size": -1}]), "value", "Patient.photo[0].size"),
        (changed(PAT, "photo", [{"size": 0}]), None, None),
        (
            changed(OBS, "valueSampledData", {"origin": {"value": 1}, "period": 1, "dimensions": 0, "data": "1"}),
            "value",
            "Observation.valueSampledData.dimensions",
        ),
    ],
)
def test_numeric_and_time_primitives(res: dict, code: str | None, expression: str | None) -> None:
    assert problems(res) == ([] if code is None else [(code, expression)])


def test_choice_element_takes_exactly_one_type() -> None:
    res = {**OBS, "valueQuantity": {"value": 1}, "valueString": "one"}
    assert problems(res) == [("structure", "Observation.valueString")]
    assert problems({**OBS, "valueString": "one"}) == []
    assert problems({**OBS, "valueStrin": "one"}) == [("structure", "Observation.valueStrin")]
    assert problems({**OBS, "value": "one"}) == [("structure", "Observation.value")]
    effective = {**OBS, "effectivePeriod": {"start": "2026-11-01"}}
    assert problems(effective) == [("structure", "Observation.effectivePeriod")]


@pytest.mark.parametrize(
    ("res", "expression"),
    [
        (changed(PAT, "gender", "kvinna"), "Patient.gender"),
        (changed(OBS, "status", "done"), "Observation.status"),
        (changed(PAT, "name.0.use", "nick"), "Patient.name[0].use"),
        (
            changed(OBS, "component.0.valueQuantity.comparator", "=<"),
            "Observation.component[0].valueQuantity.comparator",
        ),
    ],
)
def test_required_binding_codes_are_checked(res: dict, expression: str) -> None:
    assert problems(res) == [("code-invalid", expression)]


def test_codes_outside_required_bindings_are_free() -> None:
    assert problems(changed(OBS, "code.coding.0.code", "any-local-code")) == []


def test_reference_target_types_follow_the_definition() -> None:
    assert problems(changed(OBS, "subject", {"reference": "Medication/m1"})) == [
        ("invalid", "Observation.subject.reference")
    ]
    assert problems(changed(OBS, "subject", {"reference": "Group/g1"})) == []
    assert problems(changed(OBS, "subject", {"reference": "urn:uuid:1"})) == []
    assert problems(changed(OBS, "focus", [{"reference": "Medication/m1"}])) == []  # Reference(Any)


def test_resource_type_and_id_consistency() -> None:
    assert problems({"gender": "female"}) == [("structure", "")]
    assert problems({"resourceType": "Patientt"}) == [("structure", "")]
    assert problems([PAT]) == [("structure", "")]
    assert problems(PAT, "Observation") == [("invalid", "")]
    assert problems({**PAT, "id": "ok-id"}, "Patient") == []
    bad_id = problems({**PAT, "id": "bad/id"})
    assert bad_id and all(expr == "Patient.id" for _, expr in bad_id)
    assert problems({**PAT, "resourceType": "Patient", "id": 12}) and all(
        expr == "Patient.id" for _, expr in problems({**PAT, "id": 12})
    )


def test_contained_and_nested_resources_are_validated_with_their_paths() -> None:
    res = {
        **PAT,
        "contained": [
            {"resourceType": "Organization", "id": "o1", "name": "ok"},
            {"resourceType": "Practitioner", "id": "pr", "gender": "x", "colour": "blue"},
        ],
    }
    assert problems(res) == [
        ("code-invalid", "Patient.contained[1].gender"),
        ("structure", "Patient.contained[1].colour"),
    ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [{"resource": PAT}, {"resource": changed(OBS, "status", "done")}],
    }
    assert problems(bundle) == [("code-invalid", "Bundle.entry[1].resource.status")]
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "p", "resource": {"resourceType": "Patient", "x": 1}}],
    }
    assert problems(params) == [("structure", "Parameters.parameter[0].resource.x")]


def test_every_problem_is_reported_up_to_a_limit() -> None:
    res = {**PAT, **{f"unknown{i}": i for i in range(80)}}
    assert len(validate(res)) == 50


def test_check_raises_400_with_all_issues() -> None:
    with pytest.raises(FhirError) as e:
        check({**PAT, "gender": "x", "foo": 1})
    assert e.value.status == 400
    body = e.value.outcome()
    assert [i["expression"] for i in body["issue"]] == [["Patient.gender"], ["Patient.foo"]]
    check(PAT)  # valid: returns without raising


def test_very_deep_nesting_is_a_structure_error_not_a_crash() -> None:
    node: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(2000):
        node = {"url": "http://example.org/x", "extension": [node]}
    assert problems({**PAT, "extension": [node]}) == [("structure", "Patient")]


PNR_URI = "http://electronichealth.se/identifier/personnummer"
SNR_URI = "http://electronichealth.se/identifier/samordningsnummer"
HSA = "urn:oid:1.2.752.29.4.19"


def test_r_id_1_every_personal_identity_number_is_stored_in_twelve_digits_under_its_uri() -> None:
    """Wherever an Identifier is (the Patient's own, a Reference's, an extension's value, a contained
    resource's), a personnummer written with a hyphen, in ten digits or under the RIV OID is stored as 12 digits
    under the HL7 Sweden URI; other identifiers are left as written."""
    res = {
        **OBS,
        "subject": {"identifier": {"system": "urn:oid:1.2.752.129.2.1.3.1", "value": "19121212-1212"}},
        "performer": [{"identifier": {"system": "urn:oid:1.2.752.129.2.1.4.1", "value": " se2321000016-abc1 "}}],
        "extension": [
            {
                "url": "http://example.org/fhir/StructureDefinition/reporter",
                "valueIdentifier": {"system": "1.2.752.129.2.1.3.3", "value": "701063-2391"},
            }
        ],
        "contained": [
            {
                "resourceType": "Patient",
                "id": "p",
                "identifier": [
                    {"use": "official", "system": PNR_URI, "value": "121212+1212"},  # "+": over 100
                    {"system": "http://example.org/mrn", "value": "12-34 x"},
                ],
            }
        ],
    }
    check(res)
    assert res["subject"]["identifier"] == {"system": PNR_URI, "value": "191212121212"}
    assert res["performer"][0]["identifier"] == {"system": HSA, "value": " se2321000016-abc1 "}  # its system only
    assert res["extension"][0]["valueIdentifier"] == {"system": SNR_URI, "value": "197010632391"}
    assert res["contained"][0]["identifier"] == [
        {"use": "official", "system": PNR_URI, "value": "191212121212"},
        {"system": "http://example.org/mrn", "value": "12-34 x"},
    ]


@pytest.mark.parametrize(
    ("system", "value"),
    [
        (PNR_URI, "191212121213"),  # the Luhn check fails
        ("urn:oid:1.2.752.129.2.1.3.1", "19121212-1219"),
        (PNR_URI, "19121312-1212"),  # month 13
        (PNR_URI, "197010632391"),  # a samordningsnummer under the personnummer's system
        (SNR_URI, "191212121212"),  # and the reverse
        (PNR_URI, "Tolvan"),
        ("1.2.752.129.2.1.3.3", "19121212-1212"),
    ],
)
def test_r_id_1_a_wrong_personal_identity_number_is_refused_at_its_path_and_nothing_is_changed(
    system: str, value: str
) -> None:
    pat = {**PAT, "identifier": [{"system": PNR_URI, "value": "19121212-1212"}, {"system": system, "value": value}]}
    before = copy.deepcopy(pat)
    assert problems(pat) == [("value", "Patient.identifier[1].value")]
    with pytest.raises(FhirError) as e:
        check(pat)
    assert e.value.status == 400 and value.strip()[:12] in e.value.outcome()["issue"][0]["diagnostics"]
    assert pat == before  # the valid number beside it was not rewritten either


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=20,
)
ELEMENT_NAMES = st.sampled_from(
    [
        "status",
        "code",
        "subject",
        "component",
        "valueQuantity",
        "valueString",
        "effectiveDateTime",
        "_status",
        "id",
        "meta",
        "contained",
        "extension",
        "text",
        "x",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(ELEMENT_NAMES, JSON_VALUES, max_size=6))
def test_arbitrary_json_never_crashes_and_every_issue_points_inside_the_resource(changes: dict[str, Any]) -> None:
    res = {**OBS, **changes}
    issues = validate(res)
    for issue in issues:
        assert issue.expression[0].startswith("Observation"), issue
    if not changes:
        assert issues == []
