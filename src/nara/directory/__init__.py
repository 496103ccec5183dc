"""The directory: care providers, care givers, units, staff, assignments and the service catalogue.

:mod:`nara.directory.resources` builds the FHIR shapes fixed in docs/security.md §2; :mod:`nara.directory.admin`
adds, changes and ends them in the store with validation.
"""
