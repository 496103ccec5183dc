"""Finding Patients by their identifiers (a personnummer, a samordningsnummer) in the search index.

The one look-up behind a resource that names its patient by identifier instead of by reference (its
compartment, ``Tx._identified_patient``), a new Patient's duplicate check, a protected patient's household,
and the patients an access-log record or a refused search names.
"""

from __future__ import annotations

from sqlalchemy import Connection, and_, or_, select

from nara.fhir.identifiers import PERSONAL_SYSTEMS, normalize_system, personal_number, written_systems
from nara.store.schema import sp_token

# The compartment of data about a person named by a personal identity number no Patient carries (yet): not a
# valid FHIR id, so no Patient can take it and no care relationship or consent can name it. Such data is read
# only by system clients until a reindex finds its patient (fail closed: stored as no one's data, it would be
# readable by every staff member).
UNRESOLVED_PATIENT = "?unresolved"

# The systems a stored Patient may carry a personal identity number under (as sent: URI or RIV OID).
_PERSONAL_ALIASES = sorted(alias for system in PERSONAL_SYSTEMS for alias in written_systems(system))


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


def patients_identified_by(conn: Connection, system: str | None, value: str, limit: int = 2) -> list[str]:
    """The Patients carrying the identifier (``system``, ``value``): a personal identity number in any of its
    written forms and under either of its systems (URI or OID), other identifiers as given."""
    number = personal_number(system, value)
    if number is None:
        return patients_with_identifiers(conn, [(normalize_system(system), value)], limit)
    return patients_with_identifiers(conn, [(s, number) for s in _PERSONAL_ALIASES], limit)
