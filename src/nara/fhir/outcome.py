"""OperationOutcome building and the error type every layer raises for a FHIR-shaped failure."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Issue:
    severity: str  # fatal | error | warning | information
    code: str  # IssueType code: invalid, structure, required, value, not-found, conflict, ...
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = self.expression
        return out


def operation_outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(message: str, code: str = "informational") -> dict[str, Any]:
    return operation_outcome([Issue("information", code, message)])


class FhirError(Exception):
    """A failure reported to the client as an OperationOutcome with an HTTP status."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: list[str] | None = None,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.issues = issues or [Issue("error", code, diagnostics, expression or [])]
        self.headers = headers or {}
        # For a refusal (403) about part of a request (a transaction's entry): that part's request, whose denial
        # the access log records once the request is over.
        self.refused_request: Any = None

    @property
    def code(self) -> str:
        return self.issues[0].code

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def invalid(diagnostics: str, expression: list[str] | None = None, code: str = "invalid") -> FhirError:
    return FhirError(400, code, diagnostics, expression)


def not_found(diagnostics: str) -> FhirError:
    return FhirError(404, "not-found", diagnostics)


def conflict(diagnostics: str) -> FhirError:
    return FhirError(409, "conflict", diagnostics)
