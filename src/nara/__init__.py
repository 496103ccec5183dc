"""Nära: an open FHIR R4 platform for shared health and social care."""

__version__ = "0.1.0"
