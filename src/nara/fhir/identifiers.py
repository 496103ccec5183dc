"""Swedish identifiers: personnummer, samordningsnummer (R-ID-1), HSA-ids (R-ID-2), organisation numbers.

Personnummer and samordningsnummer are stored as 12 digits (YYYYMMDDNNNC) without separator. The last
digit is a Luhn check digit over the 10-digit form YYMMDDNNN (Skatteverket SKV 704). A samordningsnummer
has the day of birth plus 60 (61-91). HSA-ids arrive under two OIDs and are stored under one system.
Pure functions, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

PERSONNUMMER = "http://electronichealth.se/identifier/personnummer"
SAMORDNINGSNUMMER = "http://electronichealth.se/identifier/samordningsnummer"
# RIV-TA / HL7v3 OIDs for the same two identifiers (R-ID-2).
PERSONNUMMER_OID = "1.2.752.129.2.1.3.1"
SAMORDNINGSNUMMER_OID = "1.2.752.129.2.1.3.3"

HSA_ID = "urn:oid:1.2.752.29.4.19"  # the one system HSA-ids are stored under
HSA_ID_RIV = "urn:oid:1.2.752.129.2.1.4.1"  # Inera RIV-TA's OID, accepted on input
ORGANISATION_NUMBER = "urn:oid:2.5.4.97"

_SYSTEM_ALIASES = {
    PERSONNUMMER_OID: PERSONNUMMER,
    "urn:oid:" + PERSONNUMMER_OID: PERSONNUMMER,
    SAMORDNINGSNUMMER_OID: SAMORDNINGSNUMMER,
    "urn:oid:" + SAMORDNINGSNUMMER_OID: SAMORDNINGSNUMMER,
    HSA_ID_RIV: HSA_ID,
    HSA_ID_RIV.removeprefix("urn:oid:"): HSA_ID,
    HSA_ID.removeprefix("urn:oid:"): HSA_ID,
}

# The systems of a personal identity number (personnummer, samordningsnummer), as stored.
PERSONAL_SYSTEMS = frozenset({PERSONNUMMER, SAMORDNINGSNUMMER})


def written_systems(system: str) -> frozenset[str]:
    """Every form a stored system is written in on input (the stored URI and the OIDs it normalises from)."""
    return frozenset({system, *(alias for alias, to in _SYSTEM_ALIASES.items() if to == system)})


_PERSON_RE = re.compile(r"(?:(\d{2}))?(\d{2})(\d{2})(\d{2})([-+]?)(\d{3})(\d)")
# SE + organisation number (10 digits, optionally prefixed by a 2-digit country/series code) + '-' + local part.
_HSA_RE = re.compile(r"SE\d{10}(?:\d{2})?-[A-Z0-9]{1,20}")
_ORGNR_RE = re.compile(r"(\d{6})-?(\d{4})")

PersonIdKind = Literal["personnummer", "samordningsnummer"]


class InvalidIdentifier(ValueError):
    """An identifier value that is malformed or fails its check digit; the message says why."""


def luhn_check_digit(digits: str) -> int:
    """The Luhn check digit for ``digits`` (weights 2,1,2,1,... from the left, as for personnummer)."""
    total = 0
    for i, ch in enumerate(digits):
        product = int(ch) * (2 if i % 2 == 0 else 1)
        total += product // 10 + product % 10
    return (10 - total % 10) % 10


def luhn_valid(ten_digits: str) -> bool:
    """Whether a 10-digit number (YYMMDDNNNC or an organisation number) carries a correct check digit."""
    return len(ten_digits) == 10 and ten_digits.isdigit() and luhn_check_digit(ten_digits[:9]) == int(ten_digits[9])


@dataclass(frozen=True, slots=True)
class PersonalIdentity:
    """A checked personnummer or samordningsnummer."""

    value: str  # 12 digits, no separator
    kind: PersonIdKind
    birth_date: date
    sex: Literal["male", "female"]  # legal sex from the third digit of the birth number

    @property
    def system(self) -> str:
        return PERSONNUMMER if self.kind == "personnummer" else SAMORDNINGSNUMMER

    def identifier(self) -> dict[str, Any]:
        """The FHIR Identifier for this person."""
        return {"system": self.system, "value": self.value}

    def age_on(self, day: date) -> int:
        return age_on(self.birth_date, day)


def age_on(birth: date, day: date) -> int:
    """Whole years from ``birth`` to ``day`` (a birthday on ``day`` counts)."""
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def parse_personal_identity(raw: str, *, today: date | None = None) -> PersonalIdentity:
    """Check and normalise a personnummer or samordningsnummer (R-ID-1).

    Accepts ``YYYYMMDDNNNC``, ``YYYYMMDD-NNNC`` and the 10-digit forms ``YYMMDD-NNNC`` / ``YYMMDD+NNNC``
    (``+`` once the person has turned 100; the century is the one that puts the birth date on or before
    ``today``, and a hundred years earlier for ``+``). Raises
    :class:`InvalidIdentifier` when the value is malformed, names an impossible date or fails the Luhn check.
    """
    if not isinstance(raw, str):
        raise InvalidIdentifier("A personnummer must be a string of digits")
    text = raw.strip()
    m = _PERSON_RE.fullmatch(text)
    if m is None:
        raise InvalidIdentifier(f"{text[:20]!r} is not a personnummer or samordningsnummer (expected YYYYMMDDNNNC)")
    century, yy, mm, dd, sep, serial, check = m.groups()
    ten = f"{yy}{mm}{dd}{serial}{check}"
    if not luhn_valid(ten):
        raise InvalidIdentifier(f"{text[:20]!r} fails the Luhn check digit")
    day = int(dd)
    kind: PersonIdKind = "personnummer"
    if day > 60:
        kind, day = "samordningsnummer", day - 60
    if century is not None:
        if sep == "+":
            raise InvalidIdentifier(f"{text!r}: '+' is only used in the 10-digit form")
        year = int(century + yy)
    else:
        ref = today or date.today()
        year = (ref.year // 100) * 100 + int(yy)
        if (year, int(mm), day) > (ref.year, ref.month, ref.day):
            year -= 100  # born on or before today: a later date this year was a hundred years ago
        if sep == "+":
            year -= 100
    if year < 1800:
        raise InvalidIdentifier(f"{text!r}: birth year {year} is not plausible")
    try:
        born = date(year, int(mm), day)
    except ValueError:
        raise InvalidIdentifier(f"{text[:20]!r} does not contain a valid date of birth") from None
    sex: Literal["male", "female"] = "male" if int(serial[2]) % 2 == 1 else "female"
    return PersonalIdentity(f"{year:04d}{mm}{dd}{serial}{check}", kind, born, sex)


def is_valid_personal_identity(raw: str) -> bool:
    try:
        parse_personal_identity(raw)
    except InvalidIdentifier:
        return False
    return True


def make_personal_identity(born: date, birth_number: int, *, samordning: bool = False) -> str:
    """A Luhn-valid 12-digit number for ``born`` and the 3-digit birth number (odd = male, even = female)."""
    if not 0 <= birth_number <= 999:
        raise ValueError("birth_number must be 0..999")
    day = born.day + (60 if samordning else 0)
    nine = f"{born.year % 100:02d}{born.month:02d}{day:02d}{birth_number:03d}"
    return f"{born.year // 100:02d}{nine}{luhn_check_digit(nine)}"


def personal_number(system: str | None, value: str) -> str | None:
    """``value`` as a 12-digit personal identity number when ``system`` says it is one (URI or RIV OID, any of
    the written forms) and it passes the checks of R-ID-1, else None."""
    if normalize_system(system) not in PERSONAL_SYSTEMS:
        return None
    try:
        return parse_personal_identity(value).value
    except InvalidIdentifier:
        return None


_CENTURY_FORM = re.compile(r"\d{8}-?\d{4}")


def stated_personal_number(system: str | None, value: str) -> str | None:
    """``value`` as 12 digits when ``system`` says it is a personal identity number, it is written with its
    century (``YYYYMMDDNNNC``, ``YYYYMMDD-NNNC``) and it passes the checks of R-ID-1; else None. The 10-digit
    forms give None: their century depends on the day they are read (a hyphen means under 100 on that day), so
    an index row or a search made from one on another day could name another person."""
    return personal_number(system, value) if _CENTURY_FORM.fullmatch(value.strip()) else None


def written_identifiers(resource: Any) -> frozenset[tuple[str, str, str]]:
    """Where and how ``resource`` (stored JSON) writes each object that has a string system and value: (its path
    without list positions, such as ``Patient.identifier``, its system, its value), for ``validation.check``.
    Its Identifiers, and ContactPoints, which no identifier rule concerns; the path keeps a value written in one
    place from passing as kept in another."""
    found: set[tuple[str, str, str]] = set()
    root = resource.get("resourceType") if isinstance(resource, dict) else None
    stack: list[tuple[str, Any]] = [(root if isinstance(root, str) else "", resource)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, dict):
            system, value = item.get("system"), item.get("value")
            if type(system) is str and type(value) is str:
                found.add((path, system, value))
            stack.extend((f"{path}.{k}", v) for k, v in item.items() if isinstance(v, (dict, list)))
        elif isinstance(item, list):
            stack.extend((path, v) for v in item if isinstance(v, (dict, list)))
    return frozenset(found)


def normalize_system(system: str | None) -> str | None:
    """The stored identifier system for an inbound one: RIV OIDs map to the HL7 Sweden URIs (R-ID-2)."""
    if system is None:
        return None
    return _SYSTEM_ALIASES.get(system.strip(), system.strip())


def normalize_hsa_id(raw: str) -> str:
    """An HSA-id in its stored form (upper case, no spaces); raises :class:`InvalidIdentifier` if malformed.

    HSA-ids are also the FHIR ids of directory Organizations, so the format is kept within FHIR's id rules.
    """
    if not isinstance(raw, str):
        raise InvalidIdentifier("An HSA-id must be a string")
    value = raw.strip().upper()
    if not _HSA_RE.fullmatch(value):
        raise InvalidIdentifier(
            f"{raw[:40]!r} is not an HSA-id (expected SE + organisation number + '-' + up to 20 letters or digits)"
        )
    return value


def is_hsa_system(system: str | None) -> bool:
    return normalize_system(system) == HSA_ID


def hsa_identifier(value: str) -> dict[str, Any]:
    """The FHIR Identifier for an HSA-id (normalised)."""
    return {"system": HSA_ID, "value": normalize_hsa_id(value)}


def normalize_organisation_number(raw: str) -> str:
    """An organisation number as NNNNNN-NNNN after the Luhn check; raises :class:`InvalidIdentifier`."""
    m = _ORGNR_RE.fullmatch(raw.strip()) if isinstance(raw, str) else None
    if m is None:
        raise InvalidIdentifier(f"{str(raw)[:20]!r} is not an organisation number (expected NNNNNN-NNNN)")
    digits = m.group(1) + m.group(2)
    if not luhn_valid(digits):
        raise InvalidIdentifier(f"{raw!r} fails the Luhn check digit of an organisation number")
    return f"{m.group(1)}-{m.group(2)}"


def make_organisation_number(nine_digits: str) -> str:
    """A Luhn-valid organisation number NNNNNN-NNNN from its first nine digits."""
    if len(nine_digits) != 9 or not nine_digits.isdigit():
        raise ValueError("nine digits expected")
    full = nine_digits + str(luhn_check_digit(nine_digits))
    return f"{full[:6]}-{full[6:]}"


def stored_identifier(identifier: dict[str, Any]) -> dict[str, Any]:
    """An inbound FHIR Identifier as the store keeps it: its system normalised (R-ID-2) and, under a personal
    identity number's system, its value checked and in 12 digits (R-ID-1). Other values are kept as written
    (an HSA-id's too: R-ID-2 normalises its system only). Raises :class:`InvalidIdentifier`."""
    system = normalize_system(identifier.get("system"))
    out = dict(identifier)
    if system is not None:
        out["system"] = system
    value = identifier.get("value")
    if system in PERSONAL_SYSTEMS and isinstance(value, str):
        pid = parse_personal_identity(value)
        if pid.system != system:
            raise InvalidIdentifier(f"{value!r} is a {pid.kind}, not a {system.rsplit('/', 1)[-1]}")
        out["value"] = pid.value
    return out


def normalize_identifier(identifier: dict[str, Any]) -> dict[str, Any]:
    """An Identifier for the directory: :func:`stored_identifier`, and further HSA-ids must be well formed and
    become upper case, organisation numbers must pass the Luhn check. Raises :class:`InvalidIdentifier`."""
    out = stored_identifier(identifier)
    value = out.get("value")
    if not isinstance(value, str):
        return out
    if out.get("system") == HSA_ID:
        out["value"] = normalize_hsa_id(value)
    elif out.get("system") == ORGANISATION_NUMBER:
        out["value"] = normalize_organisation_number(value)
    return out
