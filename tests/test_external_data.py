"""Round trip of externally written FHIR R4 data, on SQLite and PostgreSQL.

- The 40 Synthea transaction Bundles in ``../shared/data/synthea-r4/`` (skipped cleanly when absent):
  loaded through ``nara import`` (the real CLI, in a subprocess) and through POST of each transaction
  over HTTP; every resource must read back equal to the original, apart from the server-managed
  ``meta.versionId``/``meta.lastUpdated``, the server-assigned ids and the references the server
  rewrote from ``urn:uuid:`` to those ids.
- The official R4 examples (npm package ``hl7.fhir.r4.examples@4.0.1``: 720 ordinary examples and
  4,586 conformance resources), fetched once with ``npm pack`` into ``var/cache/`` (not committed).
  Every example the validator accepts is stored under its own id and must read back equal; the few
  official examples that violate R4 are listed with the validator's reasons, so any change shows.

Numbers are compared as decimals: JSON is parsed with orjson, so a stored decimal keeps its value but
not its trailing zeros (``1.50`` reads back as ``1.5``); see docs/api.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter, defaultdict
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import false, select

from nara.config import Settings
from nara.fhir.validation import validate
from nara.store.database import json_out
from nara.store.schema import resource
from nara.store.store import Store
from tests.conftest import LiveServer, shared_data_dir

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "cache"
EXAMPLES_PACKAGE = "hl7.fhir.r4.examples@4.0.1"
EXAMPLES_DIR = CACHE / "hl7.fhir.r4.examples-4.0.1"
CONFORMANCE_TYPES = frozenset(
    {
        "CapabilityStatement",
        "CodeSystem",
        "CompartmentDefinition",
        "ConceptMap",
        "ImplementationGuide",
        "NamingSystem",
        "OperationDefinition",
        "SearchParameter",
        "StructureDefinition",
        "GraphDefinition",
        "MessageDefinition",
        "StructureMap",
        "TerminologyCapabilities",
        "ValueSet",
    }
)
NARA = [sys.executable, "-m", "nara.cli"]

# Official examples the validator rejects, with the first reason. Each is a genuine R4 violation.
REJECTED_EXAMPLES = {
    # Ordinary examples
    "DeviceMetric-example.json": ("DeviceMetric.parent.reference", "Reference to DeviceDefinition is not allowed"),
    "DeviceUseStatement-example.json": (
        "DeviceUseStatement.reasonReference[0].reference",
        "Reference to Procedure is not allowed",
    ),
    "MedicationRequest-medrx0301.json": (
        "MedicationRequest.dispenseRequest.performer.reference",
        "Reference to Practitioner is not allowed",
    ),
    "Observation-clinical-gender.json": ("Observation.performer[0].reference", "Reference to Encounter is not allowed"),
    "Questionnaire-qs1.json": ("Questionnaire.item[0].item[0].linkId", "Missing required element 'linkId'"),
    # A Bundle (so counted among the 720) of the v2 code systems: a code that is a no-break space.
    "Bundle-v2-valuesets.json": ("Bundle.entry[814].resource.concept[444].code", "Empty or blank value for code"),
    # Conformance resources
    "CodeSystem-v2-0550.json": ("CodeSystem.concept[444].code", "Empty or blank value for code"),
    "ImplementationGuide-fhir.json": ("ImplementationGuide.name", "Missing required element 'name'"),
    "ig-r4.json": ("ImplementationGuide.name", "Missing required element 'name'"),
    "SearchParameter-questionnaireresponse-extensions-QuestionnaireResponse-item-subject.json": (
        "SearchParameter.id",
        "Resource id must be 1-64 characters",
    ),
    **{
        f"SearchParameter-{kind}-extensions-{rtype}-{code}.json": (
            "SearchParameter.base",
            "Missing required element 'base'",
        )
        for kind, rtype in (("codesystem", "CodeSystem"), ("valueset", "ValueSet"))
        for code in ("author", "effective", "end", "keyword", "workflow")
    },
}


# ---- comparison ------------------------------------------------------------------------------
def decimal_json(raw: bytes | str) -> Any:
    """JSON with every non-integer number as a Decimal, so that equality is exact and numeric."""
    return json.loads(raw, parse_float=Decimal)


def without_server_meta(res: dict[str, Any]) -> dict[str, Any]:
    out = dict(res)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k not in ("versionId", "lastUpdated")}
    if meta:
        out["meta"] = meta
    return out


def map_references(node: Any, fn: Any) -> Any:
    if isinstance(node, dict):
        return {
            k: (fn(v) if k == "reference" and isinstance(v, str) else map_references(v, fn)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [map_references(x, fn) for x in node]
    return node


def canonical(node: Any) -> str:
    return json.dumps(node, sort_keys=True, default=lambda d: str(Decimal(d).normalize()))


def stored_resources(store: Store) -> list[dict[str, Any]]:
    with store.engine.connect() as conn:
        rows = conn.execute(select(json_out(resource.c.content, store.postgres)).where(resource.c.deleted == false()))
        return [decimal_json(content) for (content,) in rows]


# ---- Synthea ---------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def synthea_files() -> list[Path]:
    folder = shared_data_dir() / "synthea-r4"
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    if not files:
        pytest.skip(f"no Synthea bundles in {folder} (shared data is not on this machine)")
    return files


def synthea_originals(files: list[Path]) -> list[list[tuple[str, dict[str, Any]]]]:
    """Per bundle, (fullUrl, resource) of every entry."""
    return [[(e["fullUrl"], e["resource"]) for e in decimal_json(f.read_bytes())["entry"]] for f in files]


def test_synthea_bundles_round_trip_through_http_transactions(
    fhir: httpx.Client, store: Store, synthea_files: list[Path]
) -> None:
    expected: dict[str, dict[str, Any]] = {}  # "Type/id" -> the original as the server should store it
    for path in synthea_files:
        r = fhir.post("", content=path.read_bytes(), headers={"Content-Type": "application/fhir+json"})
        assert r.status_code == 200, f"{path.name}: {r.text[:500]}"
        response = r.json()["entry"]
        original = decimal_json(path.read_bytes())["entry"]
        assert len(response) == len(original)
        ids: dict[str, str] = {}
        for e, got in zip(original, response, strict=True):
            assert got["response"]["status"] == "201 Created", (path.name, got)
            rtype, rid = got["response"]["location"].split("/")[:2]
            assert rtype == e["resource"]["resourceType"]
            ids[e["fullUrl"]] = f"{rtype}/{rid}"
        for e in original:
            identity = ids[e["fullUrl"]]
            res = dict(e["resource"], id=identity.split("/")[1])
            expected[identity] = without_server_meta(map_references(res, lambda ref, ids=ids: ids.get(ref, ref)))
    stored = {f"{r['resourceType']}/{r['id']}": without_server_meta(r) for r in stored_resources(store)}
    assert stored.keys() == expected.keys()
    for identity, res in expected.items():
        assert stored[identity] == res, f"{identity} differs from its original"
    for identity in list(expected)[:: max(1, len(expected) // 50)]:  # and a sample read back over HTTP
        assert without_server_meta(decimal_json(fhir.get(identity).content)) == expected[identity]


def test_synthea_bundles_round_trip_through_nara_import(
    live_server: LiveServer, store: Store, synthea_files: list[Path]
) -> None:
    """Every resource imported by the CLI reads back equal to its original.

    The CLI does not report the ids it assigned, so originals and stored resources are paired by
    content: first with every reference blanked (which must give the same multiset on both sides),
    then the references are checked through that pairing. Resources whose content is identical
    apart from references (Synthea repeats a few claims and organisations) are compared as groups.
    """
    run = subprocess.run(
        [*NARA, "import", "--no-dedupe", "--database-url", live_server.backend.url, *map(str, synthea_files)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 0, run.stdout + run.stderr
    originals = synthea_originals(synthea_files)
    count = sum(len(b) for b in originals)
    assert "Import summary" in run.stdout and f" {count} " in run.stdout, run.stdout

    def blank_key(res: dict[str, Any]) -> str:
        plain = {k: v for k, v in without_server_meta(res).items() if k != "id"}
        return canonical(map_references(plain, lambda _: ""))

    stored = stored_resources(store)
    assert len(stored) == count
    stored_groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for res in stored:
        stored_groups[blank_key(res)].append(res)
    original_groups: dict[str, list[tuple[int, str, dict[str, Any]]]] = defaultdict(list)
    for b, entries in enumerate(originals):
        for full_url, res in entries:
            original_groups[blank_key(res)].append((b, full_url, res))
    assert Counter({k: len(v) for k, v in stored_groups.items()}) == Counter(
        {k: len(v) for k, v in original_groups.items()}
    ), "stored content differs from the originals (references aside)"
    # Pair unique contents; twins are represented by their group.
    target: dict[tuple[int, str], str] = {}  # (bundle, fullUrl) -> "Type/id" or a group token
    group_of_id: dict[str, str] = {}
    for key, group in original_groups.items():
        twins = stored_groups[key]
        for (b, full_url, _), res in zip(group, twins, strict=True):
            ident = f"{res['resourceType']}/{res['id']}"
            if len(group) == 1:
                target[(b, full_url)] = ident
            else:
                target[(b, full_url)] = group_of_id[ident] = f"group:{key[:60]}:{hash(key)}"
    for key, group in original_groups.items():
        expected = Counter(
            canonical(
                map_references(
                    {k: v for k, v in without_server_meta(res).items() if k != "id"},
                    lambda ref, b=b: target.get((b, ref), ref),
                )
            )
            for b, _, res in group
        )
        got = Counter(
            canonical(
                map_references(
                    {k: v for k, v in without_server_meta(res).items() if k != "id"},
                    lambda ref: group_of_id.get(ref, ref),
                )
            )
            for res in stored_groups[key]
        )
        assert got == expected, f"references differ for {key[:200]}"


# ---- official R4 examples --------------------------------------------------------------------
def _fetch_examples() -> Path:
    """The unpacked example package, fetched once with ``npm pack`` into var/cache/."""
    if (EXAMPLES_DIR / "package" / "package.json").exists():
        return EXAMPLES_DIR / "package"
    npm = shutil.which("npm")
    problem = None
    if npm is None:
        problem = "npm is not installed"
    else:
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            run = subprocess.run(
                [npm, "pack", EXAMPLES_PACKAGE, "--silent"], cwd=tmp, capture_output=True, text=True, timeout=300
            )
            tgz = next(Path(tmp).glob("*.tgz"), None)
            if run.returncode != 0 or tgz is None:
                problem = f"`npm pack {EXAMPLES_PACKAGE}` failed: {(run.stderr or run.stdout).strip()[:300]}"
            else:
                unpacked = Path(tmp) / "unpacked"
                with tarfile.open(tgz) as tar:
                    tar.extractall(unpacked, filter="data")
                try:
                    unpacked.rename(EXAMPLES_DIR)  # atomic: a parallel worker may have won the race
                except OSError:
                    if not (EXAMPLES_DIR / "package" / "package.json").exists():
                        raise
    if problem is not None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"the official R4 examples are required in CI: {problem}", pytrace=False)
        pytest.skip(f"!!! SKIPPING THE OFFICIAL R4 EXAMPLES: {problem}")
    return EXAMPLES_DIR / "package"


@pytest.fixture(scope="session")
def r4_examples() -> dict[str, dict[str, Any]]:
    """File name -> parsed resource, for every resource in the package."""
    folder = _fetch_examples()
    out = {}
    for path in sorted(folder.glob("*.json")):
        if path.name != "package.json":
            out[path.name] = orjson.loads(path.read_bytes())
    return out


def test_official_examples_package_is_complete(r4_examples: dict[str, dict[str, Any]]) -> None:
    assert len(r4_examples) == 5306
    ordinary = [n for n, r in r4_examples.items() if r["resourceType"] not in CONFORMANCE_TYPES]
    assert len(ordinary) == 720


def test_validator_rejects_exactly_the_official_examples_that_violate_r4(
    r4_examples: dict[str, dict[str, Any]],
) -> None:
    rejected = {}
    for name, res in r4_examples.items():
        issues = validate(res)
        if issues:
            rejected[name] = (issues[0].expression[0], issues[0].diagnostics)
    assert sorted(rejected) == sorted(REJECTED_EXAMPLES)
    for name, (expression, reason) in REJECTED_EXAMPLES.items():
        assert rejected[name][0] == expression, name
        assert rejected[name][1].startswith(reason), (name, rejected[name])


def accepted_examples(r4_examples: dict[str, dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for name, res in r4_examples.items():
        if name not in REJECTED_EXAMPLES:
            yield name, res


def test_official_examples_round_trip(fhir: httpx.Client, store: Store, r4_examples: dict[str, dict[str, Any]]) -> None:
    """Ordinary examples go through HTTP PUT; conformance resources straight into the store, and so do
    the few Bundles of definitions larger than the HTTP body limit (e.g. Bundle-resources.json, 24 MB)
    and the AuditEvent examples (the API keeps AuditEvent read-only: the server writes its own log)."""
    limit = Settings().max_body_bytes
    ordinary: list[tuple[str, dict[str, Any]]] = []
    conformance: list[tuple[str, dict[str, Any]]] = []
    for name, res in accepted_examples(r4_examples):
        direct = (
            res["resourceType"] in CONFORMANCE_TYPES
            or res["resourceType"] == "AuditEvent"
            or len(orjson.dumps(res)) > limit
        )
        (conformance if direct else ordinary).append((name, res))
    assert len(ordinary) + len(conformance) == 5306 - len(REJECTED_EXAMPLES)
    assert len(ordinary) > 700
    for name, res in ordinary:
        r = fhir.put(
            f"{res['resourceType']}/{res['id']}",
            content=orjson.dumps(res),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert r.status_code == 201, f"{name}: {r.text[:300]}"
    for start in range(0, len(conformance), 250):
        with store.transaction() as tx:
            for _, res in conformance[start : start + 250]:
                tx.update(res["resourceType"], res["id"], res)
    by_identity = {f"{r['resourceType']}/{r['id']}": r for r in stored_resources(store)}
    assert len(by_identity) == len(ordinary) + len(conformance)
    for name, res in ordinary + conformance:
        original = decimal_json(orjson.dumps(res))
        stored = by_identity[f"{res['resourceType']}/{res['id']}"]
        assert without_server_meta(stored) == without_server_meta(original), name
    for name, res in ordinary[:: len(ordinary) // 20]:  # and a sample read back over HTTP
        assert without_server_meta(decimal_json(fhir.get(f"{res['resourceType']}/{res['id']}").content)) == (
            without_server_meta(decimal_json(orjson.dumps(res)))
        ), name


def test_decimals_keep_their_value_but_not_trailing_zeros(fhir: httpx.Client) -> None:
    body = (
        b'{"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1.50}}'
    )
    r = fhir.post("Observation", content=body, headers={"Content-Type": "application/fhir+json"})
    assert r.status_code == 201
    text = fhir.get(f"Observation/{r.json()['id']}").text
    assert "1.5" in text and "1.50" not in text
    assert decimal_json(text)["valueQuantity"]["value"] == Decimal("1.50")
