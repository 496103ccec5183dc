"""Tables of the security layer: the access-rule index and the audit trail.

- ``care_relation`` and ``pdl_rule`` are derived from FHIR resources (EpisodeOfCare, Encounter,
  CareTeam; Consent, RelatedPerson) in the same transaction as their write, like the search index: the
  policy reads them inside its SQL filters. They hold nothing that is not in a resource and are rebuilt
  from the resources. Rows carry ``patient_id`` (the distribution key).
- ``audit_event`` / ``audit_access`` are the access log, kept apart from the clinical tables so that
  audit volume does not slow clinical writes; ``audit_review`` stores completed log reviews.
  Audit rows are hash-chained (``chain_seq``, ``prev_hash``, ``hash``) and protected by triggers
  against change or deletion inside the retention period.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Column, DateTime, Index, Integer, String, Table, Text, text
from sqlalchemy.engine import Connection

from nara.store.schema import ID, RID, metadata

care_relation = Table(
    "care_relation",
    metadata,
    Column("id", RID, primary_key=True, autoincrement=True),
    Column("source_rid", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("unit", ID, nullable=False),  # the caring unit (Organization id = HSA-id)
    Column("starts", DateTime),
    Column("ends", DateTime),
    Index("ix_care_relation_unit", "unit", "patient_id"),
    Index("ix_care_relation_patient", "patient_id"),
    Index("ix_care_relation_source", "source_rid"),
)

# Consents, emergency assertions, blocks, block breaks, representatives and guardians. Kept apart from
# care relationships so that when this store cannot be read, own-unit access still works (R-BLK-5).
pdl_rule = Table(
    "pdl_rule",
    metadata,
    Column("id", RID, primary_key=True, autoincrement=True),
    Column("source_rid", BigInteger().with_variant(Integer, "sqlite"), nullable=False),
    Column("patient_id", ID, nullable=False),
    # consent | emergency | block | break | representative | guardian | protected
    Column("kind", String(16), nullable=False),
    Column("org", ID),  # block / break: the custodian (care provider or unit) whose data is blocked
    Column("unit", ID),  # consent / emergency: the reading unit
    Column("employee", ID),  # Practitioner id for employee-bound consent, emergency, block break
    Column("person", String(32)),  # personnummer of a representative or guardian
    Column("starts", DateTime),
    Column("ends", DateTime),
    Column("exempt_alerts", Boolean, nullable=False, default=False),
    Column("exempt_medication", Boolean, nullable=False, default=False),
    Index("ix_pdl_rule_patient", "patient_id", "kind"),
    Index("ix_pdl_rule_source", "source_rid"),
    Index("ix_pdl_rule_unit", "kind", "unit", "patient_id"),
    Index("ix_pdl_rule_person", "kind", "person"),
)

audit_event = Table(
    "audit_event",
    metadata,
    Column("seq", RID, primary_key=True, autoincrement=True),
    Column("recorded_at", DateTime, nullable=False),  # UTC
    Column("action", String(32), nullable=False),  # read | vread | search | history | create | update | ...
    Column("outcome", String(8), nullable=False),  # permit | deny | error
    Column("actor_kind", String(12), nullable=False),
    Column("user_id", String(64)),  # staff HSA-id, citizen personnummer, client id
    Column("user_name", Text),
    Column("assignment_id", String(64)),
    Column("unit_id", String(64)),  # accessing vårdenhet
    Column("provider_id", String(64)),  # accessing vårdgivare or omsorgsgivare
    Column("purpose", Text),
    Column("client_id", String(64)),
    Column("resource_type", String(64)),
    Column("resource_id", Text),
    Column("request", Text),  # method, path and query (no bodies)
    Column("reason", Text),  # emergency / block-break reason, denial reason
    Column("assertion_id", String(64)),  # consent or emergency Consent id
    Column("flags", Text),  # comma-separated: emergency, block-break, protected-identity, ...
    Column("patient_count", Integer, nullable=False, default=0),
    Column("chain_seq", BigInteger().with_variant(Integer, "sqlite")),
    Column("prev_hash", String(64)),
    Column("hash", String(64)),
    Index("ix_audit_event_time", "recorded_at"),
    Index("ix_audit_event_user", "user_id", "recorded_at"),
    Index("ux_audit_event_chain", "chain_seq", unique=True),
    # Only the few not yet sealed rows: the sealer finds them without walking the sealed chain.
    Index(
        "ix_audit_event_unsealed",
        "seq",
        postgresql_where=text("chain_seq IS NULL"),
        sqlite_where=text("chain_seq IS NULL"),
    ),
)

audit_access = Table(
    "audit_access",
    metadata,
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), nullable=False),  # audit_event.seq
    Column("recorded_at", DateTime, nullable=False),
    Column("patient_id", ID, nullable=False),
    Column("owner_org", ID),
    Column("owner_unit", ID),
    # own-unit | other-unit | svod | emergency | block-break | citizen | proxy | system | quality | count | log-review
    # | denied
    Column("access_type", String(16), nullable=False),
    Column("protected", Boolean, nullable=False, default=False),
    Column("action", String(32)),  # when it differs from the event's (a transaction's creates and updates)
    # The Consent that gave this access (R-LOG-1): the patient's consent for SVOD access, the emergency
    # assertion for emergency access, the block break for access through a broken block; None otherwise.
    Column("assertion_id", ID),
    Index("ix_audit_access_patient", "patient_id", "recorded_at"),
    Index("ix_audit_access_seq", "seq"),
)

audit_review = Table(
    "audit_review",
    metadata,
    Column("id", RID, primary_key=True, autoincrement=True),
    Column("reviewed_at", DateTime, nullable=False),
    Column("reviewer", String(64), nullable=False),
    Column("period_start", DateTime),
    Column("period_end", DateTime),
    Column("events", Text, nullable=False),  # comma-separated audit_event.seq reviewed
    Column("finding", Text, nullable=False),
    Column("action", Text, nullable=False),
)

# How far each read-audit outbox file has been drained into the log (nara.security.audit_outbox): updated in
# the transaction that inserts the records, so each is inserted once. A row per file still on some host.
audit_outbox = Table(
    "audit_outbox",
    metadata,
    Column("file", String(200), primary_key=True),  # <host>-<pid>-<start ns>.audit
    Column("drained", BigInteger().with_variant(Integer, "sqlite"), nullable=False),  # bytes inserted
)

AUDIT_TABLES = ("audit_event", "audit_access", "audit_review")
MIN_RETENTION_YEARS = 5  # R-LOG-2: audit records are kept at least five years


def retention_days(years: int) -> int:
    """Whole days that cover ``years`` years with their leap days (5 years: 1827 days)."""
    return -(-years * 1461 // 4)


def _sealing_only(dialect: str) -> str:
    """The one change an ``audit_event`` row may take: its chain columns set once, every other column as it was.

    Built from the table, so a column added later is protected without touching the triggers. Checked in the
    trigger's WHEN clause: the database evaluates it without calling a trigger function for every row the
    sealer updates (measured with the benchmark's audit_chain figures, docs/performance.md)."""
    chain = ("chain_seq", "prev_hash", "hash")
    kept = [c.name for c in audit_event.columns if c.name not in chain]
    if dialect == "postgresql":
        same = f"({', '.join('OLD.' + c for c in kept)}) IS NOT DISTINCT FROM ({', '.join('NEW.' + c for c in kept)})"
    else:
        same = " AND ".join(f"NEW.{c} IS OLD.{c}" for c in kept)
    return f"OLD.chain_seq IS NULL AND NEW.chain_seq IS NOT NULL AND {same}"


def guard_statements(dialect: str, retention_days: int) -> list[str]:
    """Triggers that refuse changing or deleting audit rows inside the retention period.

    Only the chain columns of a not yet chained ``audit_event`` row may be set (once).
    """
    if dialect == "postgresql":
        return [
            f"""
CREATE OR REPLACE FUNCTION nara_audit_guard() RETURNS trigger AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    -- TG_ARGV[0]: the row's time column (recorded_at; reviewed_at for a review)
    IF (to_jsonb(OLD) ->> TG_ARGV[0])::timestamp
       > (now() AT TIME ZONE 'UTC') - interval '{int(retention_days)} days' THEN
      RAISE EXCEPTION 'audit records cannot be deleted within the retention period';
    END IF;
    RETURN OLD;
  END IF;
  RAISE EXCEPTION 'audit records cannot be changed';
END $$ LANGUAGE plpgsql""",
            "DROP TRIGGER IF EXISTS nara_audit_event_guard ON audit_event",
            "CREATE TRIGGER nara_audit_event_guard BEFORE DELETE ON audit_event "
            "FOR EACH ROW EXECUTE FUNCTION nara_audit_guard('recorded_at')",
            "DROP TRIGGER IF EXISTS nara_audit_event_sealing_only ON audit_event",
            "CREATE TRIGGER nara_audit_event_sealing_only BEFORE UPDATE ON audit_event "
            f"FOR EACH ROW WHEN (NOT ({_sealing_only(dialect)})) EXECUTE FUNCTION nara_audit_guard('recorded_at')",
            "DROP TRIGGER IF EXISTS nara_audit_access_guard ON audit_access",
            "CREATE TRIGGER nara_audit_access_guard BEFORE UPDATE OR DELETE ON audit_access "
            "FOR EACH ROW EXECUTE FUNCTION nara_audit_guard('recorded_at')",
            "DROP TRIGGER IF EXISTS nara_audit_review_guard ON audit_review",
            "CREATE TRIGGER nara_audit_review_guard BEFORE UPDATE OR DELETE ON audit_review "
            "FOR EACH ROW EXECUTE FUNCTION nara_audit_guard('reviewed_at')",
            # TRUNCATE fires no row trigger: refuse it outright (it would empty the log, retention or not).
            """
CREATE OR REPLACE FUNCTION nara_audit_no_truncate() RETURNS trigger AS $$
BEGIN
  RAISE EXCEPTION 'audit records cannot be truncated';
END $$ LANGUAGE plpgsql""",
            *(
                stmt
                for table in AUDIT_TABLES
                for stmt in (
                    f"DROP TRIGGER IF EXISTS nara_{table}_no_truncate ON {table}",
                    f"CREATE TRIGGER nara_{table}_no_truncate BEFORE TRUNCATE ON {table} "
                    "FOR EACH STATEMENT EXECUTE FUNCTION nara_audit_no_truncate()",
                )
            ),
        ]
    keep = f"datetime('now', '-{int(retention_days)} days')"
    return [
        "DROP TRIGGER IF EXISTS nara_audit_event_no_update",
        f"""CREATE TRIGGER nara_audit_event_no_update BEFORE UPDATE ON audit_event
FOR EACH ROW WHEN NOT ({_sealing_only(dialect)})
BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed'); END""",
        "DROP TRIGGER IF EXISTS nara_audit_event_no_delete",
        f"""CREATE TRIGGER nara_audit_event_no_delete BEFORE DELETE ON audit_event
FOR EACH ROW WHEN OLD.recorded_at > {keep}
BEGIN SELECT RAISE(ABORT, 'audit records cannot be deleted within the retention period'); END""",
        "DROP TRIGGER IF EXISTS nara_audit_access_no_update",
        """CREATE TRIGGER nara_audit_access_no_update BEFORE UPDATE ON audit_access
BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed'); END""",
        "DROP TRIGGER IF EXISTS nara_audit_access_no_delete",
        f"""CREATE TRIGGER nara_audit_access_no_delete BEFORE DELETE ON audit_access
FOR EACH ROW WHEN OLD.recorded_at > {keep}
BEGIN SELECT RAISE(ABORT, 'audit records cannot be deleted within the retention period'); END""",
        "DROP TRIGGER IF EXISTS nara_audit_review_no_change",
        """CREATE TRIGGER nara_audit_review_no_change BEFORE UPDATE ON audit_review
BEGIN SELECT RAISE(ABORT, 'audit records cannot be changed'); END""",
        "DROP TRIGGER IF EXISTS nara_audit_review_no_delete",
        f"""CREATE TRIGGER nara_audit_review_no_delete BEFORE DELETE ON audit_review
FOR EACH ROW WHEN OLD.reviewed_at > {keep}
BEGIN SELECT RAISE(ABORT, 'audit records cannot be deleted within the retention period'); END""",
    ]


def drop_guard_statements(dialect: str) -> list[str]:
    if dialect == "postgresql":
        return [
            "DROP TRIGGER IF EXISTS nara_audit_event_guard ON audit_event",
            "DROP TRIGGER IF EXISTS nara_audit_event_sealing_only ON audit_event",
            "DROP TRIGGER IF EXISTS nara_audit_access_guard ON audit_access",
            "DROP TRIGGER IF EXISTS nara_audit_review_guard ON audit_review",
            *(f"DROP TRIGGER IF EXISTS nara_{table}_no_truncate ON {table}" for table in AUDIT_TABLES),
        ]
    return [
        f"DROP TRIGGER IF EXISTS {name}"
        for name in (
            "nara_audit_event_no_update",
            "nara_audit_event_no_delete",
            "nara_audit_access_no_update",
            "nara_audit_access_no_delete",
            "nara_audit_review_no_change",
            "nara_audit_review_no_delete",
        )
    ]


def install_guards(conn: Connection, retention_days: int) -> None:
    for stmt in guard_statements(conn.dialect.name, retention_days):
        conn.exec_driver_sql(stmt)
