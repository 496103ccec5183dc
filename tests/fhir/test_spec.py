"""The generated R4 model (``src/nara/fhir/spec/r4.json.gz``) is R4 4.0.1 exactly.

Compared with the official StructureDefinitions and the Patient CompartmentDefinition in the HL7
package ``hl7.fhir.r4.examples@4.0.1`` (fetched once into var/cache/, see tests/test_external_data.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from nara.fhir.spec import spec
from tests.test_external_data import _fetch_examples


@pytest.fixture(scope="module")
def official() -> Path:
    return _fetch_examples()


def definitions(folder: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for name in ("Bundle-types.json", "Bundle-resources.json"):
        for e in orjson.loads((folder / name).read_bytes())["entry"]:
            sd = e["resource"]
            if sd["resourceType"] == "StructureDefinition" and sd.get("derivation") == "specialization":
                out[sd["type"]] = sd
    return out


def test_resource_types_are_exactly_those_of_r4(official: Path) -> None:
    sds = definitions(official)
    r4 = {t for t, sd in sds.items() if sd["kind"] == "resource" and not sd.get("abstract")}
    assert len(r4) == 146
    assert spec().resource_types == r4


def test_every_element_has_the_official_cardinality_and_types(official: Path) -> None:
    sp = spec()
    for tname, sd in definitions(official).items():
        if sd["kind"] not in ("resource", "complex-type"):
            continue
        ours = sp.types[tname].raw["elements"]
        official_paths = {}
        for el in sd["snapshot"]["element"][1:]:
            if el.get("max") == "0":
                continue
            path = el["path"][len(sd["type"]) + 1 :]
            official_paths[path] = el
        assert set(ours) == set(official_paths), tname
        for path, el in official_paths.items():
            mine = ours[path]
            assert (mine["min"], mine["max"]) == (el["min"], el["max"]), f"{tname}.{path}"
            if "contentReference" not in el:
                assert len(mine["t"]) == len(el.get("type", [])), f"{tname}.{path}"


def test_patient_compartment_is_r4_plus_the_documented_task_addition(official: Path) -> None:
    comp = orjson.loads((official / "CompartmentDefinition-patient.json").read_bytes())
    r4 = {x["code"]: tuple(x["param"]) for x in comp["resource"] if x.get("param")}
    ours = dict(spec().patient_compartment)
    assert ours.pop("Task") == ("patient", "focus")  # tools/gen_r4_spec.py LOCAL_COMPARTMENT_ADDITIONS
    assert ours == r4


def test_required_bindings_carry_the_r4_codes() -> None:
    sp = spec()
    assert sp.context("Observation", "")["status"].codes == frozenset(
        {"registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"}
    )
    assert sp.context("DetectedIssue", "")["status"].codes == sp.context("Observation", "")["status"].codes
    assert sp.context("Patient", "")["gender"].codes == frozenset({"male", "female", "other", "unknown"})
    assert sorted(k for k in sp.context("Observation", "") if k.startswith("value")) == [
        "valueBoolean",
        "valueCodeableConcept",
        "valueDateTime",
        "valueInteger",
        "valuePeriod",
        "valueQuantity",
        "valueRange",
        "valueRatio",
        "valueSampledData",
        "valueString",
        "valueTime",
    ]
    assert set(sp.context("Meta", "")) == {
        "id",
        "extension",
        "versionId",
        "lastUpdated",
        "source",
        "profile",
        "security",
        "tag",
    }
