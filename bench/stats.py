"""Statistics for repeated measurements: percentiles, medians, spread and the 20% variance flag."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

SPREAD_LIMIT = 0.20  # a figure whose repetitions differ by more than this (relative to the median) is flagged

# The numbers kept for every repetition of a measurement, and the direction in which they are better.
SAMPLE_KEYS = ("throughput", "p50_ms", "p95_ms", "p99_ms", "error_rate")


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("percentile of no values")
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def latency_summary(latencies_ms: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max of a list of latencies in milliseconds."""
    return {
        "p50_ms": percentile(latencies_ms, 50),
        "p95_ms": percentile(latencies_ms, 95),
        "p99_ms": percentile(latencies_ms, 99),
        "max_ms": max(latencies_ms),
    }


def spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of the repetitions; None when there is nothing to compare."""
    vals = [v for v in values if v is not None]
    if len(vals) < 2:
        return None
    med = statistics.median(vals)
    if med == 0:
        return 0.0 if max(vals) == min(vals) else None
    return (max(vals) - min(vals)) / abs(med)


def summarize(reps: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Median of every sample key over the repetitions, the throughput spread and its flag."""
    out: dict[str, Any] = {"reps": len(reps)}
    for key in SAMPLE_KEYS:
        vals = [r[key] for r in reps if r.get(key) is not None]
        out[key] = statistics.median(vals) if vals else None
    thr = [r["throughput"] for r in reps if r.get("throughput") is not None]
    out["spread"] = spread(thr)
    out["p99_spread"] = spread([r["p99_ms"] for r in reps if r.get("p99_ms") is not None])
    out["flagged"] = bool(out["spread"] is not None and out["spread"] > SPREAD_LIMIT)
    return out


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
