"""The result file of one benchmark run: machine, software, scenarios, measurements, comparisons.

One JSON file per run under ``bench/results/`` (``<UTC timestamp>-<commit>-<mode>.json``), profiles
beside it in a folder of the same name. :func:`load` checks the structure the report relies on, so a
malformed or hand-edited file fails loudly instead of producing a wrong page.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import orjson

from bench.stats import summarize

SCHEMA_VERSION = 1
RESULTS_DIR = Path(__file__).with_name("results")
STATUSES = ("ok", "skipped", "not-available", "failed")

Sample = dict[str, Any]
Runner = Callable[[], tuple[Sample, str]]


def git_facts(root: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
        return out.stdout.strip()

    status = git("status", "--porcelain", "--untracked-files=no")
    return {
        "commit": git("rev-parse", "HEAD") or "unknown",
        "branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(status),
    }


def short_commit(root: Path, ref: str | None = None) -> str:
    """The short commit of ``ref``, or (None) of the checkout at ``root`` as it is: its HEAD, with ``+changes``
    when git shows any change in it (a new file too), other than the measurements' own records and results
    (a record written earlier the same session changes nothing that is measured); for a record's title."""
    if ref is not None:
        out = subprocess.run(["git", "rev-parse", "--short", ref], cwd=root, capture_output=True, text=True, check=True)
        return out.stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True)
    outputs = [f":(exclude){d}" for d in MEASUREMENT_OUTPUTS]
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", ".", *outputs], cwd=root, capture_output=True, text=True
    )
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


MEASUREMENT_OUTPUTS = ("bench/records", "bench/results")  # what measurements write into the checkout


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except OSError:
        return []


RECORDS = Path(__file__).resolve().parent / "records"


def command_line(module: str, argv: list[str] | None) -> str:
    """How a one-off measurement was run, for its record: ``python -m <module>`` and its arguments, quoted so that
    the line can be run again as it stands."""
    return shlex.join(["python", "-m", module, *(sys.argv[1:] if argv is None else argv)])


def new_record_path(name: str, day: str | None = None, records: Path | None = None) -> Path:
    """Where the record ``name`` of ``day`` (today, the date the records carry) goes; FileExistsError when it
    exists."""
    out = (records or RECORDS) / f"{day or date.today().isoformat()}-{name}.json"
    if out.exists():
        raise FileExistsError(f"{out.relative_to(out.parent.parent)} exists: give this measurement another name")
    return out


def claim_record_name(ap: argparse.ArgumentParser, name: str, records: Path | None = None) -> None:
    """Stop with a usage error when today's record ``name`` exists: a measurement checks before it starts, not
    after its minutes of work."""
    try:
        new_record_path(name, None, records)
    except FileExistsError as exc:
        ap.error(str(exc))


def write_record(name: str, record: dict[str, Any], records: Path | None = None) -> Path:
    """Write a one-off measurement (title, command, date, machine, conditions, figures, note) to
    bench/records/<date>-<name>.json, where docs/performance.md shows it, with the time it was written. An
    existing record is never replaced: the docs cite records by name, so a new measurement takes a new name."""
    now = datetime.now(UTC)
    out = new_record_path(name, record.get("date"), records)
    out.parent.mkdir(exist_ok=True)
    record = {**record, "recorded_at": record.get("recorded_at") or now.strftime("%H:%M:%S")}
    out.write_text(json.dumps(record, indent=2, ensure_ascii=False) + "\n")
    print(f"Wrote {out}")
    return out


def machine_facts() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
    }


class Scenario:
    """One scenario of a run; measurements are added with :meth:`measure`."""

    def __init__(self, record: dict[str, Any]) -> None:
        self.record = record

    def measure(
        self,
        label: str,
        runner: Runner,
        *,
        reps: int,
        unit: str,
        params: dict[str, Any] | None = None,
        data_size: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        """Run ``runner`` ``reps`` times and record each repetition and their summary."""
        samples: list[Sample] = []
        command = ""
        for _ in range(reps):
            load = loadavg()
            sample, command = runner()
            sample["loadavg_1m"] = load[0] if load else None
            samples.append(sample)
        return self.add(label, samples, command, unit=unit, params=params, data_size=data_size, group=group)

    def add(
        self,
        label: str,
        samples: list[Sample],
        command: str,
        *,
        unit: str,
        params: dict[str, Any] | None = None,
        data_size: str | None = None,
        group: str | None = None,
    ) -> dict[str, Any]:
        m = {
            "label": label,
            "group": group,
            "params": params or {},
            "unit": unit,
            "command": command,
            "data_size": data_size or self.record.get("data_size"),
            "reps": samples,
            "summary": summarize(samples),
        }
        self.record["measurements"].append(m)
        return m

    def skip(self, reason: str, status: str = "skipped") -> None:
        self.record["status"] = status
        self.record["reason"] = reason

    @property
    def status(self) -> str:
        return str(self.record["status"])


class Run:
    """The record of one run, written as JSON at the end (and after every scenario, for safety)."""

    def __init__(self, mode: str, command: str, root: Path, results_dir: Path = RESULTS_DIR) -> None:
        started = datetime.now(UTC)
        git = git_facts(root)
        self.run_id = f"{started.strftime('%Y%m%dT%H%M%SZ')}-{git['commit'][:8]}-{mode}"
        self.results_dir = results_dir
        self.t0 = time.monotonic()
        self.data: dict[str, Any] = {
            "schema": SCHEMA_VERSION,
            "run_id": self.run_id,
            "mode": mode,
            "started": started.isoformat(timespec="seconds"),
            "finished": None,
            "duration_s": None,
            "command": command,
            "git": git,
            "machine": machine_facts(),
            "postgres": None,
            "targets": [],
            "generator": {},
            "notes": [],
            "scenarios": [],
            "comparisons": [],
            "goals": [],
        }

    @property
    def artifact_dir(self) -> Path:
        return self.results_dir / self.run_id

    @property
    def path(self) -> Path:
        return self.results_dir / f"{self.run_id}.json"

    @contextmanager
    def scenario(self, sid: str, title: str, target: str, description: str = "") -> Iterator[Scenario]:
        record: dict[str, Any] = {
            "id": sid,
            "title": title,
            "target": target,
            "description": description,
            "status": "ok",
            "reason": None,
            "data_size": None,
            "measurements": [],
            "profile": None,
            "extra": {},
            "seconds": None,
        }
        self.data["scenarios"].append(record)
        start = time.monotonic()
        print(f"== {title} [{target}]", flush=True)
        sc = Scenario(record)
        try:
            yield sc
        except Exception as exc:  # a failed scenario is recorded and the run goes on
            record["status"] = "failed"
            record["reason"] = f"{exc.__class__.__name__}: {exc}"
            print(f"   FAILED: {record['reason']}", flush=True)
        finally:
            record["seconds"] = round(time.monotonic() - start, 1)
            if record["status"] != "ok":
                print(f"   {record['status']}: {record['reason']}", flush=True)
            self.save()

    def save(self) -> Path:
        self.results_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".json.tmp")
        tmp.write_bytes(orjson.dumps(self.data, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
        tmp.replace(self.path)
        return self.path

    def finish(self) -> Path:
        self.data["finished"] = datetime.now(UTC).isoformat(timespec="seconds")
        self.data["duration_s"] = round(time.monotonic() - self.t0, 1)
        self.data["machine"]["loadavg_end"] = loadavg()
        return self.save()


class ResultError(ValueError):
    pass


REQUIRED_TOP = ("schema", "run_id", "mode", "started", "command", "git", "machine", "scenarios", "targets")
REQUIRED_SCENARIO = ("id", "title", "target", "status", "measurements")
REQUIRED_MEASUREMENT = ("label", "unit", "command", "reps", "summary")


def validate(data: Any, name: str = "result") -> dict[str, Any]:
    """Check the structure of a result file; raises :class:`ResultError` naming the first problem."""
    if not isinstance(data, dict):
        raise ResultError(f"{name}: not a JSON object")
    for key in REQUIRED_TOP:
        if key not in data:
            raise ResultError(f"{name}: missing '{key}'")
    if data["schema"] != SCHEMA_VERSION:
        raise ResultError(f"{name}: schema {data['schema']!r}, expected {SCHEMA_VERSION}")
    for field in ("commit",):
        if not isinstance(data["git"].get(field), str):
            raise ResultError(f"{name}: git.{field} missing")
    for field in ("cores", "memory_gib"):
        if field not in data["machine"]:
            raise ResultError(f"{name}: machine.{field} missing")
    for i, sc in enumerate(data["scenarios"]):
        for key in REQUIRED_SCENARIO:
            if key not in sc:
                raise ResultError(f"{name}: scenarios[{i}] missing '{key}'")
        if sc["status"] not in STATUSES:
            raise ResultError(f"{name}: scenarios[{i}] has unknown status {sc['status']!r}")
        if sc["status"] != "ok" and not sc.get("reason"):
            raise ResultError(f"{name}: scenarios[{i}] ({sc['id']}) is {sc['status']} without a reason")
        for j, m in enumerate(sc["measurements"]):
            for key in REQUIRED_MEASUREMENT:
                if key not in m:
                    raise ResultError(f"{name}: scenarios[{i}].measurements[{j}] missing '{key}'")
            if not m["reps"]:
                raise ResultError(f"{name}: scenarios[{i}].measurements[{j}] has no repetitions")
    return data


def load(path: Path) -> dict[str, Any]:
    try:
        data = orjson.loads(path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ResultError(f"{path.name}: not valid JSON ({e})") from None
    return validate(data, path.name)


def all_results(results_dir: Path = RESULTS_DIR) -> list[dict[str, Any]]:
    """Every result file, oldest first."""
    return [load(p) for p in sorted(results_dir.glob("*.json"))]
