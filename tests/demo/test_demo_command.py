"""Smoke test: ``nara demo`` in an empty folder creates var/nara.db, generates the region, serves it; twice."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import shared_data_dir

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start(folder: Path, port: int) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NARA_")}
    numbers = shared_data_dir() / "testpersonnummer.txt"
    if numbers.exists():
        env["NARA_TESTPERSONNUMMER"] = str(numbers)
    nara = Path(sys.executable).with_name("nara")
    return subprocess.Popen(
        [str(nara), "demo", "--port", str(port)],
        cwd=folder,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def wait_until_serving(proc: subprocess.Popen[str], root: str, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read() if proc.stdout else ""
            raise AssertionError(f"nara demo exited with {proc.returncode}:\n{out}")
        try:
            if httpx.get(root + "/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError(f"nara demo did not serve {root} within {timeout} s")


def stop(proc: subprocess.Popen[str]) -> str:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
    return out


def test_nara_demo_generates_serves_the_landing_page_and_metadata_then_reuses_the_data(tmp_path: Path) -> None:
    port = free_port()
    root = f"http://127.0.0.1:{port}"
    proc = start(tmp_path, port)
    try:
        wait_until_serving(proc, root, timeout=180)
        landing = httpx.get(root + "/", timeout=30)
        metadata = httpx.get(root + "/fhir/metadata", timeout=30)
    finally:
        first = stop(proc)
    assert (tmp_path / "var" / "nara.db").exists()
    match = re.search(r"([\d,]+) people, ([\d,]+) resources .* in ([\d,.]+) s", first.replace("\n", " "))
    assert match, first
    assert int(match.group(1).replace(",", "")) >= 2_000
    assert float(match.group(3).replace(",", "")) < 60, "the default region must generate in under a minute"
    assert landing.status_code == 200
    assert "Nära" in landing.text and "Demo logins" in landing.text
    citizen = re.search(r"\n\s+(\S.+?) \(citizen\): (\d{12})", first)
    assert citizen, first
    assert citizen.group(1) in landing.text and citizen.group(2) in landing.text
    assert metadata.status_code == 200
    assert metadata.json()["resourceType"] == "CapabilityStatement"

    port = free_port()
    proc = start(tmp_path, port)
    try:
        wait_until_serving(proc, f"http://127.0.0.1:{port}", timeout=60)
        again = httpx.get(f"http://127.0.0.1:{port}/", timeout=30)
    finally:
        second = stop(proc)
    assert "Reusing the demo data" in second
    assert "Generating" not in second
    assert citizen.group(2) in second and citizen.group(2) in again.text
