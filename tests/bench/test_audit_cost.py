"""bench/audit_cost.py: the audit hook's CPU a read, timed in-process (the timing itself runs in bench/)."""

from __future__ import annotations

from bench.audit_cost import cpu_us_per_call


def test_each_repetition_times_its_calls_after_a_warm_up() -> None:
    calls: list[int] = []
    figures = cpu_us_per_call(lambda: calls.append(1), calls=10, repetitions=3)
    assert len(calls) == 10 + 3 * 10  # warmed with as many calls (at most 500), then three timed runs
    assert len(figures) == 3 and all(f >= 0 for f in figures)


def test_a_call_that_burns_cpu_is_timed_as_more_cpu_than_one_that_does_not() -> None:
    idle = cpu_us_per_call(lambda: None, calls=200, repetitions=1)[0]
    busy = cpu_us_per_call(lambda: sum(range(20_000)), calls=200, repetitions=1)[0]
    assert busy > idle + 50  # summing 20,000 numbers takes far more than 50 µs more than nothing
