"""Finding Patients by their identifiers (a personnummer, a samordningsnummer) in the search index.

The one look-up behind a resource that names its patient by identifier instead of by reference (its
compartment, ``Tx._index``), a new Patient's duplicate check, and the patients an access-log record or a
refused search names.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, or_, select

from nara.store.schema import sp_token


def patients_with_identifiers(conn: Connection, identifiers: list[tuple[str | None, str]], limit: int) -> list[str]:
    """The Patients (at most ``limit``) whose identifiers include one of ``identifiers`` ((system or None for any,
    value) pairs), from the search index, whatever the current user may see."""
    if not identifiers:
        return []
    matches = [
        and_(sp_token.c.code == code, *([sp_token.c.system == system] if system else []))
        for system, code in identifiers
    ]
    found = conn.execute(
        select(sp_token.c.patient_id)
        .where(sp_token.c.res_type == "Patient", sp_token.c.param == "identifier", or_(*matches))
        .distinct()
        .limit(limit)
    ).all()
    return sorted(r.patient_id for r in found if r.patient_id)
