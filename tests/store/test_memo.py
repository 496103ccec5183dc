"""The bounded memo behind the store's and the policy's statement caches (nara.store.memo)."""

from __future__ import annotations

import pytest

from nara.store.memo import Memo


def test_a_value_is_built_once_and_then_returned_from_the_memo() -> None:
    memo: Memo[str, list[int]] = Memo(4)
    builds: list[str] = []

    def build() -> list[int]:
        builds.append("built")
        return [1, 2]

    first = memo.get("k", build)
    assert memo.get("k", build) is first
    assert builds == ["built"]


def test_none_is_remembered_as_a_value_and_not_built_again() -> None:
    memo: Memo[str, None] = Memo(4)
    calls = []
    assert memo.get("no filter", lambda: calls.append(1)) is None
    assert memo.get("no filter", lambda: calls.append(1)) is None
    assert calls == [1]


def test_a_full_memo_is_emptied_and_never_holds_more_than_its_size() -> None:
    memo: Memo[int, int] = Memo(3)
    for k in range(3):
        memo.get(k, lambda k=k: k * 10)
    assert len(memo) == 3
    assert memo.get(3, lambda: 30) == 30
    assert len(memo) == 1  # emptied, then the new value kept
    rebuilt = []
    assert memo.get(0, lambda: rebuilt.append(0) or 0) == 0
    assert rebuilt == [0]
    for k in range(100):
        memo.get(k, lambda k=k: k)
        assert len(memo) <= 3


def test_objects_that_overload_equality_are_keyed_by_identity() -> None:
    """SQL elements build SQL from ``==``; keys holding them must never be compared as values."""
    from sqlalchemy import column

    memo: Memo[tuple[object, ...], str] = Memo(8)
    a, b = column("x") == 1, column("x") == 1
    assert memo.get((a,), lambda: "a") == "a"
    assert memo.get((b,), lambda: "b") == "b"
    assert memo.get((a,), lambda: "again") == "a"


def test_a_memo_must_hold_at_least_one_value() -> None:
    with pytest.raises(ValueError):
        Memo(0)
