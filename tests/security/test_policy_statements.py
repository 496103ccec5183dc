"""How the access policy's SQL is built and reused: one compiled statement per kind of actor, each request
binding its own values, and a patient's access rules read by one constant (prepared) statement.

These are the mechanisms behind the policy's low cost per request (docs/performance.md); the tests prove
that reusing statements never lets one actor's values answer another actor's request.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import literal, select, text

from nara.fhir.query import QueryParser, parse_pairs
from nara.security.actors import PURPOSE_QUALITY, Actor
from nara.security.devidp import DEFAULT_SCOPES
from nara.security.identity import ActorResolver
from nara.security.policy import Policy
from nara.security.schema import pdl_rule
from nara.store.schema import resource
from nara.store.search import Searcher
from nara.store.store import Store
from tests.security.region import HSV, VC, Region, build_region, ids, observation


@pytest.fixture
def region(fhir: httpx.Client) -> Region:
    reg = build_region(fhir)
    anna = reg.patients["anna"]
    reg.data = {}  # type: ignore[attr-defined]
    for key, code in (("vc", "29463-7"), ("hsv", "59408-5")):
        reg.data[key] = reg.post(observation(anna, code, 70.0, f"by {key}"), reg.staff[key].token())["id"]  # type: ignore[attr-defined]
    return reg


def staff_actor(store: Store, reg: Region, key: str) -> Actor:
    s = reg.staff[key]
    claims = {"sub": s.hsa, "nara_kind": "staff", "assignment": s.assignment, "scope": DEFAULT_SCOPES["staff"]}
    return ActorResolver(store).resolve(claims)


def policy_of(store: Store, reg: Region, key: str) -> Policy:
    from nara.security.audit import now_utc

    return Policy(staff_actor(store, reg, key), now_utc())


def test_actors_of_one_shape_each_read_under_their_own_unit_and_provider(region: Region, store: Store) -> None:
    """The health-centre physician (region) and the municipal nurse have assignments of the same shape, so
    their reads share one compiled statement; each request must still be answered with its own unit and
    provider. Alternating many times makes the statement cached (and prepared on PostgreSQL)."""
    assert policy_of(store, region, "vc").shape == policy_of(store, region, "hsv").shape
    data: dict[str, str] = region.data  # type: ignore[attr-defined]
    anna = region.patients["anna"]
    vc, hsv = region.as_(region.staff["vc"].token()), region.as_(region.staff["hsv"].token())
    with vc, hsv:
        for _ in range(8):
            assert vc.get(f"Observation/{data['vc']}").status_code == 200
            # Another care provider's data without the patient's consent (R-ACC-3): not for either of them.
            assert hsv.get(f"Observation/{data['vc']}").status_code == 403
            assert hsv.get(f"Observation/{data['hsv']}").status_code == 200
            assert vc.get(f"Observation/{data['hsv']}").status_code == 403
            # A search that pins no patient carries the shared filter too.
            assert ids(vc.get("Observation?_count=50").json()) == {data["vc"]}
            assert ids(hsv.get("Observation?_count=50").json()) == {data["hsv"]}
            # So does a patient-scoped search: with no block of the patient concerning them, both share one
            # pinned filter, each with their own unit.
            assert ids(vc.get(f"Observation?patient={anna}&_count=50").json()) == {data["vc"]}
            assert ids(hsv.get(f"Observation?patient={anna}&_count=50").json()) == {data["hsv"]}


def test_the_shared_filter_keys_statements_by_the_actors_shape_not_their_values(region: Region, store: Store) -> None:
    """Statements carrying the read filter of two actors of one shape have one cache key (their values are
    bound when the statement runs); a different shape, or the blocked-rows variant, has another key."""

    def key(policy: Policy, blocked: bool = False) -> Any:
        cond = policy.suppressed_filter(resource) if blocked else policy.row_filter(resource)
        stmt = select(resource.c.rid).where(resource.c.res_type == "Observation", cond)
        return stmt._generate_cache_key()

    vc, hsv, avd = (policy_of(store, region, k) for k in ("vc", "hsv", "avd"))
    assert key(vc) == key(hsv)
    assert avd.shape != vc.shape  # the ward nurse has no SJF right
    assert key(avd) != key(vc)
    assert key(vc, blocked=True) != key(vc)


def test_the_read_filter_binds_each_value_once_and_writes_the_rule_kinds_into_the_sql(
    region: Region, store: Store
) -> None:
    """A staff read's filter names her unit and the moment in many places; each is one parameter, read from the
    request's policy once a statement, and the kinds of rule it looks for (consent, block, ...) are constants of
    the SQL text, not parameters to send and parse on every request."""
    stmt = select(resource.c.rid).where(
        resource.c.res_type == "Observation", policy_of(store, region, "vc").row_filter(resource)
    )
    compiled = stmt.compile(dialect=store.engine.dialect)
    late = [name for name in compiled.bind_names.values() if name.startswith("pol_")]
    assert late and len(late) == len(set(late)), late
    assert {"pol_unit", "pol_provider", "pol_now", "pol_practitioner"} <= set(late)
    sql = str(compiled)
    for kind in ("consent", "emergency", "block", "break"):
        assert f"kind = '{kind}'" in sql
    constants = [b.value for b in compiled.binds.values() if b.callable is None]
    assert not {"consent", "emergency", "block", "break"} & set(constants), constants


def test_a_patients_access_rules_keep_their_prepared_statement_while_searches_are_planned_with_values(
    region: Region, store: Store
) -> None:
    """A patient-scoped search first reads the patient's care relationship and rules with one constant
    statement, which the driver prepares; the search statements themselves stay unprepared."""
    if not store.postgres:
        pytest.skip("prepared statements are a PostgreSQL matter")
    policy = policy_of(store, region, "vc")
    anna = region.patients["anna"]
    q = QueryParser().parse("Observation", parse_pairs(f"patient={anna}&_count=10"))
    prepared = text("SELECT statement FROM pg_prepared_statements")
    with store.transaction(write=False) as tx, policy.active():
        tx.policy = policy
        for _ in range(8):
            policy.patient_facts.clear()  # as in a new request
            assert {m.res_id for m in Searcher(tx).search(q).matches} == {region.data["vc"]}  # type: ignore[attr-defined]
        statements = [r[0] for r in tx.conn.execute(prepared)]
    assert any("FROM care_relation" in s and "UNION ALL" in s for s in statements)
    # Search statements (alias r1, with the own-unit condition of the filter) stay unprepared; reads by id and
    # identifier look-ups on the pooled connection keep theirs.
    assert not any("r1.owner_unit IS NULL" in s for s in statements)


def test_a_patients_access_rules_are_read_with_their_types_on_both_databases(region: Region, store: Store) -> None:
    """The constant statement returns times as datetimes and exemptions as booleans (SQLite keeps both as
    text and integers), so the pinned filter compares them correctly."""
    policy = policy_of(store, region, "vc")
    anna = region.patients["anna"]
    with store.engine.connect() as conn:
        conn.execute(
            pdl_rule.insert().values(
                source_rid=0,
                patient_id=anna,
                kind="block",
                org=HSV,
                starts=datetime(2026, 1, 1),
                ends=datetime(2026, 12, 31, 23, 59),
                exempt_alerts=True,
                exempt_medication=False,
            )
        )
        conn.commit()
    with store.transaction(write=False) as tx, policy.active():
        rows = policy.patient_rules(tx, anna)
    care = [r for r in rows if r.kind == "care"]
    blocks = [r for r in rows if r.kind == "block"]
    assert care and care[0].unit == VC and care[0].exempt_alerts is False
    assert len(blocks) == 1 and blocks[0].exempt_alerts is True and blocks[0].exempt_medication is False
    assert (blocks[0].starts, blocks[0].ends) == (datetime(2026, 1, 1), datetime(2026, 12, 31, 23, 59))


def test_the_access_type_written_by_a_reading_statement_agrees_with_the_policy_for_every_actor(
    region: Region, store: Store
) -> None:
    """A read by id writes its log record in SQL (Policy.access_type_sql); for every kind of actor and data
    owner it must name the access exactly as the policy does in Python (R-LOG-1)."""
    from nara.security.audit import now_utc

    nurse = staff_actor(store, region, "vc")
    assert nurse.assignment is not None
    actors = [
        nurse,
        replace(nurse, assignment=replace(nurse.assignment, purpose=PURPOSE_QUALITY)),
        Actor(kind="citizen", subject="191212121212", patient=region.patients["anna"]),
        Actor(kind="proxy", subject="191212121212", patient=region.patients["anna"], proxy_basis="guardian"),
        Actor(kind="system", subject="integration", client_id="integration"),
    ]
    region_org = "SE2321000032-REG"
    owners = [(None, None), (region_org, VC), (region_org, "SE2321000032-OTHER"), ("SE2120000000-KOM", HSV)]
    for actor in actors:
        policy = Policy(actor, now_utc())
        for org, unit in owners:
            row = select(
                literal(org).label("owner_org"),
                literal(unit).label("owner_unit"),
                literal(region.patients["anna"]).label("patient_id"),
            ).subquery()
            with store.transaction(write=False) as tx, policy.active():
                in_sql = tx.conn.execute(select(policy.access_type_sql(row.c))).scalar_one()
            assert in_sql == policy.access_type(org, unit), (actor.kind, org, unit)
