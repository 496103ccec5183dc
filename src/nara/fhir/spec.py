"""The FHIR R4 (4.0.1) model Nära runs on, loaded from the generated table in ``spec/r4.json.gz``.

The table is produced by ``tools/gen_r4_spec.py`` from the official R4 definitions. It holds, per
resource and datatype, each element's types, cardinality, reference targets and required code list,
the primitive formats, the search-parameter definitions and the Patient compartment.
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

import orjson

FHIR_VERSION = "4.0.1"

# Primitive types: JSON shape expected for each (the regex is checked separately).
JSON_STRING_PRIMITIVES = frozenset(
    {
        "base64Binary",
        "canonical",
        "code",
        "date",
        "dateTime",
        "id",
        "instant",
        "markdown",
        "oid",
        "string",
        "time",
        "uri",
        "url",
        "uuid",
        "xhtml",
    }
)
JSON_INT_PRIMITIVES = frozenset({"integer", "positiveInt", "unsignedInt"})


@dataclass(frozen=True, slots=True)
class ElementDef:
    """One element as it appears in JSON: ``valueQuantity`` is its own ElementDef with type Quantity."""

    name: str  # JSON property name
    path: str  # path inside its type, e.g. "component.value[x]"
    type: str  # the single FHIR type for this JSON name
    min: int
    many: bool
    codes: frozenset[str] | None = None
    targets: tuple[str, ...] = ()
    # For BackboneElements: the context path inside the owning type where children live.
    backbone: str | None = None


@dataclass(slots=True)
class TypeDef:
    name: str
    kind: str  # resource | complex-type
    abstract: bool
    base: str | None
    raw: dict[str, Any]
    # context path ("" for the type root) -> JSON name -> ElementDef
    contexts: dict[str, dict[str, ElementDef]] = field(default_factory=dict)
    # context path -> names of required (min >= 1) elements as declared (choice names with [x])
    required: dict[str, list[tuple[str, list[str]]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SearchParamDef:
    code: str
    base: tuple[str, ...]
    type: str
    expression: str | None
    target: tuple[str, ...] = ()
    component: tuple[tuple[str, str], ...] = ()


class Spec:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.primitive_patterns: dict[str, re.Pattern[str] | None] = {
            name: (re.compile(rx, re.ASCII) if rx else None) for name, rx in data["primitives"].items()
        }
        self.types: dict[str, TypeDef] = {}
        for name, t in data["types"].items():
            self.types[name] = TypeDef(name, t["kind"], t["abstract"], t["base"], t)
        self.resource_types: frozenset[str] = frozenset(
            n for n, t in self.types.items() if t.kind == "resource" and not t.abstract
        )
        self.patient_compartment: dict[str, tuple[str, ...]] = {
            k: tuple(v) for k, v in data["patientCompartment"].items()
        }
        self.search_params: list[SearchParamDef] = [
            SearchParamDef(
                code=s["code"],
                base=tuple(s["base"]),
                type=s["type"],
                expression=s.get("expression"),
                target=tuple(s.get("target", ())),
                component=tuple((c["code"], c["expression"]) for c in s.get("component", ())),
            )
            for s in data["searchParameters"]
        ]

    def is_primitive(self, type_name: str) -> bool:
        return type_name in self.primitive_patterns

    def context(self, type_name: str, ctx: str) -> dict[str, ElementDef]:
        """The JSON properties allowed in ``ctx`` (a backbone path, or "" for the root) of a type."""
        td = self.types[type_name]
        found = td.contexts.get(ctx)
        if found is None:
            found = self._build_context(td, ctx)
            td.contexts[ctx] = found
        return found

    def required(self, type_name: str, ctx: str) -> list[tuple[str, list[str]]]:
        td = self.types[type_name]
        if ctx not in td.required:
            self.context(type_name, ctx)
        return td.required[ctx]

    def _resolve_ref(self, elements: dict[str, Any], path: str) -> tuple[str, dict[str, Any]]:
        el = elements[path]
        while "ref" in el:
            path = el["ref"]
            el = elements[path]
        return path, el

    def _build_context(self, td: TypeDef, ctx: str) -> dict[str, ElementDef]:
        elements: dict[str, Any] = td.raw["elements"]
        # Inherited elements from abstract bases (Resource, DomainResource) for the root context.
        merged: dict[str, Any] = {}
        if ctx == "":
            chain: list[TypeDef] = []
            base = td.base
            while base and base in self.types:
                chain.append(self.types[base])
                base = self.types[base].base
            for b in reversed(chain):
                if b.kind == "resource":
                    merged.update({k: v for k, v in b.raw["elements"].items() if "." not in k})
        prefix = f"{ctx}." if ctx else ""
        for k, v in elements.items():
            if k.startswith(prefix) and "." not in k[len(prefix) :]:
                merged[k] = v
        out: dict[str, ElementDef] = {}
        req: list[tuple[str, list[str]]] = []
        for path, el in merged.items():
            local = path[len(prefix) :] if path.startswith(prefix) else path
            real_path, real = (path, el)
            if "ref" in el:
                real_path, real = self._resolve_ref(elements, path)
            many = el["max"] != "1"
            types: list[str] = real["t"]
            codes = frozenset(real["codes"]) if "codes" in real else None
            targets = tuple(real.get("targets", ()))
            if local.endswith("[x]"):
                stem = local[:-3]
                names = []
                for t in types:
                    jname = stem + t[0].upper() + t[1:]
                    names.append(jname)
                    out[jname] = ElementDef(jname, path, t, el["min"], many, None, targets)
                if el["min"] >= 1:
                    req.append((local, names))
            else:
                t = types[0] if types else "BackboneElement"
                backbone = real_path if t in ("BackboneElement", "Element") and real_path != "id" else None
                if backbone is not None and not any(k.startswith(real_path + ".") for k in elements):
                    backbone = None
                out[local] = ElementDef(local, path, t, el["min"], many, codes, targets, backbone)
                if el["min"] >= 1:
                    req.append((local, [local]))
        td.required[ctx] = req
        return out

    def params_for(self, resource_type: str) -> list[SearchParamDef]:
        return [p for p in self.search_params if resource_type in p.base or p.base[0] in ("Resource", "DomainResource")]


@cache
def spec() -> Spec:
    raw = resources.files("nara.fhir").joinpath("spec/r4.json.gz").read_bytes()
    return Spec(orjson.loads(gzip.decompress(raw)))
