"""Personnummer for synthetic people: Skatteverket's test numbers first, generated numbers as the fallback.

The test numbers (``testpersonnummer.txt``, one 12-digit number per line) are reserved for testing and belong
to nobody. The file is sparse before 1976, so a large population runs out of them: the pool then makes
Luhn-valid numbers itself, and those people are tagged (a generated number may coincide with a real person's).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from nara.fhir.identifiers import InvalidIdentifier, make_personal_identity, parse_personal_identity

ENV_PATH = "NARA_TESTPERSONNUMMER"
SEARCH_RADIUS_YEARS = 2


def default_path() -> Path | None:
    """``NARA_TESTPERSONNUMMER``, else ``../shared/data/testpersonnummer.txt`` next to the working directory."""
    configured = os.environ.get(ENV_PATH)
    if configured:
        return Path(configured)
    candidate = Path.cwd().parent / "shared" / "data" / "testpersonnummer.txt"
    return candidate if candidate.exists() else None


@dataclass
class PersonnummerPool:
    """Hands out unique numbers by (birth year, sex), deterministically for a given seed."""

    seed: int
    path: Path | None = None
    by_key: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    from_file: int = 0
    generated: int = 0
    available: int = 0

    def __post_init__(self) -> None:
        if self.path is None or not self.path.exists():
            return
        rng = random.Random(f"pnr-pool/{self.seed}")  # noqa: S311 (synthetic data)
        for line in self.path.read_text(encoding="ascii").splitlines():
            value = line.strip()
            if not value:
                continue
            try:
                pid = parse_personal_identity(value)
            except InvalidIdentifier:
                continue
            self.by_key.setdefault((pid.birth_date.year, pid.sex), []).append(pid.value)
            self.available += 1
        for values in self.by_key.values():
            values.sort()
            rng.shuffle(values)

    @property
    def has_file(self) -> bool:
        return self.available > 0

    def take(self, birth: date, sex: str, rng: random.Random) -> tuple[str, bool]:
        """A number for someone born around ``birth``: (value, True) from the test file, or (value, False) generated.

        A test number's own birth date wins: the person's birth date becomes the one in the number (within
        :data:`SEARCH_RADIUS_YEARS` of the wanted year, nearest year first).
        """
        for delta in (0, *(d for k in range(1, SEARCH_RADIUS_YEARS + 1) for d in (-k, k))):
            values = self.by_key.get((birth.year + delta, sex))
            if values:
                value = values.pop()
                self.used.add(value)
                self.from_file += 1
                return value, True
        for _ in range(50):
            serial = rng.randrange(0, 1000)
            if (serial % 2 == 1) != (sex == "male"):
                serial = (serial + 1) % 1000
            value = make_personal_identity(birth, serial)
            if value not in self.used:
                self.used.add(value)
                self.generated += 1
                return value, False
        raise RuntimeError(f"No free personnummer for {birth}")
