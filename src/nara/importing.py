"""Importing FHIR files (resources, Bundles, NDJSON) into the store, and exporting NDJSON.

Used by ``nara import`` and ``nara export``. Each file is imported on its own: a bad file is
reported with its name and reason and the others go on. Transaction Bundles run as transactions
(all-or-nothing per file); other Bundles and NDJSON lines are stored one resource at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import false, select

from nara.config import Settings
from nara.fhir.outcome import FhirError
from nara.security import audit
from nara.security.actors import Actor
from nara.server.batch import TransactionProcessor, process_bundle
from nara.server.dispatch import Context
from nara.store.crud import Stored, Tx
from nara.store.database import json_out
from nara.store.schema import resource
from nara.store.store import Store

# Shared directory resources that Synthea-style bundles repeat per patient: created conditionally on
# their first identifier so that importing many bundles keeps one copy of each.
SHARED_TYPES = frozenset({"Organization", "Practitioner", "Location", "PractitionerRole", "Medication"})


@dataclass
class ImportSummary:
    created: int = 0
    updated: int = 0  # updated, or already present (conditional create that matched)
    failed: int = 0
    files: int = 0
    errors: list[tuple[str, str]] = field(default_factory=list)


def iter_files(paths: Iterable[Path]) -> Iterator[Path]:
    for p in paths:
        if p.is_dir():
            for child in sorted(p.rglob("*")):
                if child.is_file() and child.suffix.lower() in (".json", ".ndjson"):
                    yield child
        else:
            yield p


def _dedupe(bundle: dict[str, Any]) -> None:
    for entry in bundle.get("entry", []):
        req = entry.get("request") or {}
        res = entry.get("resource") or {}
        if req.get("method") != "POST" or req.get("ifNoneExist") or res.get("resourceType") not in SHARED_TYPES:
            continue
        ident = next((i for i in res.get("identifier", []) if i.get("system") and i.get("value")), None)
        if ident is not None:
            req["ifNoneExist"] = f"identifier={ident['system']}|{ident['value']}"


def _count(summary: ImportSummary, response: dict[str, Any]) -> None:
    for e in response.get("entry", []):
        status = str(e.get("response", {}).get("status", ""))
        if status.startswith("201"):
            summary.created += 1
        elif status.startswith(("200", "204")):
            summary.updated += 1
        else:
            summary.failed += 1


def reason(e: FhirError) -> str:
    """The first few issues of an error, each with the path it points at."""
    parts = []
    for issue in e.issues[:3]:
        where = issue.expression[0] if issue.expression and issue.expression[0] else None
        if where is None:
            parts.append(issue.diagnostics)
        elif issue.diagnostics.startswith("Bundle."):  # already placed in the Bundle
            parts.append(f"{issue.diagnostics} (at {where})")
        else:
            parts.append(f"{where}: {issue.diagnostics}")
    return "; ".join(parts)


class Importer:
    def __init__(self, store: Store, settings: Settings, dedupe: bool = True, actor: Actor | None = None) -> None:
        self.store = store
        self.ctx = Context(base_url=settings.base_url or "urn:nara:import", settings=settings, prefer_return="minimal")
        self.dedupe = dedupe
        # With an actor, each file's writes are logged as one record of that actor (R-LOG-1): the patients
        # whose data the file created or changed, collected by a write hook.
        self.actor = actor
        self._touched: set[str] = set()
        if actor is not None:
            store.write_hooks.append(self._touch)

    def _touch(self, tx: Tx, method: str, st: Stored) -> None:
        if st.patient_id:
            self._touched.add(st.patient_id)

    def import_file(self, path: Path, summary: ImportSummary) -> None:
        self._touched = set()
        try:
            self._import_file(path, summary)
        finally:
            if self.actor is not None and self._touched:
                with self.store.transaction() as tx:
                    audit.record_operator(
                        tx.conn, self.actor, "import", f"nara import {path.name}"[:2000], self._touched
                    )

    def _import_file(self, path: Path, summary: ImportSummary) -> None:
        summary.files += 1
        try:
            if path.suffix.lower() == ".ndjson":
                self._ndjson(path, summary)
            else:
                data = orjson.loads(path.read_bytes())
                self._item(data, summary, str(path))
        except FhirError as e:
            summary.failed += 1
            summary.errors.append((str(path), reason(e)))
        except orjson.JSONDecodeError as e:
            summary.failed += 1
            summary.errors.append((str(path), f"not valid JSON: {e.msg} (line {e.lineno})"))
        except OSError as e:
            summary.failed += 1
            summary.errors.append((str(path), f"cannot read: {e.strerror}"))

    def _ndjson(self, path: Path, summary: ImportSummary) -> None:
        with path.open("rb") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    self._item(orjson.loads(line), summary, f"{path}:{n}")
                except FhirError as e:
                    summary.failed += 1
                    summary.errors.append((f"{path}:{n}", reason(e)))
                except orjson.JSONDecodeError as e:
                    summary.failed += 1
                    summary.errors.append((f"{path}:{n}", f"not valid JSON: {e.msg}"))

    def _item(self, data: Any, summary: ImportSummary, where: str) -> None:
        if not isinstance(data, dict) or not isinstance(data.get("resourceType"), str):
            raise FhirError(400, "invalid", "not a FHIR resource (no resourceType)")
        if data["resourceType"] == "Bundle" and data.get("type") in ("transaction", "batch"):
            if self.dedupe:
                _dedupe(data)
            if data["type"] == "transaction":
                with self.store.transaction() as tx:
                    response = TransactionProcessor(tx, self.ctx).run(data)
            else:
                response = process_bundle(self.store, self.ctx, data)
            _count(summary, response)
            return
        if data["resourceType"] == "Bundle" and data.get("type") in ("collection", "searchset", "document", "message"):
            for i, entry in enumerate(data.get("entry", [])):
                res = entry.get("resource") if isinstance(entry, dict) else None
                if isinstance(res, dict):
                    try:
                        self._resource(res, summary)
                    except FhirError as e:
                        summary.failed += 1
                        summary.errors.append((f"{where} Bundle.entry[{i}]", reason(e)))
            return
        self._resource(data, summary)

    def _resource(self, res: dict[str, Any], summary: ImportSummary) -> None:
        with self.store.transaction() as tx:
            rid = res.get("id")
            result = tx.update(res["resourceType"], rid, res) if isinstance(rid, str) else tx.create(res)
        if result.created:
            summary.created += 1
        else:
            summary.updated += 1


def export_ndjson(
    store: Store,
    out_dir: Path,
    types: list[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
    actor: Actor | None = None,
) -> dict[str, int]:
    """Write one ``<Type>.ndjson`` file per resource type; returns counts per type.

    With an actor, the export is logged first (R-LOG-1): one record naming every patient whose data it copies
    out, committed before any file is written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if actor is not None:
        with store.transaction() as tx:
            whose = (
                select(resource.c.patient_id)
                .distinct()
                .where(resource.c.deleted == false(), resource.c.patient_id.is_not(None))
            )
            if types:
                whose = whose.where(resource.c.res_type.in_(types))
            request = "nara export" + (f" --type {','.join(types)}" if types else "")
            audit.record_operator(tx.conn, actor, "export", request, (r[0] for r in tx.conn.execute(whose)))
    counts: dict[str, int] = {}
    with store.engine.connect() as conn:
        type_rows = conn.execute(
            select(resource.c.res_type).where(resource.c.deleted == false()).distinct().order_by(resource.c.res_type)
        ).all()
        for (rtype,) in type_rows:
            if types and rtype not in types:
                continue
            n = 0
            with (out_dir / f"{rtype}.ndjson").open("w", encoding="utf-8") as fh:
                stmt = (
                    select(json_out(resource.c.content, store.postgres))
                    .where(resource.c.res_type == rtype, resource.c.deleted == false())
                    .order_by(resource.c.rid)
                    .execution_options(yield_per=1000)
                )
                for (content,) in conn.execute(stmt):
                    fh.write(orjson.dumps(orjson.loads(content)).decode())
                    fh.write("\n")
                    n += 1
                    if progress and n % 1000 == 0:
                        progress(rtype, n)
            counts[rtype] = n
    return counts
