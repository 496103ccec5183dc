"""Identity, the Patient Data Act access policy, and the audit trail.

Importing the package registers the access-rule write hook with every store (see nara.store.store).
"""

from nara.security import rules as _rules  # noqa: F401
