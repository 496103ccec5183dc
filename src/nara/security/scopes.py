"""SMART on FHIR scopes (v2 ``patient/Observation.rs``, v1 ``user/*.read``), enforced on top of the policy."""

from __future__ import annotations

import re
from dataclasses import dataclass

from nara.fhir.outcome import FhirError

_SCOPE_RE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(read|write|\*|[cruds]+)(\?.*)?$")
V1 = {"read": "rs", "write": "cud", "*": "cruds"}
ACTIONS = {
    "read": "r",
    "vread": "r",
    "history": "r",
    "search": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "operation": "r",
}


@dataclass(frozen=True)
class Scopes:
    # (context, resource type or "*", permission letters)
    grants: tuple[tuple[str, str, str], ...]
    raw: str = ""

    @classmethod
    def parse(cls, raw: str) -> Scopes:
        grants = []
        for token in raw.split():
            m = _SCOPE_RE.match(token)
            if not m:
                continue  # openid, fhirUser, launch/patient, offline_access, ...
            ctx, rtype, perms, query = m.groups()
            if query:
                # A granular scope (SMART v2, e.g. ?category=laboratory) is not enforced here: it grants
                # nothing rather than the whole type.
                continue
            grants.append((ctx, rtype, V1.get(perms, perms)))
        return cls(tuple(grants), raw)

    @classmethod
    def everything(cls) -> Scopes:
        return cls((("system", "*", "cruds"),), "system/*.cruds")

    def allows(self, rtype: str, action: str) -> bool:
        letter = ACTIONS.get(action, "r")
        return any(t in ("*", rtype) and letter in perms for _ctx, t, perms in self.grants)

    def patient_only(self) -> bool:
        """Whether every grant is in the ``patient/`` context (a SMART app launched for one patient)."""
        return bool(self.grants) and all(ctx == "patient" for ctx, _t, _perms in self.grants)

    def readable_types(self) -> frozenset[str] | None:
        """Resource types the scopes allow reading (None: every type)."""
        types = set()
        for _ctx, t, perms in self.grants:
            if "r" in perms or "s" in perms:
                if t == "*":
                    return None
                types.add(t)
        return frozenset(types)

    def require(self, rtype: str, action: str) -> None:
        if not self.allows(rtype, action):
            raise FhirError(
                403, "forbidden", f"The token's scopes do not allow {action} on {rtype} (scope: {self.raw or 'none'})"
            )
