"""A Nära server whose reads write no audit record: the baseline for what the audit trail itself costs.

Used only by the ``security`` scenario, beside an ordinary ``nara serve`` on the same database, so that
docs/performance.md can show the cost of the policy (staff against an audited superuser) and of the audit
record (audited against unaudited superuser) separately. Nära itself has no switch to stop auditing
reads: the hook is replaced here, in the benchmark's own process, after the app is built exactly as
``nara serve`` builds it (one worker).

    python -m bench.unaudited_server --database-url postgresql://... --port 8081
"""

from __future__ import annotations

import argparse
from typing import Any


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from nara.config import Settings
    from nara.server.app import create_app
    from nara.store.store import Store

    p = argparse.ArgumentParser(prog="python -m bench.unaudited_server", description=__doc__.split("\n\n")[0])
    p.add_argument("--database-url", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args(argv)
    settings = Settings(database_url=args.database_url)
    store = Store.from_url(settings.database_url, settings.store, pool_size=settings.pool_size)
    app = create_app(settings, store)

    def no_audit(tx: Any, req: Any, out: Any) -> None:
        return None

    def no_read_record(tx: Any, req: Any) -> None:
        return None

    # The context of every request takes its audit hooks from the gate: the one after the interaction and the
    # one before it (which lets a read by id write its record in its own statement).
    app.state.gate.audit_read = no_audit
    app.state.gate.prepare_read_audit = no_read_record
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, proxy_headers=True)


if __name__ == "__main__":
    main()
