"""The audit sealer: every few seconds it chains the audit records written since (``audit.seal``).

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
from collections.abc import Callable

from sqlalchemy.engine import Engine

from nara.security import audit

log = logging.getLogger("nara.security.sealer")
EXTERNAL = "external"  # NARA_AUDIT_SEALER: another process seals (nara serve starts it)


def seal_until(engine: Engine, interval: float, stopped: Callable[[float], bool]) -> None:
    """Seal what is new, wait ``interval`` (``stopped`` waits and says whether to end), and again."""
    while not stopped(interval):
        try:
            while audit.seal(engine) >= audit.SEAL_BATCH:  # a backlog: go on without waiting
                pass
        except Exception:
            log.exception("sealing the audit chain failed")


class SealerThread:
    """The sealer beside the app, in the app's process."""

    def __init__(self, engine: Engine, interval: float) -> None:
        self.engine = engine
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(
                target=seal_until, args=(self.engine, self.interval, self._stop.wait), name="nara-audit-sealer"
            )
            self._thread.daemon = True
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None


def _process_main(database_url: str, interval: float, parent: int) -> None:
    from nara.store.database import create_engine

    logging.basicConfig(level=logging.WARNING)
    engine = create_engine(database_url, pool_size=1)
    stop = threading.Event()

    def stopped(wait: float) -> bool:
        # The server that started this process is gone (it ended or was killed): end too.
        return stop.wait(wait) or os.getppid() != parent

    try:
        seal_until(engine, interval, stopped)
    finally:
        engine.dispose()


def start_process(database_url: str, interval: float) -> multiprocessing.process.BaseProcess:
    """Start the sealer as its own process (a child of this one, which it outlives by at most ``interval``)."""
    ctx = multiprocessing.get_context("spawn")
    proc = ctx.Process(
        target=_process_main, args=(database_url, interval, os.getpid()), name="nara-audit-sealer", daemon=True
    )
    proc.start()
    return proc
