"""Sampling profiles of the server under load (py-spy), saved with the run and summarised.

py-spy samples the server and its worker processes from outside at 100 Hz while a scenario runs and
writes *collapsed stacks* (``frame;frame;... count``, the input format of flame-graph tools such as
flamegraph.pl and speedscope). The summary answers "what limits us now": where the samples land by
layer (our modules, SQLAlchemy, the PostgreSQL driver, the HTTP stack, ...), the hottest functions by
own time, and our own functions by inclusive time.
"""

from __future__ import annotations

import gzip
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

FRAME_RE = re.compile(r"^(?P<func>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

# Top-level package of a frame's file -> the layer it is reported under.
LAYERS = {
    "sqlalchemy": "SQLAlchemy",
    "psycopg": "psycopg (PostgreSQL driver)",
    "psycopg_pool": "psycopg (PostgreSQL driver)",
    "sqlite3": "sqlite3 driver",
    "starlette": "Starlette",
    "anyio": "anyio (thread hand-off)",
    "uvicorn": "uvicorn (HTTP server)",
    "httptools": "uvicorn (HTTP server)",
    "h11": "uvicorn (HTTP server)",
    "uvloop": "uvicorn (HTTP server)",
    "jsonpatch": "jsonpatch",
    "jsonpointer": "jsonpatch",
}
# Leaf frames that are waiting rather than computing.
DB_WAIT = "waiting on PostgreSQL (round trips, commit)"
IDLE = "idle (event loop or thread pool waiting for work)"
WAITS = {
    "psycopg.connection:Connection.wait": DB_WAIT,
    "psycopg.waiting:wait_c": DB_WAIT,
    "psycopg.waiting:wait_select": DB_WAIT,
    "psycopg.waiting:wait_epoll": DB_WAIT,
    "threading:Condition.wait": IDLE,
    "threading:Event.wait": IDLE,
    "queue:Queue.get": IDLE,
    "asyncio.runners:Runner.run": IDLE,
    "asyncio.base_events:BaseEventLoop._run_once": IDLE,
    "selectors:EpollSelector.select": IDLE,
}
# Our own code is reported per module (nara.fhir.validation, nara.store.crud, ...).
OWN_PREFIX = "nara/"
# Frames that wrap every request and so say nothing about its cost.
WRAPPERS = {
    "nara.server.app:fhir_endpoint",
    "nara.server.app:_execute",
    "nara.server.app:_run",
    "nara.server.dispatch:dispatch",
    "nara.server.dispatch:_dispatch",
    "nara.server.batch:process_bundle",
    "nara.server.batch:run_transaction",
    "nara.server.batch:TransactionProcessor.run",
    "nara.store.store:transaction",
    "nara.store.store:Store.transaction",
}


class ProfilerError(RuntimeError):
    pass


def py_spy_path() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def start(pid: int, seconds: int, out: Path, rate: int = 100) -> subprocess.Popen[bytes]:
    """Start py-spy on ``pid`` and its subprocesses for ``seconds``; returns the running profiler."""
    exe = py_spy_path()
    if exe is None:
        raise ProfilerError("py-spy is not installed (pip install py-spy)")
    out.parent.mkdir(parents=True, exist_ok=True)
    cmd = [
        exe,
        "record",
        "--pid",
        str(pid),
        "--subprocesses",
        "--nonblocking",
        "--rate",
        str(rate),
        "--duration",
        str(seconds),
        "--format",
        "raw",
        "--output",
        str(out),
    ]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def finish(proc: subprocess.Popen[bytes], raw: Path, timeout: float = 60) -> Path:
    """Wait for py-spy, gzip its output next to it, and return the ``.txt.gz`` path."""
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise ProfilerError("py-spy did not finish") from None
    if not raw.exists():
        raise ProfilerError(f"py-spy wrote no profile: {err.decode(errors='replace')[-300:]}")
    gz = raw.with_suffix(raw.suffix + ".gz")
    with open(raw, "rb") as src, gzip.open(gz, "wb", compresslevel=9) as dst:
        shutil.copyfileobj(src, dst)
    raw.unlink()
    return gz


def read_collapsed(path: Path) -> list[tuple[list[str], int]]:
    opener = gzip.open if path.suffix == ".gz" else open
    stacks = []
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line:
                continue
            frames, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            parts = [p for p in frames.split(";") if not p.startswith("process ")]
            stacks.append((parts, int(count)))
    return stacks


def frame_name(frame: str) -> tuple[str, str]:
    """(``module:function``, file) of a py-spy frame such as ``create (nara/store/crud.py:227)``."""
    m = FRAME_RE.match(frame)
    if not m:
        return frame, ""
    file = m.group("file") or ""
    module = file[:-3].replace("/", ".") if file.endswith(".py") else file
    return f"{module}:{m.group('func')}", file


def layer_of(file: str) -> str | None:
    """The layer a file belongs to, or None for the standard library."""
    if file.startswith(OWN_PREFIX):
        return file[:-3].replace("/", ".") if file.endswith(".py") else file
    top = file.split("/", 1)[0].removesuffix(".py")
    return LAYERS.get(top)


def summarize(stacks: Iterable[tuple[list[str], int]], top: int = 8) -> dict[str, Any]:
    """Samples by layer (attributing standard-library frames to their caller), hottest own-time
    functions, and our functions by inclusive time (wrappers excluded)."""
    total = 0
    layers: Counter[str] = Counter()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        if not frames:
            continue
        total += count
        names = [frame_name(f) for f in frames]
        own[names[-1][0]] += count
        layer = WAITS.get(names[-1][0]) or next(
            (lay for _, file in reversed(names) if (lay := layer_of(file)) is not None), "Python stdlib"
        )
        layers[layer] += count
        seen = set()
        for name, file in names:
            if file.startswith(OWN_PREFIX) and name not in WRAPPERS and name not in seen:
                seen.add(name)
                inclusive[name] += count
    if total == 0:
        return {"samples": 0, "layers": [], "self": [], "own_inclusive": []}

    def pct(counter: Counter[str]) -> list[dict[str, Any]]:
        return [{"name": k, "share": round(v / total, 4), "samples": v} for k, v in counter.most_common(top)]

    return {"samples": total, "layers": pct(layers), "self": pct(own), "own_inclusive": pct(inclusive)}


def top_cost(summary: dict[str, Any]) -> str:
    """One line naming the largest cost of a profile summary."""
    if not summary.get("samples"):
        return "no samples"
    parts = []
    busy = [lay for lay in summary["layers"] if lay["name"] != IDLE]
    if busy:
        parts.append(f"{busy[0]['name']} {busy[0]['share']:.0%} of samples")
    hot = [f for f in summary["self"] if WAITS.get(f["name"]) != IDLE]
    if hot:
        parts.append(f"hottest function {hot[0]['name']} {hot[0]['share']:.0%}")
    if summary["own_inclusive"]:
        inc = summary["own_inclusive"][0]
        parts.append(f"largest own step {inc['name']} {inc['share']:.0%} inclusive")
    return "; ".join(parts)
