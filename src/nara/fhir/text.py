"""String normalisation for FHIR string search: case- and accent-insensitive (``Åsa`` matches ``asa``)."""

from __future__ import annotations

import unicodedata
from functools import lru_cache

MAX_INDEXED_STRING = 255


@lru_cache(maxsize=8192)
def normalize(value: str) -> str:
    """Lower-case, accent-free, whitespace-collapsed form used for ``string`` search parameters.

    Cached: the same names, displays and code texts recur across a store's resources."""
    decomposed = unicodedata.normalize("NFKD", value)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())[:MAX_INDEXED_STRING]
