"""An assignment's rights (medarbetaruppdrag): which activity they grant, and at which scope."""

from __future__ import annotations

from tests.security.region import assignment


def test_a_right_grants_its_activity_at_its_scope_and_every_narrower_one() -> None:
    a = assignment("Läsa;alla;VG", "Skriva;alla;VE")
    assert a.has_right("Läsa", "VE") and a.has_right("Läsa", "VG")
    assert not a.has_right("Läsa", "SJF")  # coordinated documentation needs SJF itself
    assert a.has_right("Skriva", "VE") and not a.has_right("Skriva", "VG")
    assert a.has_right("läsa", "vg")  # activity and scope in any case


def test_the_widest_of_several_rights_of_one_activity_counts() -> None:
    a = assignment("Läsa;alla;VE", "Läsa;alla;SJF")
    assert a.has_right("Läsa", "SJF") and a.has_right("Läsa", "VG")


def test_malformed_rights_and_unknown_scopes_grant_nothing() -> None:
    a = assignment("Läsa;alla", "Läsa;alla;XX", "Skriva")
    assert not a.has_right("Läsa", "VE")
    assert not a.has_right("Skriva", "VE")
    assert not assignment("Läsa;alla;SJF").has_right("Läsa", "ANY")  # asked at an unknown scope: no
