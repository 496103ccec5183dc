"""The ``nara`` command: serve, migrate, import and export."""

from __future__ import annotations

import os
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

app = typer.Typer(help="Nära: shared health and social care on FHIR R4.", no_args_is_help=True)
db_app = typer.Typer(help="Database administration.", no_args_is_help=True)
app.add_typer(db_app, name="db")
console = Console()
err = Console(stderr=True)

DB_OPTION = typer.Option(
    None, "--database-url", envvar="NARA_DATABASE_URL", help="SQLAlchemy URL (default: SQLite file var/nara.db)"
)


def _settings(database_url: str | None) -> object:
    if database_url:
        os.environ["NARA_DATABASE_URL"] = database_url
    from nara.config import Settings

    return Settings()


def _migrate(url: str) -> None:
    """Bring the schema up to date, and guard the audit tables for the configured retention period."""
    from nara.config import Settings
    from nara.security.schema import install_guards
    from nara.store.database import create_engine, ensure_database
    from nara.store.migrate import upgrade

    days = Settings(database_url=url).security.audit_retention_days
    ensure_database(url)
    engine = create_engine(url)
    try:
        upgrade(engine)
        with engine.connect().execution_options(nara_write=True) as conn, conn.begin():
            install_guards(conn, days)
    finally:
        engine.dispose()


def _fail(message: str) -> None:
    err.print(f"[bold red]Error:[/] {message}")
    raise typer.Exit(1)


@db_app.command("upgrade")
def db_upgrade(database_url: str | None = DB_OPTION) -> None:
    """Create or migrate the database schema to the newest version (SQLite and PostgreSQL)."""
    from sqlalchemy.exc import OperationalError

    from nara.config import Settings

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    try:
        _migrate(settings.database_url)
    except OperationalError as e:
        _fail(f"cannot reach the database: {str(e.orig).splitlines()[0] if e.orig else e}")
    console.print(f"Database schema is up to date ({_safe_url(settings.database_url)}).")


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8080, help="TCP port"),
    database_url: str | None = DB_OPTION,
    workers: int = typer.Option(1, help="Worker processes (PostgreSQL only; SQLite uses one)"),
    migrate: bool = typer.Option(True, help="Apply schema migrations before starting"),
    log_level: str = typer.Option("info", help="Log level"),
) -> None:
    """Run the FHIR server."""
    import uvicorn

    from nara.config import Settings

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    if migrate:
        try:
            _migrate(settings.database_url)
        except Exception as e:
            _fail(f"cannot prepare the database {_safe_url(settings.database_url)}: {e.__class__.__name__}")
    if settings.database_url.startswith("sqlite"):
        workers = 1
    if settings.security.dev_idp:
        from nara.security.devidp import signing_key

        signing_key()  # create the development key once, before the workers start
    os.environ["NARA_DATABASE_URL"] = settings.database_url
    outbox = settings.security.audit_outbox
    external = settings.security.sealer == "external"
    if outbox is not None and external:
        err.print(
            "[yellow]NARA_AUDIT_OUTBOX is set and NARA_AUDIT_SEALER=external: this host's outbox is drained only by "
            f"a sealer that reads {outbox} (run `nara audit drain` or `nara audit seal` with --outbox on this host)[/]",
            soft_wrap=True,
        )
    if (
        outbox is None
        and not external  # nothing of this server would drain it: the reads' records go to the database
        and not os.environ.get("NARA_AUDIT_OUTBOX")
        and not settings.database_url.startswith("sqlite")
    ):
        # On PostgreSQL reads append their audit record to a local outbox that the sealer drains (ADR 0004).
        from nara.config import OUTBOX_DEFAULT

        outbox = os.path.abspath(OUTBOX_DEFAULT)
        os.environ["NARA_AUDIT_OUTBOX"] = outbox
    sealer = None
    if settings.security.sealer != "external":
        from nara.security.sealer import EXTERNAL, start_process

        # One sealer process for all workers (it ends with this process), instead of a thread in each; it
        # drains the read-audit outbox too (also what a killed server left there).
        sealer = start_process(
            settings.database_url,
            settings.security.seal_interval_seconds,
            Path(outbox) if outbox else None,
            settings.security.drain_interval_seconds,
        )
        os.environ["NARA_AUDIT_SEALER"] = EXTERNAL
    console.print(f"Nära is running at [bold]http://{host}:{port}/[/] (FHIR base http://{host}:{port}/fhir)")
    try:
        uvicorn.run(
            "nara.server.asgi:app",
            host=host,
            port=port,
            workers=workers,
            log_level=log_level,
            access_log=False,
            proxy_headers=True,
        )
    finally:
        if sealer is not None:
            sealer.terminate()
            sealer.join(timeout=10)


@app.command("import")
def import_(
    paths: list[Path] = typer.Argument(..., help="Files or folders: FHIR JSON resources, Bundles, NDJSON"),
    database_url: str | None = DB_OPTION,
    dedupe: bool = typer.Option(True, help="Create shared Organization/Practitioner/... once (by identifier)"),
) -> None:
    """Import FHIR data; a bad file is reported and does not stop the others."""
    from nara.config import Settings
    from nara.importing import Importer, ImportSummary, iter_files
    from nara.security.audit import operator_actor
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        _fail(f"no such file or folder: {', '.join(missing)}")
    from sqlalchemy.exc import OperationalError

    try:
        _migrate(settings.database_url)
    except OperationalError as e:
        _fail(f"cannot reach the database: {str(e.orig).splitlines()[0] if e.orig else e}")
    files = list(iter_files(paths))
    store = Store.from_url(settings.database_url, settings.store)
    importer = Importer(store, settings, dedupe=dedupe, actor=operator_actor("import"))
    summary = ImportSummary()
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as progress:
        task = progress.add_task("Importing", total=len(files))
        for f in files:
            progress.update(task, description=f"Importing {f.name[:40]}")
            importer.import_file(f, summary)
            progress.advance(task)
    store.dispose()
    table = Table(title="Import summary")
    for col in ("files", "created", "updated or existing", "failed"):
        table.add_column(col, justify="right")
    table.add_row(str(summary.files), str(summary.created), str(summary.updated), str(summary.failed))
    console.print(table)
    for name, reason in summary.errors[:50]:
        err.print(f"[red]failed[/] {name}: {reason}")
    if len(summary.errors) > 50:
        err.print(f"... and {len(summary.errors) - 50} more failures")
    if summary.failed:
        raise typer.Exit(2)


@app.command()
def export(
    out: Path = typer.Option(Path("export"), "--out", help="Folder for <Type>.ndjson files"),
    types: str | None = typer.Option(None, "--type", help="Comma-separated resource types (default: all)"),
    database_url: str | None = DB_OPTION,
) -> None:
    """Export current resources as NDJSON, one file per type."""
    from nara.config import Settings
    from nara.importing import export_ndjson
    from nara.security.audit import operator_actor
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    store = Store.from_url(settings.database_url, settings.store)
    from sqlalchemy.exc import OperationalError

    try:
        with console.status("Exporting..."):
            counts = export_ndjson(store, out, types.split(",") if types else None, actor=operator_actor("export"))
    except OperationalError as e:
        _fail(f"cannot reach the database: {str(e.orig).splitlines()[0] if e.orig else e}")
    finally:
        store.dispose()
    for rtype, n in counts.items():
        console.print(f"{rtype}: {n}")
    console.print(f"Wrote {sum(counts.values())} resources to {out}/")


@app.command()
def demo(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on"),
    port: int = typer.Option(8080, help="TCP port"),
    database_url: str = typer.Option("sqlite:///var/nara.db", help="Demo database (SQLite by default)"),
    patients: int | None = typer.Option(None, help="People in the demo region (default: about 3,000)"),
    seed: int = typer.Option(1, help="Seed of the synthetic region"),
) -> None:
    """Create the demo database with a synthetic region (first run only), print the demo logins and serve."""
    from nara.demo.generate import Options, is_empty
    from nara.demo.users import demo_users
    from nara.store.store import Store

    _migrate(database_url)
    store = Store.from_url(database_url)
    try:
        if is_empty(store):
            _generate_with_progress(store, Options(patients=patients, seed=seed))
        else:
            console.print(f"Reusing the demo data in {_safe_url(database_url)} (delete it to start afresh).")
        users = tuple(demo_users(store))
    finally:
        store.dispose()
    _print_demo_users(users, f"http://{host}:{port}")
    os.environ.setdefault("NARA_DEV_IDP", "true")
    serve(host=host, port=port, database_url=database_url, workers=1, migrate=False, log_level="warning")


def _generate_with_progress(store: object, options: object) -> object:
    """Run the region generator with a progress bar; prints the summary and any warnings."""
    from nara.demo.generate import Options, Summary, generate
    from nara.demo.population import scaled_counts
    from nara.store.store import Store

    assert isinstance(store, Store) and isinstance(options, Options)
    config = options.config()
    total = sum(scaled_counts(config, options.patients or config.default_patients).values())
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, TextColumn("{task.fields[resources]:,} resources"), console=console) as progress:
        task = progress.add_task(f"Generating {config.name}", total=total, resources=0)

        def advance(people: int, resources: int) -> None:
            written = progress.tasks[task].fields["resources"] + resources
            progress.update(task, advance=people, resources=written)

        summary = generate(store, options, advance)
    assert isinstance(summary, Summary)
    rate = summary.resources / summary.seconds if summary.seconds else 0.0
    console.print(
        f"{summary.region}: {summary.people:,} people, {summary.resources:,} resources and "
        f"{summary.directory_resources:,} directory entries in {summary.seconds:,.1f} s ({rate:,.0f} resources/s); "
        f"{summary.from_test_file:,} personnummer from Skatteverket's test numbers, "
        f"{summary.generated_personnummer:,} generated."
    )
    for warning in summary.warnings:
        err.print(f"[yellow]Warning:[/] {warning}")
    return summary


def _print_demo_users(users: tuple[object, ...], root: str) -> None:
    console.print("[bold]Demo logins[/] (development identity provider, log in at " + root + "/auth/login):")
    for u in users:
        d = vars(u)
        extra = f" assignment {d['assignment']}" if d.get("assignment") else ""
        extra += f" for {d['patient']}" if d.get("patient") else ""
        console.print(f"  [bold]{d['name']}[/] ({d['kind']}): {d['sub']}{extra}")
        console.print(f"      {d['description']}", highlight=False)
    if not users:
        console.print("  (none: this database has no demo region)")
    console.print(f"Landing page {root}/ · CapabilityStatement {root}/fhir/metadata")


@app.command()
def generate(
    patients: int | None = typer.Option(None, help="People to generate (default: the region's size)"),
    region: str = typer.Option("orebro", help="Region shape: orebro (12 municipalities) or skane (33, 1.4 million)"),
    seed: int = typer.Option(1, help="Seed: the same seed gives the same data"),
    as_of: str | None = typer.Option(None, "--as-of", help="Reference date YYYY-MM-DD (default: today)"),
    personnummer_file: Path | None = typer.Option(
        None,
        envvar="NARA_TESTPERSONNUMMER",
        help="Skatteverket's test personnummer, one per line (default: ../shared/data/testpersonnummer.txt)",
    ),
    workers: int = typer.Option(2, help="Generator processes (PostgreSQL; SQLite uses one)"),
    validate: bool = typer.Option(True, help="Validate every resource on the way in"),
    database_url: str | None = DB_OPTION,
) -> None:
    """Generate a synthetic region into an empty database through the bulk loader."""
    from datetime import date

    from nara.config import Settings
    from nara.demo.generate import Options, is_empty
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    try:
        options = Options(
            region=region,
            patients=patients,
            seed=seed,
            as_of=date.fromisoformat(as_of) if as_of else None,
            personnummer_file=personnummer_file,
            workers=max(1, workers),
            validate=validate,
        )
        options.config()
    except ValueError as e:
        _fail(str(e))
    if personnummer_file is not None and not personnummer_file.exists():
        _fail(f"no such file: {personnummer_file}")
    _migrate(settings.database_url)
    store = Store.from_url(settings.database_url, settings.store)
    try:
        if not is_empty(store):
            _fail(f"{_safe_url(settings.database_url)} already holds data; generate into an empty database")
        _generate_with_progress(store, options)
    finally:
        store.dispose()


audit_app = typer.Typer(help="The access log: verify, seal and review.", no_args_is_help=True)
app.add_typer(audit_app, name="audit")


@app.command()
def token(
    user: str | None = typer.Option(None, "--user", help="Staff HSA-id, or a citizen's personnummer"),
    assignment: str | None = typer.Option(None, "--assignment", help="Assignment (medarbetaruppdrag) HSA-id"),
    patient: str | None = typer.Option(
        None,
        "--patient",
        help="For a proxy: the represented person's personnummer; for staff: the launch patient's Patient id",
    ),
    client: str | None = typer.Option(None, "--client", help="A system client id (client-credentials style token)"),
    scope: str | None = typer.Option(None, "--scope", help="SMART scopes (default by actor kind)"),
    other_units: bool = typer.Option(False, help="Staff: the active choice to see other units' data (R-ACC-2)"),
    ttl: int = typer.Option(3600, help="Lifetime in seconds"),
    audience: str = typer.Option("nara", envvar="NARA_AUDIENCE", help="Token audience"),
    database_url: str | None = DB_OPTION,
) -> None:
    """Print a token from the development identity provider (for scripts, tests and benchmarks)."""
    from nara.fhir.identifiers import is_valid_personal_identity
    from nara.security.devidp import mint, signing_key

    if client:
        print(mint(signing_key(), client, "system", audience=audience, scope=scope, ttl=ttl))
        return
    if not user:
        _fail("give --user (staff HSA-id or personnummer) or --client")
    assert user is not None
    if is_valid_personal_identity(user):
        kind = "proxy" if patient else "citizen"
        print(mint(signing_key(), user, kind, audience=audience, patient=patient, scope=scope, ttl=ttl))
        return
    if assignment is None:
        assignment = _first_assignment(user, database_url)
    extra = {"other_units": True} if other_units else None
    print(
        mint(
            signing_key(),
            user,
            "staff",
            audience=audience,
            assignment=assignment,
            patient=patient,
            scope=scope,
            ttl=ttl,
            extra=extra,
        )
    )


def _first_assignment(hsa_id: str, database_url: str | None) -> str:
    """The staff member's first active assignment in the directory."""
    from nara.config import Settings
    from nara.security.identity import HSA_SYSTEMS_, by_identifier
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    store = Store.from_url(settings.database_url, settings.store)
    try:
        with store.transaction(write=False) as tx:
            prac = by_identifier(tx, "Practitioner", HSA_SYSTEMS_, hsa_id)
            if prac is None:
                _fail(f"no staff member with HSA-id {hsa_id} in the directory")
            assert prac is not None
            from nara.store.search import search_ids

            for role in search_ids(
                tx, "PractitionerRole", f"practitioner=Practitioner/{prac.res_id}&active=true", limit=20
            ):
                for ident in role.resource().get("identifier", []):
                    if ident.get("value"):
                        return str(ident["value"])
    finally:
        store.dispose()
    _fail(f"{hsa_id} has no active assignment; give --assignment")
    raise AssertionError("unreachable")


def _engine(database_url: str | None) -> object:
    from nara.config import Settings
    from nara.store.database import create_engine

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    return create_engine(settings.database_url)


OUTBOX_OPTION = typer.Option(
    None,
    "--outbox",
    envvar="NARA_AUDIT_OUTBOX",
    help="This host's read-audit outbox directory (default: nara serve's, var/audit-outbox)",
)


def _drain(engine: object, outbox: Path | None) -> int:
    """Drain this host's read-audit outbox into the log (nothing on SQLite, which has none)."""
    from sqlalchemy.engine import Engine

    from nara.config import OUTBOX_DEFAULT, audit_outbox_dir
    from nara.security.audit_outbox import drain
    from nara.store.database import is_postgres

    assert isinstance(engine, Engine)
    directory = audit_outbox_dir(str(outbox) if outbox is not None else OUTBOX_DEFAULT)
    if not is_postgres(engine) or directory is None:
        return 0
    return drain(engine, Path(directory))


@audit_app.command("drain")
def audit_drain(outbox: Path | None = OUTBOX_OPTION, database_url: str | None = DB_OPTION) -> None:
    """Bring the read-audit records waiting in this host's outbox into the log (the sealer of nara serve does
    it several times a second; run this after the whole server was killed and is not started again)."""
    engine = _engine(database_url)
    try:
        n = _drain(engine, outbox)
    finally:
        engine.dispose()  # type: ignore[attr-defined]
    console.print(f"Drained {n} audit records from the outbox.")


@audit_app.command("seal")
def audit_seal(outbox: Path | None = OUTBOX_OPTION, database_url: str | None = DB_OPTION) -> None:
    """Chain every not yet sealed audit record (after draining this host's outbox)."""
    from sqlalchemy.engine import Engine

    from nara.security.audit import seal_all

    engine = _engine(database_url)
    assert isinstance(engine, Engine)
    _drain(engine, outbox)
    n = seal_all(engine)
    engine.dispose()
    console.print(f"Sealed {n} audit records.")


@audit_app.command("verify")
def audit_verify(
    anchor: list[str] = typer.Option(
        [],
        "--anchor",
        metavar="POSITION:HASH",
        help="A head printed earlier and kept outside the database; the chain must still hold it (repeatable)",
    ),
    archived_to: str | None = typer.Option(
        None,
        metavar="POSITION:HASH",
        help="The anchor of the last record archived (deleted past the retention period): the chain starts after it",
    ),
    database_url: str | None = DB_OPTION,
) -> None:
    """Verify the audit hash chain; report the first altered, inserted or deleted record."""
    from sqlalchemy.engine import Engine

    from nara.security.audit import parse_anchor, verify

    try:
        anchors = dict(parse_anchor(a) for a in anchor)
        start = parse_anchor(archived_to) if archived_to is not None else None
    except ValueError as e:
        err.print(f"[bold red]{e}[/]", soft_wrap=True)
        raise typer.Exit(2) from None
    engine = _engine(database_url)
    assert isinstance(engine, Engine)
    with console.status("Verifying the audit chain..."):
        report = verify(engine, anchors=anchors, archived_to=start)
    engine.dispose()
    if not report.ok:
        broken = f"[bold red]Audit chain broken[/] after {report.checked} good records: {report.problem}"
        err.print(broken, soft_wrap=True)
        raise typer.Exit(3)
    held = sum(1 for position in anchors if position > report.archived)
    console.print(
        f"Audit chain intact: {report.checked} sealed records"
        f"{f' after {report.archived} archived' if report.archived else ''}; {report.unsealed} not yet sealed"
        f"{f'; {held} anchors held' if anchors else ''}. Head (keep it outside the database, "
        f"check it later with --anchor): {report.head_anchor or '-'}",
        soft_wrap=True,
    )


@audit_app.command("review")
def audit_review(
    days: int = typer.Option(30, help="Review the last N days"),
    sample: float = typer.Option(0.05, help="Share of accesses drawn at random"),
    vip: str = typer.Option("", help="Comma-separated Patient ids on the VIP list"),
    reviewer: str | None = typer.Option(None, help="Record a completed review by this reviewer (HSA-id)"),
    finding: str | None = typer.Option(None, help="The review's finding (with --reviewer)"),
    action: str | None = typer.Option(None, help="The action taken (with --reviewer)"),
    outbox: Path | None = OUTBOX_OPTION,
    database_url: str | None = DB_OPTION,
) -> None:
    """List flagged accesses (R-LOG-4 criteria plus a random sample); optionally record the completed review."""
    from nara.config import Settings
    from nara.security import audit
    from nara.security.review import run_review
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    store = Store.from_url(settings.database_url, settings.store)
    start, end = audit.default_period(days)
    _drain(store.engine, outbox)  # reads of a moment ago on this host are reviewed too
    try:
        with store.transaction() as tx:
            items = run_review(tx, start, end, vip=[v for v in vip.split(",") if v], sample_rate=sample)
            # Showing the accesses is reading each listed patient's log: logged against each (R-LOG-3/4).
            audit.record_operator(
                tx.conn,
                audit.operator_actor("audit review"),
                "log-review",
                f"nara audit review --days {days}",
                (i.patient_id for i in items if i.patient_id),
                access_type="log-review",
            )
            table = Table(title=f"Accesses to review, {start:%Y-%m-%d} to {end:%Y-%m-%d}")
            for col in ("seq", "time (UTC)", "user", "unit", "patient", "action", "criteria"):
                table.add_column(col)
            for i in items:
                table.add_row(
                    str(i.seq),
                    f"{i.recorded_at:%Y-%m-%d %H:%M}",
                    i.user_name or i.user_id or "",
                    i.unit_id or "",
                    i.patient_id or "",
                    i.action,
                    ", ".join(i.criteria),
                )
            console.print(table)
            if reviewer:
                if not finding or not action:
                    _fail("recording a review needs --finding and --action")
                events = [i.seq for i in items]
                if not events:
                    _fail("there is nothing to review in this period")
                rid = audit.store_review(tx.conn, reviewer, events, str(finding), str(action), (start, end))
                console.print(f"Recorded review {rid} by {reviewer}.")
    finally:
        store.dispose()


@app.command("reindex")
def reindex_command(
    database_url: str | None = DB_OPTION,
    types: str | None = typer.Option(None, "--type", help="Comma-separated resource types (default: all)"),
    batch_size: int = typer.Option(500, help="Resources per transaction"),
) -> None:
    """Rebuild the search index rows and the derived access rules (care relationships, consents, blocks) of
    every stored resource, after the extraction or access rules changed."""
    from nara.config import Settings
    from nara.fhir.spec import spec
    from nara.store.reindex import count_resources, reindex
    from nara.store.store import Store

    settings = _settings(database_url)
    assert isinstance(settings, Settings)
    wanted = [t.strip() for t in types.split(",") if t.strip()] if types else None
    unknown = [t for t in wanted or [] if t not in spec().resource_types]
    if unknown:
        _fail(f"unknown resource type {unknown[0]!r}")
    _migrate(settings.database_url)
    store = Store.from_url(settings.database_url, settings.store)
    try:
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("Reindexing", total=count_resources(store, wanted))
            summary = reindex(store, wanted, batch_size, lambda n: progress.advance(task, n))
    finally:
        store.dispose()
    console.print(
        f"Reindexed {summary.resources} resources: {summary.rows} index rows; "
        f"{summary.moved} changed patient compartment."
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
