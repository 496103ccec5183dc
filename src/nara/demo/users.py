"""The demo logins, read back from the store (resources tagged ``demo-login``, see :mod:`nara.demo.scenario`).

:func:`demo_users` is what the development identity provider's login page and the landing page list. Each user
carries the token claims docs/security.md §1 describes: ``kind`` (citizen, proxy, staff), ``sub`` (personnummer
or staff HSA-id), ``assignment`` (staff) and ``patient`` (the represented child, for a guardian).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from nara.demo.clinical import DEMO, DEMO_USER
from nara.demo.scenario import DEMO_USERS
from nara.directory.codes import STAFF_ROLE, STAFF_ROLES
from nara.fhir.identifiers import HSA_ID, PERSONNUMMER, parse_personal_identity
from nara.fhir.query import QueryParser, parse_pairs
from nara.store.crud import Tx
from nara.store.search import Searcher
from nara.store.store import Store


@dataclass
class DemoUser:
    key: str  # demo-user code: citizen, guardian, district-nurse, ...
    kind: str  # citizen | proxy | staff
    sub: str  # personnummer (citizen, proxy) or staff HSA-id
    name: str
    description: str
    assignment: str | None = None  # staff: the assignment (medarbetaruppdrag) HSA-id
    patient: str | None = None  # proxy: the represented person's personnummer
    unit: str | None = None  # staff: unit name


def _tagged(tx: Tx, rtype: str) -> list[dict[str, Any]]:
    s = tx.store.settings
    q = QueryParser(s.max_chain_depth, s.max_or_values).parse(
        rtype, parse_pairs(f"_tag={DEMO}|demo-login&_count=50"), strict=True
    )
    return [m.resource() for m in Searcher(tx).search(q).matches]


def _code(res: dict[str, Any]) -> str | None:
    return next((t.get("code") for t in res.get("meta", {}).get("tag", []) if t.get("system") == DEMO_USER), None)


def _ident(res: dict[str, Any], system: str) -> str | None:
    return next((i["value"] for i in res.get("identifier", []) if i.get("system") == system and "value" in i), None)


def _name(res: dict[str, Any]) -> str:
    names = res.get("name") or [{}]
    n = names[0]
    return str(n.get("text") or " ".join([*n.get("given", []), n.get("family", "")]).strip())


def demo_users(store: Store, today: date | None = None) -> list[DemoUser]:
    """The demo logins in display order (empty when the database has no demo region)."""
    today = today or date.today()
    users: list[DemoUser] = []
    with store.transaction(write=False) as tx:
        for res in _tagged(tx, "Patient"):
            key = _code(res) or "citizen"
            pnr = _ident(res, PERSONNUMMER)
            if pnr:
                age = parse_personal_identity(pnr).age_on(today)
                users.append(DemoUser(key, "citizen", pnr, _name(res), f"{DEMO_USERS[key]}; {age} years old"))
        for res in _tagged(tx, "RelatedPerson"):
            key = _code(res) or "guardian"
            pnr = _ident(res, PERSONNUMMER)
            child_id = str(res.get("patient", {}).get("reference", "")).split("/")[-1]
            child = tx.read_optional("Patient", child_id)
            child_pnr = _ident(child.resource(), PERSONNUMMER) if child else None
            if pnr and child and child_pnr:
                age = parse_personal_identity(child_pnr).age_on(today)
                text = f"{DEMO_USERS[key]} ({_name(child.resource())}, {age} years old)"
                users.append(DemoUser(key, "proxy", pnr, _name(res), text, patient=child_pnr))
        for res in _tagged(tx, "PractitionerRole"):
            staff_key = _code(res)
            prac_id = str(res.get("practitioner", {}).get("reference", "")).split("/")[-1]
            unit_id = str(res.get("organization", {}).get("reference", "")).split("/")[-1]
            prac, unit = tx.read_optional("Practitioner", prac_id), tx.read_optional("Organization", unit_id)
            staff_hsa = _ident(prac.resource(), HSA_ID) if prac else None
            if staff_key is None or prac is None or unit is None or staff_hsa is None:
                continue
            role = next(
                (
                    c["code"]
                    for cc in res.get("code", [])
                    for c in cc.get("coding", [])
                    if c.get("system") == STAFF_ROLE
                ),
                None,
            )
            unit_name = str(unit.resource().get("name", unit_id))
            title = STAFF_ROLES.get(role or "", "")
            users.append(
                DemoUser(
                    staff_key,
                    "staff",
                    staff_hsa,
                    _name(prac.resource()),
                    f"{DEMO_USERS.get(staff_key, title)} ({unit_name})",
                    assignment=res["id"],
                    unit=unit_name,
                )
            )
    order = list(DEMO_USERS)
    return sorted(users, key=lambda u: order.index(u.key) if u.key in order else len(order))
