"""The directory's code systems and extensions (docs/security.md §2), under the configurable canonical base.

Our own systems live under ``NARA_CANONICAL_BASE`` (default ``https://nara.se/fhir``). Code lists here are
the ones the directory validates against; their displays are the Swedish terms staff and citizens see.
"""

from __future__ import annotations

from nara.fhir.canonical import BASE, canonical_base

__all__ = ["BASE", "canonical_base"]

ORGANIZATION_ROLE = f"{BASE}/CodeSystem/organization-role"
UNIT_KIND = f"{BASE}/CodeSystem/unit-kind"
STAFF_ROLE = f"{BASE}/CodeSystem/staff-role"
SERVICE_CATEGORY = f"{BASE}/CodeSystem/service-category"
SERVICE_TYPE = f"{BASE}/CodeSystem/service-type"
SERVICE_CHANNEL = f"{BASE}/CodeSystem/service-channel"
ASSIGNMENT_PURPOSE_URL = f"{BASE}/StructureDefinition/assignment-purpose"
ASSIGNMENT_RIGHT_URL = f"{BASE}/StructureDefinition/assignment-right"
MUNICIPALITY_CODE = f"{BASE}/NamingSystem/kommunkod"  # SCB's four-digit municipality code

CARE_PROVIDER = "vardgivare"
CARE_GIVER = "omsorgsgivare"
UNIT = "vardenhet"
ORGANIZATION_ROLES = {
    CARE_PROVIDER: "Vårdgivare",
    CARE_GIVER: "Omsorgsgivare",
    UNIT: "Vårdenhet",
}
PROVIDER_ROLES = frozenset({CARE_PROVIDER, CARE_GIVER})

UNIT_KINDS = {
    "vardcentral": "Vårdcentral",
    "sjukhus": "Sjukhus",
    "vardavdelning": "Vårdavdelning",
    "mottagning": "Specialistmottagning",
    "hemsjukvard": "Kommunal hemsjukvård",
    "hemtjanst": "Hemtjänst",
    "sarskilt-boende": "Särskilt boende",
    "lss": "LSS-verksamhet",
    "bistand": "Biståndsenhet",
    "forvaltning": "Förvaltning",
}

STAFF_ROLES = {
    "lakare": "Läkare",
    "sjukskoterska": "Sjuksköterska",
    "distriktsskoterska": "Distriktssköterska",
    "underskoterska": "Undersköterska",
    "biståndshandläggare": "Biståndshandläggare",
    "auditor": "Logggranskare",
    "admin": "Administratör",
}

PURPOSE_CARE = "Vård och behandling"
PURPOSE_QUALITY = "Kvalitetssäkring"
PURPOSE_ADMINISTRATION = "Administration"
PURPOSE_LOG_REVIEW = "Logggranskning"
PURPOSES = frozenset({PURPOSE_CARE, PURPOSE_QUALITY, PURPOSE_ADMINISTRATION, PURPOSE_LOG_REVIEW})

# Rights are written Aktivitet;Informationstyp;Omfång (DOMAIN.md §1.1); omfång VE = unit, VG = provider,
# SJF = sammanhållen journalföring / SVOD.
RIGHT_SCOPES = frozenset({"VE", "VG", "SJF"})

SERVICE_CATEGORIES = {
    "primarvard": "Primärvård",
    "specialistvard": "Specialiserad vård",
    "slutenvard": "Slutenvård",
    "hemsjukvard": "Kommunal hälso- och sjukvård",
    "aldreomsorg": "Äldreomsorg",
    "funktionsstod": "Stöd till personer med funktionsnedsättning",
    "bistand": "Biståndsbedömning",
}

SERVICE_TYPES = {
    "lakarbesok": "Läkarbesök",
    "sjukskoterskebesok": "Sjuksköterskebesök",
    "vaccination": "Vaccination",
    "diabetesmottagning": "Diabetesmottagning",
    "hjartsviktsmottagning": "Hjärtsviktsmottagning",
    "kol-mottagning": "KOL-mottagning",
    "barnavardscentral": "Barnavårdscentral",
    "egenmonitorering": "Egenmonitorering i hemmet",
    "inneliggande-vard": "Inneliggande vård",
    "hemsjukvard": "Hemsjukvård",
    "hemtjanst": "Hemtjänst",
    "trygghetslarm": "Trygghetslarm",
    "daglig-verksamhet": "Daglig verksamhet (LSS)",
    "bostad-lss": "Bostad med särskild service (LSS)",
    "ansokan-bistand": "Ansökan om bistånd",
}

SERVICE_CHANNELS = {
    "besok": "Fysiskt besök",
    "video": "Videobesök",
    "telefon": "Telefon",
    "chatt": "Chatt",
    "hembesok": "Hembesök",
}


def coding(system: str, code: str, table: dict[str, str]) -> dict[str, str]:
    """A Coding with the display from ``table``."""
    return {"system": system, "code": code, "display": table[code]}
