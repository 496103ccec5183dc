"""The HTTP load generator: wrk (Debian package) driven by a request plan and ``lua/plan.lua``.

A *plan* is a list of requests (method, path, JSON body) written to a file, one per line; wrk replays
it round-robin on N keep-alive connections for a fixed time and prints its latency histogram's
percentiles as JSON. wrk is a C event loop with LuaJIT scripting, so on loopback it drives tens of
thousands of requests per second from one thread: far above what the server under test answers
(``noop`` scenario shows the generator's ceiling).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

LUA_SCRIPT = Path(__file__).with_name("lua") / "plan.lua"
DELETE_CREATED = "DELETE_CREATED"


class LoadGenError(RuntimeError):
    pass


@dataclass(frozen=True)
class Req:
    method: str
    path: str  # absolute path on the server, e.g. /fhir/Patient/123
    body: Any = None  # a JSON-serialisable object, already-serialised bytes, or None


def wrk_path() -> str:
    found = shutil.which("wrk")
    if not found:
        raise LoadGenError("wrk is not installed: run `apt-get install -y wrk` (Debian package 'wrk')")
    return found


def wrk_version() -> str:
    out = subprocess.run([wrk_path(), "--version"], capture_output=True, text=True, check=False)
    return (out.stdout or out.stderr).splitlines()[0].split(" [")[0].strip()


def write_plan(requests: Iterable[Req], directory: Path) -> Path:
    """Write a plan file (``METHOD \\t PATH \\t BODY`` per line) and return its path."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="plan-", suffix=".tsv", dir=directory)
    with open(fd, "wb") as f:
        for r in requests:
            if r.body is None:
                body = b""
            elif isinstance(r.body, bytes):
                body = r.body
            else:
                body = orjson.dumps(r.body)
            if b"\n" in body or b"\t" in body or "\t" in r.path:
                raise ValueError("plan lines must not contain raw tabs or newlines")
            f.write(r.method.encode() + b"\t" + r.path.encode() + b"\t" + body + b"\n")
    return Path(name)


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The statistics line printed by ``plan.lua``'s ``done()`` as a sample dict."""
    for line in stdout.splitlines():
        if line.startswith("WRKJSON "):
            raw = orjson.loads(line[len("WRKJSON ") :])
            break
    else:
        raise LoadGenError(f"wrk printed no statistics: {stdout[-500:]!r}")
    seconds = raw["duration_us"] / 1e6
    requests = raw["requests"]
    e = raw["errors"]
    transport = e["connect"] + e["read"] + e["write"] + e["timeout"]
    lat = raw["latency_us"]
    status = raw["status"]
    failed = e["status"] + transport

    def latency(key: str) -> float | None:
        # no completed request: no latency to report (the requests outlasted the measurement)
        return lat[key] / 1000 if requests else None

    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "throughput": requests / seconds if seconds else 0.0,
        "p50_ms": latency("p50"),
        "p95_ms": latency("p95"),
        "p99_ms": latency("p99"),
        "p999_ms": latency("p999"),
        "max_ms": latency("max"),
        "mean_ms": latency("mean"),
        "errors": failed,
        "error_rate": failed / requests if requests else (1.0 if transport else 0.0),
        "status": status,
        "transport_errors": transport,
        "incomplete": requests == 0,
    }


def run_wrk(
    origin: str,
    plan: Path,
    *,
    connections: int,
    seconds: int,
    base_path: str,
    token: str | None = None,
    threads: int = 1,
    timeout_s: int = 10,
) -> tuple[dict[str, Any], str]:
    """Run wrk against ``origin`` (scheme://host:port) with ``plan``; returns (sample, command line)."""
    threads = max(1, min(threads, connections))
    cmd = [
        wrk_path(),
        f"-t{threads}",
        f"-c{connections}",
        f"-d{seconds}s",
        f"--timeout={timeout_s}s",
        "-s",
        str(LUA_SCRIPT),
        origin,
        "--",
        str(plan),
        base_path,
    ]
    shown = " ".join([*cmd[:-2], plan.name, base_path])
    if token:
        shown = "NARA_BENCH_TOKEN=<token> " + shown
    env = {**os.environ, "NARA_BENCH_TOKEN": token or ""}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout_s + 30, check=False, env=env)
    if proc.returncode != 0:
        raise LoadGenError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    sample = parse_wrk_output(proc.stdout)
    sample["connections"] = connections
    return sample, shown.replace(str(LUA_SCRIPT), "bench/lua/plan.lua")
