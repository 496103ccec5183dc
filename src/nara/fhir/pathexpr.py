"""A compiler for the FHIRPath subset that the R4 search-parameter expressions use.

The R4 search parameters are defined by FHIRPath expressions such as
``Observation.subject.where(resolve() is Patient)`` or ``(Observation.value as Quantity)``. Running a
general FHIRPath interpreter on every write is slow, so each expression is compiled once, per
resource type, into a chain of small functions over the JSON. Element names are resolved against the
R4 model at compile time (so ``Observation.effective`` becomes a look-up of ``effectiveDateTime``,
``effectivePeriod``, ... with their types known), and only the filters that need the data
(``where(system='email')``, ``resolve() is Patient``) run per resource.

Supported: paths, ``|`` unions, parentheses, ``as``/``ofType`` type filters, ``where(field='literal')``,
``where(resolve() is Type)`` and the indexer ``[n]``. Anything else raises ``UnsupportedExpression``;
those parameters are not offered (the CapabilityStatement lists only what compiles).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nara.fhir.spec import Spec

Shape = tuple[str, str]  # (FHIR type, backbone context path; "" at a type's root)
Node = tuple[Any, Shape]
Evaluator = Callable[[list[Node], dict[str, Any]], list[Node]]


class UnsupportedExpression(ValueError):
    pass


_TOKEN_RE = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+)|(?P<id>[A-Za-z_][A-Za-z0-9_]*|`[^`]+`)"
    r"|(?P<op>!=|[.()|=\[\]%]))"
)


def _tokenize(expr: str) -> list[str]:
    pos, out = 0, []
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN_RE.match(expr, pos)
        if not m or m.end() == pos:
            raise UnsupportedExpression(f"cannot tokenize {expr[pos:]!r}")
        out.append(m.group(m.lastgroup or "op"))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


# ---- AST --------------------------------------------------------------------------------------
@dataclass
class Path:
    head: str | None  # a type name (``Observation``) or None for a relative path
    steps: list[Any]


@dataclass
class Union:
    parts: list[Any]


@dataclass
class Step:
    name: str


@dataclass
class AsType:
    type: str


@dataclass
class WhereEq:
    field: str
    literal: str


@dataclass
class WhereResolveIs:
    type: str


@dataclass
class Index:
    n: int


@dataclass
class Chain:
    base: Any  # a parenthesised expression
    steps: list[Any]


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.t[j] if j < len(self.t) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise UnsupportedExpression(f"expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def parse(self) -> Any:
        node = self.union()
        if self.peek() is not None:
            raise UnsupportedExpression(f"unexpected {self.peek()!r}")
        return node

    def union(self) -> Any:
        parts = [self.typed()]
        while self.peek() == "|":
            self.take("|")
            parts.append(self.typed())
        return parts[0] if len(parts) == 1 else Union(parts)

    def typed(self) -> Any:
        node = self.term()
        while self.peek() in ("as", "is"):
            op = self.take()
            if op == "is":
                raise UnsupportedExpression("'is' outside resolve()")
            tname = self.take()
            node = Chain(node, [AsType(tname)])
        return node

    def term(self) -> Any:
        if self.peek() == "(":
            self.take("(")
            inner = self.union()
            self.take(")")
            return Chain(inner, self.steps())
        if self.peek() == "%":
            raise UnsupportedExpression("environment variables")
        first = self.take()
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", first):
            raise UnsupportedExpression(f"unexpected {first!r}")
        if first[0].isupper():
            return Path(first, self.steps())
        self.i -= 1
        return Path(None, self.steps(relative=True))

    def steps(self, relative: bool = False) -> list[Any]:
        out: list[Any] = []
        first = relative
        while True:
            if first:
                first = False
            elif self.peek() == ".":
                self.take(".")
            elif self.peek() == "[":
                self.take("[")
                n = int(self.take())
                self.take("]")
                out.append(Index(n))
                continue
            else:
                return out
            name = self.take().strip("`")
            if self.peek() == "(":
                self.take("(")
                out.append(self.function(name))
                self.take(")")
            else:
                out.append(Step(name))

    def function(self, name: str) -> Any:
        if name in ("as", "ofType"):
            return AsType(self.take())
        if name == "where":
            if self.peek() == "resolve":
                self.take("resolve")
                self.take("(")
                self.take(")")
                self.take("is")
                return WhereResolveIs(self.take())
            fld = self.take()
            self.take("=")
            lit = self.take()
            if not lit.startswith("'"):
                raise UnsupportedExpression("where() with a non-string literal")
            return WhereEq(fld, lit[1:-1])
        raise UnsupportedExpression(f"function {name}()")


def parse(expr: str) -> Any:
    return _Parser(_tokenize(expr)).parse()


def split_union(expr: str) -> list[str]:
    """The top-level ``|`` branches of an expression (outside parentheses and string literals)."""
    parts, depth, quoted, start = [], 0, False, 0
    for i, ch in enumerate(expr):
        if ch == "'" and (i == 0 or expr[i - 1] != "\\"):
            quoted = not quoted
        elif quoted:
            continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            parts.append(expr[start:i].strip())
            start = i + 1
    parts.append(expr[start:].strip())
    return parts


# ---- compilation ------------------------------------------------------------------------------
def reference_type(ref: str, root: dict[str, Any] | None = None) -> str | None:
    """The resource type a literal reference points at (``Patient/1``, ``http://x/Patient/1``, ``#c``)."""
    if ref.startswith("#"):
        if root is not None:
            for c in root.get("contained", ()):
                if isinstance(c, dict) and c.get("id") == ref[1:]:
                    return c.get("resourceType")
        return None
    parts = ref.split("?", 1)[0].split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    if len(parts) >= 2 and parts[-2][:1].isupper():
        return parts[-2]
    if len(parts) == 1 and "?" in ref and ref[:1].isupper():
        return ref.split("?", 1)[0]
    return None


class Compiler:
    def __init__(self, sp: Spec) -> None:
        self.spec = sp

    def _norm_type(self, name: str) -> str:
        if name in self.spec.types or self.spec.is_primitive(name):
            return name
        lowered = name[0].lower() + name[1:]
        if self.spec.is_primitive(lowered):
            return lowered
        raise UnsupportedExpression(f"unknown type {name}")

    def compile(self, expr: str, resource_type: str) -> Evaluator | None:
        """An evaluator for ``expr`` applied to a ``resource_type`` resource, or None if no branch applies."""
        return self._compile(parse(expr), {(resource_type, "")}, resource_type)

    def compile_relative(self, expr: str, shapes: set[Shape]) -> Evaluator | None:
        return self._compile(parse(expr), shapes, None)

    def _compile(self, node: Any, shapes: set[Shape], rtype: str | None) -> Evaluator | None:
        fn, _ = self._node(node, shapes, rtype)
        return fn

    def _node(self, node: Any, shapes: set[Shape], rtype: str | None) -> tuple[Evaluator | None, set[Shape]]:
        if isinstance(node, Union):
            fns: list[Evaluator] = []
            out_shapes: set[Shape] = set()
            for part in node.parts:
                f, s = self._node(part, shapes, rtype)
                if f is not None:
                    fns.append(f)
                    out_shapes |= s
            if not fns:
                return None, set()
            if len(fns) == 1:
                return fns[0], out_shapes

            def union(nodes: list[Node], root: dict[str, Any], fns: list[Evaluator] = fns) -> list[Node]:
                res: list[Node] = []
                for f in fns:
                    res.extend(f(nodes, root))
                return res

            return union, out_shapes
        if isinstance(node, Chain):
            base_fn, cur = self._node(node.base, shapes, rtype)
            if base_fn is None:
                return None, set()
            return self._steps(node.steps, cur, base_fn)
        if isinstance(node, Path):
            if node.head is not None:
                if rtype is not None and node.head in ("Resource", "DomainResource"):
                    pass
                elif node.head != rtype:
                    return None, set()
            return self._steps(node.steps, shapes, None)
        raise UnsupportedExpression(type(node).__name__)

    def _step_fns(self, steps: list[Any], shapes: set[Shape]) -> tuple[list[tuple[str, Evaluator]] | None, set[Shape]]:
        """One evaluator per step, each with the step's text (None when a step cannot apply)."""
        out: list[tuple[str, Evaluator]] = []
        for st in steps:
            if isinstance(st, Step):
                table: dict[Shape, list[tuple[str, Shape]]] = {}
                new_shapes: set[Shape] = set()
                for shape in shapes:
                    entries = self._lookup(shape, st.name)
                    if entries:
                        table[shape] = entries
                        new_shapes |= {s for _, s in entries}
                if not table:
                    return None, set()
                out.append((f".{st.name}", _make_step(table)))
                shapes = new_shapes
            elif isinstance(st, AsType):
                want = self._norm_type(st.type)
                kept = {s for s in shapes if s[0] == want or self._derives(s[0], want)}
                if not kept:
                    return None, set()
                out.append((f".as({st.type})", _make_filter_type(frozenset(kept))))
                shapes = kept
            elif isinstance(st, WhereEq):
                out.append((f".where({st.field}='{st.literal}')", _make_where_eq(st.field, st.literal)))
            elif isinstance(st, WhereResolveIs):
                out.append((f".where(resolve() is {st.type})", _make_resolve_is(st.type)))
            elif isinstance(st, Index):
                out.append((f"[{st.n}]", _make_index(st.n)))
            else:  # pragma: no cover - parser produces only the above
                raise UnsupportedExpression(type(st).__name__)
        return out, shapes

    def stages(self, expr: str, resource_type: str) -> list[tuple[str, Evaluator]] | None:
        """A branch without unions as a list of (path-so-far, one-step evaluator).

        Extraction memoises each path-so-far per resource, so branches that share a prefix
        (``Observation.component`` under a dozen parameters) walk it once. None when the branch is not
        a plain path (then it is evaluated whole) or does not apply to ``resource_type``.
        """
        node = parse(expr)
        steps: list[Any] = []
        while isinstance(node, Chain):
            steps = node.steps + steps
            node = node.base
        if not isinstance(node, Path) or node.head is None:
            return None
        if node.head not in (resource_type, "Resource", "DomainResource"):
            return None
        fns, _ = self._step_fns(node.steps + steps, {(resource_type, "")})
        if fns is None:
            return None
        out, key = [], resource_type
        for text, fn in fns:
            key += text
            out.append((key, fn))
        return out

    def _steps(
        self, steps: list[Any], shapes: set[Shape], start: Evaluator | None
    ) -> tuple[Evaluator | None, set[Shape]]:
        step_fns, shapes = self._step_fns(steps, shapes)
        if step_fns is None:
            return None, set()
        fns: list[Evaluator] = ([start] if start is not None else []) + [fn for _, fn in step_fns]
        if not fns:
            return (lambda nodes, root: nodes), shapes

        def chain(nodes: list[Node], root: dict[str, Any], fns: list[Evaluator] = fns) -> list[Node]:
            for f in fns:
                if not nodes:
                    return nodes
                nodes = f(nodes, root)
            return nodes

        return chain, shapes

    def root_keys(self, expr: str, resource_type: str) -> frozenset[str] | None:
        """The top-level JSON properties ``expr`` can read on a ``resource_type`` resource.

        A resource without any of them yields nothing for the expression, so extraction can skip it.
        None means the expression starts at the resource itself (``Observation``) or cannot be told.
        """
        return self._root_keys(parse(expr), resource_type, relative=False)

    def relative_root_keys(self, expr: str, resource_type: str) -> frozenset[str] | None:
        """Like :meth:`root_keys` for a path relative to the resource root (a composite component)."""
        return self._root_keys(parse(expr), resource_type, relative=True)

    def _root_keys(self, node: Any, rtype: str, relative: bool) -> frozenset[str] | None:
        if isinstance(node, Union):
            out: set[str] = set()
            for part in node.parts:
                keys = self._root_keys(part, rtype, relative)
                if keys is None:
                    return None
                out |= keys
            return frozenset(out)
        if isinstance(node, Chain):
            return self._root_keys(node.base, rtype, relative)
        if isinstance(node, Path):
            if node.head is None and not relative:
                return None
            if node.head is not None and node.head not in (rtype, "Resource", "DomainResource"):
                return frozenset()  # a branch for another resource type
            if not node.steps or not isinstance(node.steps[0], Step):
                return None
            return frozenset(name for name, _ in self._lookup((rtype, ""), node.steps[0].name))
        return None

    def _derives(self, tname: str, want: str) -> bool:
        td = self.spec.types.get(tname)
        while td is not None and td.base:
            if td.base == want:
                return True
            td = self.spec.types.get(td.base)
        return False

    def _lookup(self, shape: Shape, name: str) -> list[tuple[str, Shape]]:
        tname, ctx = shape
        if tname not in self.spec.types:
            return []  # primitives have no children we index
        allowed = self.spec.context(tname, ctx)
        el = allowed.get(name)
        if el is not None:
            if el.backbone is not None:
                return [(name, (tname, el.backbone))]
            return [(name, (el.type, ""))]
        out = []
        for jname, e in allowed.items():
            if e.path.endswith("[x]") and e.path.rsplit(".", 1)[-1][:-3] == name:
                out.append((jname, (e.type, "")))
        return out


def _make_step(table: dict[Shape, list[tuple[str, Shape]]]) -> Evaluator:
    def step(nodes: list[Node], root: dict[str, Any]) -> list[Node]:
        out: list[Node] = []
        for value, shape in nodes:
            entries = table.get(shape)
            if not entries or not isinstance(value, dict):
                continue
            for key, oshape in entries:
                x = value.get(key)
                if x is None:
                    continue
                if isinstance(x, list):
                    out.extend((i, oshape) for i in x if i is not None)
                else:
                    out.append((x, oshape))
        return out

    return step


def _make_filter_type(kept: frozenset[Shape]) -> Evaluator:
    return lambda nodes, root: [n for n in nodes if n[1] in kept]


def _make_where_eq(field: str, literal: str) -> Evaluator:
    return lambda nodes, root: [n for n in nodes if isinstance(n[0], dict) and n[0].get(field) == literal]


def _make_resolve_is(type_name: str) -> Evaluator:
    def resolve_is(nodes: list[Node], root: dict[str, Any]) -> list[Node]:
        out = []
        for n in nodes:
            v = n[0]
            if not isinstance(v, dict):
                continue
            ref = v.get("reference")
            if isinstance(ref, str):
                if reference_type(ref, root) == type_name:
                    out.append(n)
            elif v.get("type") == type_name:
                out.append(n)
        return out

    return resolve_is


def _make_index(i: int) -> Evaluator:
    return lambda nodes, root: nodes[i : i + 1]


def evaluate(fn: Evaluator, resource: dict[str, Any], resource_type: str) -> list[Node]:
    return fn([(resource, (resource_type, ""))], resource)
