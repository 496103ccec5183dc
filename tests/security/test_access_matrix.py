"""The access matrix: actor × data owner × consent/block state × action, against a plain-Python oracle
of the rules (R-ACC-1..3, R-BLK-1), on both databases."""

from __future__ import annotations

import httpx
import orjson
import pytest

from tests.conftest import token
from tests.security.region import HSV, JSON, VC, Region, actor, build_region, consent, ids, observation

# Actors: (name, token maker, unit, provider, may read other units after the active choice, has SJF)
STAFF = {
    "own-unit": ("vc", {}, VC, "REG", False, True),
    "ward-no-choice": ("avd", {}, "AVD", "REG", False, False),
    "ward-with-choice": ("avd", {"other_units": True}, "AVD", "REG", True, False),
    "ward-sjf-choice": ("avdsjf", {"other_units": True}, "AVD", "REG", True, True),
    "municipal": ("hsv", {}, HSV, "KOM", False, True),
    "municipal-no-sjf": ("hsvve", {}, HSV, "KOM", False, False),
    "no-relation": ("tom", {}, "TOM", "REG", False, True),
}
OWNERS = {"vc": (VC, "REG"), "hsv": (HSV, "KOM")}
STATES = ["none", "consent", "block", "consent+block"]


def oracle(actor_name: str, owner: str, state: str) -> bool:
    """What the law says: the expected visibility of one row (reader at unit U, row owned by O)."""
    _key, _extra, unit, provider, choice, sjf = STAFF[actor_name]
    o_unit, o_provider = OWNERS[owner]
    if actor_name == "no-relation":
        return False  # R-ACC-1: no care relationship
    if o_unit == unit:
        return True  # own unit
    consent_for_reader = "consent" in state and unit == HSV  # the consent names the municipal unit
    blocked = "block" in state and o_unit == VC  # the block covers the health centre's data
    if o_provider == provider:
        return choice and not blocked  # R-ACC-2
    return sjf and consent_for_reader and not blocked  # R-ACC-3, R-BLK-1


@pytest.mark.parametrize("state", STATES)
def test_access_matrix(fhir: httpx.Client, state: str) -> None:
    reg: Region = build_region(fhir)
    anna = reg.patients["anna"]
    rows = {
        "vc": reg.post(observation(anna, "29463-7", 70.0), reg.staff["vc"].token())["id"],
        "hsv": reg.post(observation(anna, "59408-5", 95.0), reg.staff["hsv"].token())["id"],
    }
    if "consent" in state:
        reg.post(consent(anna, "svod-consent", {"type": "permit", "actor": [actor("IRCP", f"Organization/{HSV}")]}))
    if "block" in state:
        reg.post(consent(anna, "block", {"type": "deny", "actor": [actor("CST", f"Organization/{VC}")]}))
    failures = []
    for name, (key, extra, *_rest) in STAFF.items():
        bearer = token(reg.staff[key].hsa, "staff", assignment=reg.staff[key].assignment, extra=extra or None)
        with reg.as_(bearer) as c:
            found = ids(c.get(f"Observation?patient={anna}&_count=50").json())
            for owner, rid in rows.items():
                expected = oracle(name, owner, state)
                read = c.get(f"Observation/{rid}").status_code
                if (rid in found) != expected:
                    failures.append(f"search {name} {owner}: expected {expected}")
                if (read == 200) != expected or read not in (200, 403):
                    failures.append(f"read {name} {owner}: got {read}, expected {'200' if expected else '403'}")
            # Writing about the patient needs a care relationship at the writer's unit (and a write right).
            write = c.post("Observation", content=orjson.dumps(observation(anna, "8867-4", 60.0)), headers=JSON)
            if (write.status_code == 201) != (name != "no-relation"):
                failures.append(f"create {name}: got {write.status_code}")
    assert not failures, failures
