"""The canonical base of Nära's own code systems, extensions and operations (one home, configurable).

``NARA_CANONICAL_BASE`` (default ``https://nara.se/fhir``) is read once at import; every module that names
one of our systems builds it from :data:`BASE`.
"""

from __future__ import annotations

import os


def canonical_base() -> str:
    return os.environ.get("NARA_CANONICAL_BASE", "https://nara.se/fhir").rstrip("/")


BASE = canonical_base()
