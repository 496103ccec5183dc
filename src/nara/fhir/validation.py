"""Structural validation of FHIR R4 JSON against the base specification.

Checks, for every element of a resource (and of contained and nested resources): that it is defined
for its type, that its JSON shape matches its datatype and cardinality (array or single value), that
primitives have the spec's format (dates, ids, codes, ...), that required elements are present,
that choice elements (``value[x]``) carry at most one type, that codes with a *required* binding to
a closed list are in that list, and that literal references point at an allowed resource type.

Every Identifier, wherever the resource has one (``Patient.identifier``, ``Reference.identifier``, an
extension's ``valueIdentifier``), is also checked by the Swedish rules of :mod:`nara.fhir.identifiers`: a
personnummer or samordningsnummer must pass R-ID-1, and :func:`check` puts identifiers in the form they are
stored in (12 digits under the HL7 Sweden URI; an HSA-id under one system: R-ID-1, R-ID-2).

Profiles, FHIRPath invariants and terminology-server bindings are out of scope here (see
docs/adr/0002-validator.md for the choice of a table-driven walker over a JSON-schema engine).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from nara.fhir.identifiers import InvalidIdentifier, stored_identifier
from nara.fhir.outcome import FhirError, Issue
from nara.fhir.spec import JSON_INT_PRIMITIVES, JSON_STRING_PRIMITIVES, ElementDef, Spec, spec

ID_RE = re.compile(r"[A-Za-z0-9\-\.]{1,64}")
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
MAX_ISSUES = 50
# Where and how the version a write replaces writes its identifiers (``identifiers.written_identifiers``: path
# without list positions, system, value), asked for when needed.
Kept = Callable[[], frozenset[tuple[str, str, str]]]
_POSITIONS = re.compile(r"\[\d+\]")
REFERENCE_RE = re.compile(r"([A-Z][A-Za-z]+)/[A-Za-z0-9\-\.]{1,64}(/_history/[A-Za-z0-9\-\.]{1,64})?")


# Kinds of JSON property, decided once per element definition (see _Field).
_STRING, _XHTML, _BOOLEAN, _DECIMAL, _INTEGER, _RESOURCE, _COMPLEX, _BACKBONE, _UNSUPPORTED = range(9)


class _Field:
    """One JSON property of a type or backbone context, with everything its check needs precomputed."""

    __slots__ = (
        "child",
        "choice",
        "codes",
        "el",
        "identifier",
        "kind",
        "name",
        "pattern",
        "shape_key",
        "targets",
        "type",
    )

    def __init__(self, el: ElementDef, owner: str, sp: Spec) -> None:
        t = el.type
        self.el = el
        self.name = el.name
        self.type = t
        self.choice = el.path if el.path.endswith("[x]") else None
        self.codes = el.codes
        self.pattern = sp.primitive_patterns.get(t)
        self.targets = el.targets if t == "Reference" and el.targets and "Resource" not in el.targets else None
        self.identifier = t == "Identifier"
        self.shape_key: tuple[str, str] | None = None
        self.child: _Shape | None = None  # the shape of a complex value, resolved on first use
        if sp.is_primitive(t):
            if t in JSON_STRING_PRIMITIVES:
                self.kind = _XHTML if t == "xhtml" else _STRING
            elif t == "boolean":
                self.kind = _BOOLEAN
            elif t == "decimal":
                self.kind = _DECIMAL
            elif t in JSON_INT_PRIMITIVES:
                self.kind = _INTEGER
            else:
                self.kind = _STRING
        elif t == "Resource" or t in sp.resource_types:
            self.kind = _RESOURCE
        elif el.backbone is not None:
            self.kind = _BACKBONE
            self.shape_key = (owner, el.backbone)
        elif t in sp.types:
            self.kind = _COMPLEX
            self.shape_key = (t, "")
        else:
            self.kind = _UNSUPPORTED


class _Shape:
    """The allowed properties and required elements of one type (or backbone context)."""

    __slots__ = ("fields", "owner", "required")

    def __init__(self, type_name: str, ctx: str, sp: Spec) -> None:
        allowed = sp.context(type_name, ctx)
        self.owner = type_name
        self.fields = {name: _Field(el, type_name, sp) for name, el in allowed.items()}
        # (element name, JSON keys that satisfy it: each alternative and its "_" primitive extension)
        self.required = tuple(
            (name, tuple(k for a in alternatives for k in (a, "_" + a)))
            for name, alternatives in sp.required(type_name, ctx)
        )


class _Walker:
    __slots__ = ("issues", "kept", "kept_pairs", "normalised", "shapes", "spec")

    def __init__(self, sp: Spec, shapes: dict[tuple[str, str], _Shape], kept: Kept | None = None) -> None:
        self.spec = sp
        self.shapes = shapes
        self.issues: list[Issue] = []
        # (an Identifier of the resource, its stored form) for each one whose stored form differs
        self.normalised: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.kept = kept  # the identifiers the stored version has, asked for when one would be changed or refused
        self.kept_pairs: frozenset[tuple[str, str, str]] | None = None

    def error(self, code: str, message: str, path: str) -> None:
        if len(self.issues) < MAX_ISSUES:
            self.issues.append(Issue("error", code, message, [path]))

    def shape(self, key: tuple[str, str]) -> _Shape:
        found = self.shapes.get(key)
        if found is None:
            found = self.shapes[key] = _Shape(key[0], key[1], self.spec)
        return found

    # -- resources -------------------------------------------------------------------------
    def resource(self, res: Any, path: str, expected: str | None = None) -> None:
        if not isinstance(res, dict):
            self.error("structure", "A resource must be a JSON object", path)
            return
        rtype = res.get("resourceType")
        if not isinstance(rtype, str) or rtype not in self.spec.resource_types:
            self.error("structure", f"Unknown or missing resourceType {rtype!r}", path)
            return
        if expected is not None and rtype != expected:
            self.error("invalid", f"Expected a {expected} resource, got {rtype}", path)
            return
        base = rtype if path in ("", rtype) else path
        rid = res.get("id")
        if rid is not None and (not isinstance(rid, str) or not ID_RE.fullmatch(rid)):
            self.error("value", "Resource id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'", base + ".id")
        self.complex(res, self.shape((rtype, "")), base, is_resource=True)

    # -- complex values --------------------------------------------------------------------
    def complex(self, obj: dict[str, Any], shape: _Shape, path: str, is_resource: bool = False) -> None:
        fields = shape.fields
        if not obj and not is_resource:
            self.error("structure", "Empty objects are not allowed in FHIR JSON", path)
        seen_choice: dict[str, str] | None = None
        for key, value in obj.items():
            f = fields.get(key)
            if f is None:
                if key == "resourceType" and is_resource:
                    continue
                if key.startswith("_"):
                    self.primitive_extension(key, value, fields, path)
                else:
                    self.error("structure", f"Unknown element '{key}'", f"{path}.{key}")
                continue
            if f.choice is not None:
                if seen_choice is None:
                    seen_choice = {}
                prev = seen_choice.get(f.choice)
                if prev is not None:
                    self.error(
                        "structure",
                        f"Only one of '{prev}' and '{key}' may be present (choice element)",
                        f"{path}.{key}",
                    )
                seen_choice[f.choice] = key
            if f.el.many:
                if type(value) is not list:
                    self.error("structure", f"Element '{key}' must be an array", f"{path}.{key}")
                    continue
                if not value:
                    self.error("structure", f"Array '{key}' must not be empty", f"{path}.{key}")
                    continue
                for i, item in enumerate(value):
                    if item is None:
                        companion = obj.get("_" + key)
                        has_ext = isinstance(companion, list) and i < len(companion) and companion[i] is not None
                        if not has_ext:
                            self.error("structure", "Null array items need a matching extension", f"{path}.{key}[{i}]")
                        continue
                    self.value(f, item, path, key, i)
            else:
                if value is None:
                    self.error("structure", f"Element '{key}' must not be null", f"{path}.{key}")
                elif type(value) is list:
                    self.error("structure", f"Element '{key}' must not be an array", f"{path}.{key}")
                else:
                    self.value(f, value, path, key, -1)
        for name, keys in shape.required:
            for k in keys:
                if k in obj:
                    break
            else:
                self.error("required", f"Missing required element '{name}'", f"{path}.{name}")

    def value(self, f: _Field, value: Any, parent: str, key: str, index: int) -> None:
        """Check one value of field ``f``; its path (``parent.key[index]``) is built only when needed."""
        kind = f.kind
        if kind == _STRING:
            if type(value) is not str:
                self.error("value", f"Expected a JSON string for {f.type}", _path(parent, key, index))
            elif not value or (f.type != "string" and value.isspace()):
                self.error("value", f"Empty or blank value for {f.type}", _path(parent, key, index))
            elif f.pattern is not None and not f.pattern.fullmatch(value):
                self.error("value", f"Invalid {f.type} value {value[:80]!r}", _path(parent, key, index))
            elif f.codes is not None and value not in f.codes:
                self.error(
                    "code-invalid", f"Code {value[:80]!r} is not in the required value set", _path(parent, key, index)
                )
            return
        if kind in (_COMPLEX, _BACKBONE):
            path = _path(parent, key, index)
            if type(value) is not dict:
                self.error("structure", f"Element '{key}' must be a JSON object ({f.type})", path)
                return
            child = f.child
            if child is None:
                child = f.child = self.shape(f.shape_key)  # type: ignore[arg-type]
            self.complex(value, child, path)
            if f.identifier:
                self.identifier(value, path)
            elif f.targets is not None:
                ref = value.get("reference")
                if isinstance(ref, str):
                    m = REFERENCE_RE.fullmatch(ref)
                    if m and m.group(1) not in f.targets:
                        self.error(
                            "invalid",
                            f"Reference to {m.group(1)} is not allowed here (allowed: {', '.join(f.targets)})",
                            path + ".reference",
                        )
            return
        if kind == _BOOLEAN:
            if type(value) is not bool:
                self.error("value", "Expected true or false", _path(parent, key, index))
        elif kind == _DECIMAL:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.error("value", "Expected a JSON number for decimal", _path(parent, key, index))
        elif kind == _INTEGER:
            self.integer(f.type, value, _path(parent, key, index))
        elif kind == _XHTML:
            if type(value) is not str:
                self.error("value", "Expected a JSON string for xhtml", _path(parent, key, index))
            elif not value.lstrip().startswith("<div"):
                self.error("value", "Narrative div must be an XHTML <div> element", _path(parent, key, index))
        elif kind == _RESOURCE:
            self.resource(value, _path(parent, key, index), None if f.type == "Resource" else f.type)
        else:
            self.error("structure", f"Unsupported datatype {f.type}", _path(parent, key, index))

    def identifier(self, value: dict[str, Any], path: str) -> None:
        """Check an Identifier by the Swedish rule its system names and note its stored form when it differs."""
        system = value.get("system")
        if system is None or type(system) is not str:
            return  # no system: nothing to check it by (a missing or wrong-typed one is reported above)
        try:
            stored = stored_identifier(value)
        except InvalidIdentifier as e:
            if not self.was_stored(system, value, path):
                self.error("value", str(e), path + ".value")
            return
        if stored != value and not self.was_stored(system, value, path):
            self.normalised.append((value, stored))

    def was_stored(self, system: str, value: dict[str, Any], path: str) -> bool:
        """Whether the version before already has this identifier exactly as written, in the same place: R-ID-1
        applies to the numbers a write brings, not to one it keeps (read again on another day, a 10-digit form
        could name another person; a writer cannot be refused for a number it did not send)."""
        if self.kept is None:
            return False
        if self.kept_pairs is None:
            self.kept_pairs = self.kept()
        return (_POSITIONS.sub("", path), system, value.get("value")) in self.kept_pairs

    def integer(self, t: str, value: Any, path: str) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            self.error("value", f"Expected a JSON integer for {t}", path)
        elif not INT32_MIN <= value <= INT32_MAX:
            self.error("value", f"{t} out of 32-bit range", path)
        elif t == "positiveInt" and value < 1:
            self.error("value", "positiveInt must be >= 1", path)
        elif t == "unsignedInt" and value < 0:
            self.error("value", "unsignedInt must be >= 0", path)

    def primitive_extension(self, key: str, value: Any, fields: dict[str, _Field], path: str) -> None:
        f = fields.get(key[1:])
        if f is None or not self.spec.is_primitive(f.type):
            self.error("structure", f"Unknown element '{key}'", f"{path}.{key}")
            return
        many = f.el.many
        items = value if many and isinstance(value, list) else [value]
        element = self.shape(("Element", ""))
        for i, item in enumerate(items):
            p = f"{path}.{key}[{i}]" if many else f"{path}.{key}"
            if item is None and many:
                continue
            if not isinstance(item, dict):
                self.error("structure", "Primitive extension must be a JSON object", p)
                continue
            self.complex(item, element, p)


def _path(parent: str, key: str, index: int) -> str:
    return f"{parent}.{key}" if index < 0 else f"{parent}.{key}[{index}]"


_SHAPES: dict[tuple[str, str], _Shape] = {}


def _walk(resource: Any, expected_type: str | None, kept: Kept | None = None) -> _Walker:
    walker = _Walker(spec(), _SHAPES, kept)
    try:
        walker.resource(resource, "", expected_type)
    except RecursionError:
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        walker.issues = [
            Issue("error", "structure", "The resource is nested too deeply to process", [str(rtype or "")])
        ]
    return walker


def validate(resource: Any, expected_type: str | None = None) -> list[Issue]:
    """All problems in ``resource`` (an empty list when it is valid R4 and its Swedish identifiers pass)."""
    return _walk(resource, expected_type).issues


def check(resource: Any, expected_type: str | None = None, kept: Kept | None = None) -> None:
    """Raise a 400 FhirError listing every problem; when the resource is valid, put each of its Swedish
    identifiers in its stored form (in place: a personnummer written ``YYYYMMDD-NNNC`` or under the RIV OID
    becomes 12 digits under the URI) and return. For a new version, ``kept`` gives where and how the version
    before writes its identifiers (``written_identifiers``: path, system, value); one of those, exactly as written
    and in the same place, is left as it is."""
    walker = _walk(resource, expected_type, kept)
    if walker.issues:
        issues = walker.issues
        raise FhirError(400, issues[0].code, issues[0].diagnostics, issues=issues)
    for identifier, stored in walker.normalised:
        identifier.clear()
        identifier.update(stored)
