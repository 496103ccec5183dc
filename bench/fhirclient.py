"""An async FHIR client (httpx) for loading data, timed Bundle imports and following paging links.

Only standard FHIR interactions: POST of transaction Bundles to the base, GET of searches and reads,
``Bundle.link[next]`` for paging. Used where wrk does not fit: bodies that are whole files, and work
whose unit is a Bundle rather than a request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from bench.stats import latency_summary
from bench.target import Target

FHIR_JSON = "application/fhir+json"


@dataclass
class BatchOutcome:
    """The result of posting many Bundles."""

    bundles: int = 0
    resources: int = 0
    failed_bundles: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    first_error: str | None = None

    def sample(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "requests": self.bundles,
            "resources": self.resources,
            "seconds": round(self.seconds, 3),
            "throughput": self.resources / self.seconds if self.seconds else 0.0,
            "errors": self.failed_bundles,
            "error_rate": self.failed_bundles / self.bundles if self.bundles else 0.0,
        }
        if self.latencies_ms:
            out.update(latency_summary(self.latencies_ms))
        if self.first_error:
            out["first_error"] = self.first_error
        return out


def client(target: Target, timeout: float = 300.0) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    return httpx.AsyncClient(headers=target.headers(), timeout=timeout, limits=limits)


async def post_bundles(
    target: Target, bodies: Sequence[bytes], counts: Sequence[int], concurrency: int
) -> BatchOutcome:
    """POST each serialized Bundle to the base with ``concurrency`` parallel clients; time the whole."""
    outcome = BatchOutcome()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(bodies)):
        queue.put_nowait(i)

    async with client(target) as http:

        async def worker() -> None:
            while True:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                try:
                    resp = await http.post(target.base_url, content=bodies[i], headers={"Content-Type": FHIR_JSON})
                    ok = resp.status_code == 200
                    error = None if ok else f"HTTP {resp.status_code}: {resp.text[:300]}"
                except httpx.HTTPError as e:
                    ok, error = False, f"{e.__class__.__name__}: {e}"
                outcome.latencies_ms.append((time.perf_counter() - t0) * 1000)
                outcome.bundles += 1
                if ok:
                    outcome.resources += counts[i]
                else:
                    outcome.failed_bundles += 1
                    outcome.first_error = outcome.first_error or error

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        outcome.seconds = time.perf_counter() - start
    return outcome


def load_bundles(target: Target, bundles: Sequence[dict[str, Any]], concurrency: int = 4) -> BatchOutcome:
    """Load data (not timed as a scenario); raises when any Bundle fails, since later figures need it."""
    bodies = [orjson.dumps(b) for b in bundles]
    counts = [len(b.get("entry", [])) for b in bundles]
    out = asyncio.run(post_bundles(target, bodies, counts, concurrency))
    if out.failed_bundles:
        raise RuntimeError(f"loading data failed for {out.failed_bundles} Bundles: {out.first_error}")
    return out


def get(target: Target, path_or_url: str) -> httpx.Response:
    url = path_or_url if "://" in path_or_url else f"{target.base_url}/{path_or_url.lstrip('/')}"
    return httpx.get(url, headers=target.headers(), timeout=60)


def next_link(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link", []) or []:
        if link.get("relation") == "next":
            url = link.get("url")
            return url if isinstance(url, str) else None
    return None


def deep_page(target: Target, query: str, pages: int) -> tuple[str | None, int]:
    """Follow ``next`` links from ``query`` up to page ``pages``; returns (URL of that page, page reached)."""
    resp = get(target, query)
    if resp.status_code != 200:
        return None, 0
    page, url = 1, None
    bundle = resp.json()
    while page < pages:
        nxt = next_link(bundle)
        if not nxt:
            break
        resp = get(target, nxt)
        if resp.status_code != 200:
            break
        bundle, url, page = resp.json(), nxt, page + 1
    return url, page
