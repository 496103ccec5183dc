"""A bounded memo for SQL objects built once and reused by every request that needs the same one.

The store and the access policy build statements and filters per *shape* (kind of actor, table, row
filter), not per request, so that SQLAlchemy's compiled cache and PostgreSQL's prepared statements are hit
(docs/adr/0003-access-policy-in-sql.md). The number of shapes is small but not fixed in code, so each such
cache is bounded: when full it is emptied and refills with the shapes still in use.

Written here rather than taken from ``functools.lru_cache`` or cachetools: the keys are identities of SQL
objects (``ColumnElement`` overloads ``==`` to build SQL, so they cannot be compared as arguments), the
value is built by the caller from its own context, and a hit must stay one dictionary look-up on the hot
path of every read and search, without a lock (a dictionary's get and set are atomic; two threads that
miss at once both build the same equivalent value, and either may be kept).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class Memo(Generic[K, V]):
    """At most ``size`` values by key, each built by the first caller that asks for it (None is a value)."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("a memo holds at least one value")
        self.size = size
        self._values: dict[K, V] = {}

    def get(self, key: K, build: Callable[[], V]) -> V:
        """The value for ``key``, built by ``build()`` and kept if it is not there yet."""
        try:
            return self._values[key]
        except KeyError:
            pass
        value = build()
        if len(self._values) >= self.size:
            self._values.clear()
        self._values[key] = value
        return value

    def __len__(self) -> int:
        return len(self._values)
