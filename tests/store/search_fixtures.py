"""Helpers for the search tests: load resources through the store and run FHIR queries on it."""

from __future__ import annotations

from typing import Any

from nara.fhir.query import QueryParser, parse_pairs
from nara.store.search import RowFilter, Searcher, SearchResult
from nara.store.store import Store


def load(store: Store, *resources: dict[str, Any]) -> None:
    """Store resources with their own ids (update-as-create), in one transaction."""
    with store.transaction() as tx:
        for res in resources:
            tx.update(res["resourceType"], res["id"], res)


def search(
    store: Store,
    rtype: str | None,
    query: str = "",
    *,
    strict: bool = False,
    compartment: tuple[str, str] | None = None,
    row_filter: RowFilter | None = None,
    base_url: str | None = "http://nara.test/fhir",
) -> SearchResult:
    s = store.settings
    with store.transaction(write=False) as tx:
        q = QueryParser(s.max_chain_depth, s.max_or_values).parse(rtype, parse_pairs(query), strict=strict)
        return Searcher(tx, base_url, row_filter).search(q, compartment)


def ids(store: Store, rtype: str | None, query: str = "", **kw: Any) -> list[str]:
    """The ids of the first page of matches, in result order."""
    return [m.res_id for m in search(store, rtype, query, **kw).matches]


def idset(store: Store, rtype: str | None, query: str = "", **kw: Any) -> set[str]:
    query = query + ("&" if query else "") + "_count=1000"
    return set(ids(store, rtype, query, **kw))
