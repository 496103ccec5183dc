"""Data migrations: what an upgrade does to rows stored before it."""

from __future__ import annotations

from alembic import command
from sqlalchemy import delete, select

from nara.fhir.identifiers import PERSONNUMMER, PERSONNUMMER_OID
from nara.store.migrate import alembic_config, current_revision, upgrade
from nara.store.patients import patients_identified_by
from nara.store.schema import sp_token
from nara.store.store import Store


def test_0104_indexes_personal_numbers_stored_before_it_under_their_twelve_digits(store: Store) -> None:
    """A personnummer written with a hyphen was indexed only as written before revision 0104; the upgrade adds
    its 12 digits, once, so that the look-ups of R-ID-1 find the record. A number failing the Luhn check, one
    already in 12 digits and a 10-digit form (its century depends on the day it is read) get nothing more."""
    people = {
        "dashed": ("urn:oid:" + PERSONNUMMER_OID, "19480609-3714"),
        "short": (PERSONNUMMER, "560130-2648"),
        "plain": (PERSONNUMMER, "195601302648"),
        "wrong": (PERSONNUMMER, "19480609-3715"),
    }
    with store.transaction() as tx:
        tx.validate = False  # as stored before writes were normalised (R-ID-1): each number as written
        for pid, (system, value) in people.items():
            tx.update(
                "Patient",
                pid,
                {"resourceType": "Patient", "id": pid, "identifier": [{"system": system, "value": value}]},
            )
    with store.engine.begin() as conn:  # the index as it was before 0104: each number only as written
        conn.execute(delete(sp_token).where(sp_token.c.code.in_(["194806093714", "195601302648"]), sp_token.c.rid.in_(
            select(sp_token.c.rid).where(sp_token.c.code.in_(["19480609-3714", "560130-2648"])).scalar_subquery()
        )))  # fmt: skip
        assert patients_identified_by(conn, PERSONNUMMER, "194806093714") == []
    assert current_revision(store.engine) == "0104"
    cfg = alembic_config(store.engine)
    with store.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0103")
    upgrade(store.engine)
    with store.engine.connect() as conn:
        assert patients_identified_by(conn, PERSONNUMMER, "194806093714") == ["dashed"]
        assert patients_identified_by(conn, PERSONNUMMER, "19480609-3714") == ["dashed"]
        assert patients_identified_by(conn, PERSONNUMMER, "195601302648") == ["plain"]
        assert patients_identified_by(conn, PERSONNUMMER, "194806093715") == []
        codes = conn.execute(
            select(sp_token.c.code).where(sp_token.c.res_type == "Patient", sp_token.c.param == "identifier")
        ).scalars()
        assert sorted(codes) == sorted(
            ["19480609-3714", "194806093714", "560130-2648", "195601302648", "19480609-3715"]
        )
