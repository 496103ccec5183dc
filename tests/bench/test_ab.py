"""bench/ab.py: two versions served side by side, compared round by round with the order alternating."""

from __future__ import annotations

import argparse
import subprocess

import pytest
from bench.ab import WORKTREE, checkout, failed_requests, paired_ratios, round_order
from bench.loadgen import parse_wrk_output
from bench.target import ROOT

from tests.bench.test_loadgen_and_data import WRK_LINE


def test_the_versions_take_turns_going_first() -> None:
    assert [round_order(i) for i in range(4)] == [("a", "b"), ("b", "a"), ("a", "b"), ("b", "a")]


def test_a_round_with_failed_requests_is_refused_and_says_what_failed() -> None:
    failing = parse_wrk_output(WRK_LINE)  # 4 error statuses and a timeout
    message = failed_requests(failing)
    assert message is not None and message.startswith("5 requests failed") and "'4xx': 4" in message
    assert "transport errors 1" in message
    clean = WRK_LINE.replace('"status":4,"timeout":1', '"status":0,"timeout":0').replace('"4xx":4', '"4xx":0')
    assert failed_requests(parse_wrk_output(clean)) is None


def test_the_figure_is_the_median_of_the_rounds_ratios() -> None:
    result = paired_ratios([100.0, 200.0, 100.0], [110.0, 180.0, 105.0])
    assert result == {"median": 1.05, "rounds": [1.1, 0.9, 1.05], "b_above_a": 2}
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])
    with pytest.raises(ValueError):
        paired_ratios([], [])


def test_a_version_runs_from_a_worktree_of_its_commit_that_is_removed_afterwards() -> None:
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    with checkout("HEAD") as where:
        assert where != ROOT and (where / "src" / "nara" / "__init__.py").is_file()
        at = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True)
        assert at.stdout == head.stdout
    assert not where.exists()
    listed = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert str(where) not in listed.stdout
    with checkout(WORKTREE) as here:
        assert here == ROOT


def test_each_side_may_name_its_own_actor_and_server_else_the_common_actor() -> None:
    from bench.ab import Side, env_setting, sides

    args = argparse.Namespace(
        a="HEAD", b="WORKTREE", actor="staff", a_actor="superuser", b_actor=None, a_server="unaudited", b_server="serve"
    )
    args.a_env, args.b_env = None, [("NARA_AUDIT_SEALER", "external")]
    assert sides(args) == {
        "a": Side("HEAD", "superuser", "unaudited"),
        "b": Side("WORKTREE", "staff", "serve", (("NARA_AUDIT_SEALER", "external"),)),
    }
    assert sides(args)["b"].describe("abc123") == "staff on nara serve at abc123, NARA_AUDIT_SEALER=external"
    assert env_setting("NARA_AUDIT_SEALER=external") == ("NARA_AUDIT_SEALER", "external")
    for bad in ("NARA_AUDIT_SEALER", "PATH=/tmp"):
        with pytest.raises(argparse.ArgumentTypeError):
            env_setting(bad)
    assert Side("HEAD", "superuser", "unaudited").describe("abc123") == (
        "superuser on the server without read audit at abc123"
    )
    assert Side("HEAD", "staff").describe("abc123") == "staff on nara serve at abc123"
