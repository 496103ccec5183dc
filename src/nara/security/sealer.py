"""The audit sealer: every few seconds it chains the audit records written since (``audit.seal``), and
several times a second it drains this host's read-audit outbox into the log (``audit_outbox.drain``, which
chains what it drains itself).

It runs as a thread beside the app (the default, e.g. under a plain ``uvicorn nara.server.asgi:app``) or,
under ``nara serve``, as a process of its own: one sealer for all workers, whose hashing takes none of the
workers' time (measured: a twentieth of a worker's busy time at 1,300 audited reads a second). A sealer
process ends when the server that started it ends, also when that server was killed.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

from sqlalchemy.engine import Engine

from nara.security import audit, audit_outbox

log = logging.getLogger("nara.security.sealer")
EXTERNAL = "external"  # NARA_AUDIT_SEALER: another process seals (nara serve starts it)


def seal_until(
    engine: Engine,
    interval: float,
    stopped: Callable[[float], bool],
    outbox: Path | None = None,
    drain_interval: float = 0.2,
) -> None:
    """Drain the outbox (if any) every ``drain_interval`` and seal what is new every ``interval``; ``stopped``
    waits and says whether to end. A sealing round drains first, so what was drained is sealed with it."""
    step = min(interval, drain_interval) if outbox is not None else interval
    now = time.monotonic()
    next_drain, next_seal = now + drain_interval, now + interval
    while not stopped(step):
        now = time.monotonic()
        sealing = now >= next_seal
        if outbox is not None and (sealing or now >= next_drain):
            next_drain = now + drain_interval
            try:
                audit_outbox.drain(engine, outbox)
            except Exception:
                log.exception("draining the audit outbox %s failed", outbox)
        if not sealing:
            continue
        next_seal = time.monotonic() + interval
        try:
            while audit.seal(engine) >= audit.SEAL_BATCH:  # a backlog: go on without waiting
                pass
        except Exception:
            log.exception("sealing the audit chain failed")


class SealerThread:
    """The sealer beside the app, in the app's process."""

    def __init__(
        self, engine: Engine, interval: float, outbox: Path | None = None, drain_interval: float = 0.2
    ) -> None:
        self.engine = engine
        self.interval = interval
        self.outbox = outbox
        self.drain_interval = drain_interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=seal_until,
                args=(self.engine, self.interval, self._stop.wait, self.outbox, self.drain_interval),
                name="nara-audit-sealer",
            )
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _process_main(
    database_url: str, interval: float, parent: int, outbox: Path | None = None, drain_interval: float = 0.2
) -> None:
    from nara.store.database import create_engine

    logging.basicConfig(level=logging.WARNING)
    engine = create_engine(database_url, pool_size=1)
    stop = threading.Event()

    def stopped(wait: float) -> bool:
        # The server that started this process is gone (it ended or was killed): end too.
        return stop.wait(wait) or os.getppid() != parent

    try:
        seal_until(engine, interval, stopped, outbox, drain_interval)
    finally:
        engine.dispose()


def start_process(
    database_url: str, interval: float, outbox: Path | None = None, drain_interval: float = 0.2
) -> multiprocessing.process.BaseProcess:
    """Start the sealer as its own process (a child of this one, which it outlives by at most ``interval``);
    with ``outbox``, it drains that directory's read-audit records into the log too."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_process_main,
        args=(database_url, interval, os.getpid(), outbox, drain_interval),
        name="nara-audit-sealer",
        daemon=True,
    )
    proc.start()
    return proc
