"""The server under test: a FHIR base URL (any server), or a Nära process the suite starts itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx

ROOT = Path(__file__).resolve().parents[1]
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass
class Target:
    """Where the HTTP scenarios send their requests."""

    name: str
    base_url: str  # FHIR base, e.g. http://127.0.0.1:18080/fhir
    token: str | None = None
    database: str = "unknown"
    server: NaraServer | None = None
    noop_url: str | None = None  # the generator-ceiling endpoint, when the target has one

    @property
    def origin(self) -> str:
        parts = urlsplit(self.base_url)
        return f"{parts.scheme}://{parts.netloc}"

    @property
    def base_path(self) -> str:
        return urlsplit(self.base_url).path.rstrip("/")

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/fhir+json"}
        if self.token:
            h["Authorization"] = f"Bearer {self.token}"
        return h

    def describe(self) -> dict[str, object]:
        d: dict[str, object] = {
            "name": self.name,
            "base_url": self.base_url,
            "database": self.database,
            "started_by_suite": self.server is not None,
            "token": bool(self.token),
        }
        if self.server is not None:
            d["workers"] = self.server.workers
            d["command"] = self.server.command_line
        return d


@dataclass
class NaraServer:
    """``nara serve`` on a fresh database, started and stopped by the suite."""

    database_url: str
    port: int
    workers: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # extra environment (e.g. the development IdP)
    # A Python module to run instead of ``nara serve`` (taking --database-url and --port; one worker), e.g.
    # the security scenario's server without read audit (bench.unaudited_server).
    module: str | None = None

    @property
    def command_line(self) -> str:
        return " ".join(self.command).replace(str(ROOT) + "/", "")

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/fhir"

    def start(self, fresh: bool = True, ready_timeout: float = 90.0) -> None:
        if fresh:
            reset_database(self.database_url)
        nara = Path(sys.executable).with_name("nara")
        if self.module is not None:
            if self.workers != 1:
                raise ValueError(f"{self.module} runs one worker")
            self.command = [
                sys.executable,
                "-m",
                self.module,
                "--database-url",
                self.database_url,
                "--port",
                str(self.port),
            ]
        else:
            self.command = [
                str(nara),
                "serve",
                "--database-url",
                self.database_url,
                "--workers",
                str(self.workers),
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 (kept open for the child's lifetime)
        env = {**os.environ, **self.env}
        self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        deadline = time.monotonic() + ready_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nara serve exited with {self.proc.returncode}; see {self.log_path}")
            try:
                healthy = httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                healthy = False
            # every worker must be up before load starts
            if healthy and (self.workers == 1 or len(self.worker_pids()) >= self.workers):
                time.sleep(1.0)
                return
            time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"nara serve did not become ready in {ready_timeout:.0f}s; see {self.log_path}")

    def pids(self) -> list[int]:
        """The server process and its worker processes."""
        if self.proc is None:
            return []
        return [self.proc.pid, *_descendants(self.proc.pid)]

    def worker_pids(self) -> list[int]:
        """The processes that answer requests (uvicorn's spawned workers, or the server itself)."""
        if self.workers == 1:
            return [self.proc.pid] if self.proc else []
        return [p for p in self.pids()[1:] if b"spawn_main" in _cmdline(p) and b"resource_tracker" not in _cmdline(p)]

    def rss_bytes(self) -> int:
        return sum(_rss(pid) for pid in self.pids())

    def cpu_seconds(self) -> float:
        """CPU seconds (user + system) used so far by the server process and its workers."""
        return sum(process_cpu_seconds(pid) or 0.0 for pid in self.pids())

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None


def dev_idp_env(key_file: Path) -> dict[str, str]:
    """Environment that turns on Nära's development identity provider with the run-local key in ``key_file``."""
    return {"NARA_DEV_IDP": "true", "NARA_DEV_IDP_KEY": str(key_file)}


def dev_idp(key_file: Path, ttl_s: int = 12 * 3600) -> tuple[dict[str, str], str | None]:
    """Environment that turns on Nära's development identity provider with a run-local key, and a
    system-client token (policy off, still audited) signed with it; (env, None) when this Nära has no
    security module yet."""
    env = dev_idp_env(key_file)
    try:
        from nara.security import devidp
    except ImportError:
        return env, None
    key = devidp.signing_key(key_file)
    return env, devidp.mint(key, "nara-bench", "system", name="Nära benchmark suite", ttl=ttl_s)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))  # fields[1]: the parent's pid
    out: list[int] = []
    stack = list(children.get(pid, []))
    while stack:
        p = stack.pop()
        out.append(p)
        stack.extend(children.get(p, []))
    return out


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (state first); None when the process has ended."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def process_cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc; None when it has ended."""
    fields = _stat_fields(pid)
    if fields is None:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def reset_database(url: str) -> None:
    """Drop and recreate a PostgreSQL database, or delete a SQLite file (and its WAL)."""
    if url.startswith("sqlite"):
        path = Path(url.split("///", 1)[1])
        for suffix in ("", "-wal", "-shm"):
            Path(str(path) + suffix).unlink(missing_ok=True)
        return
    from nara.store.database import ensure_database

    ensure_database(url, drop_first=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
