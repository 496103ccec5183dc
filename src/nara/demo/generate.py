"""Generating a synthetic region into a store: the directory through the admin operations, people in bulk.

``generate(store, Options(...))`` is what ``nara demo`` (small region, SQLite) and ``nara generate`` (any size,
PostgreSQL, several worker processes) run. The output is deterministic for (region, patients, seed, as_of and
the test-number file): same inputs, same resources.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from sqlalchemy import select

from nara.demo import scenario
from nara.demo.clinical import Item, RecordContext, person_record
from nara.demo.organisation import RegionDirectory, build_directory
from nara.demo.personnummer import PersonnummerPool, default_path
from nara.demo.population import Person, make_people
from nara.demo.regions import REGIONS, RegionConfig
from nara.directory import admin
from nara.store.bulk import BulkLoader
from nara.store.schema import resource
from nara.store.store import Store

CHUNK = 1000  # people per unit of work


@dataclass
class Options:
    region: str = "orebro"
    patients: int | None = None  # default: the region's default size
    seed: int = 1
    as_of: date | None = None  # default: today
    personnummer_file: Path | None = None  # default: NARA_TESTPERSONNUMMER or ../shared/data
    workers: int = 1  # processes generating and loading people (PostgreSQL only)
    batch_size: int = 5000
    validate: bool = True  # validate every resource on the way in (as the normal write path does)

    def config(self) -> RegionConfig:
        try:
            return REGIONS[self.region]
        except KeyError:
            raise ValueError(f"Unknown region {self.region!r} (known: {', '.join(REGIONS)})") from None


@dataclass
class Summary:
    region: str
    people: int = 0
    resources: int = 0
    directory_resources: int = 0
    from_test_file: int = 0
    generated_personnummer: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)


Progress = Callable[[int, int], None]  # (people done, resources written) increments


def is_empty(store: Store) -> bool:
    with store.engine.connect() as conn:
        return conn.execute(select(resource.c.rid).limit(1)).first() is None


def region_records(
    options: Options, pool: PersonnummerPool | None = None
) -> tuple[RegionDirectory, Iterator[tuple[Person, list[Item]]]]:
    """The directory and, lazily, every person with their record (what :func:`generate` writes), without a store."""
    config = options.config()
    as_of = options.as_of or date.today()
    pool = pool or PersonnummerPool(options.seed, options.personnummer_file or default_path())
    directory = build_directory(config, options.seed)
    scenario.tag_staff(directory)
    ctx = RecordContext(directory, as_of, config.monitoring_days, config.county)

    def people() -> Iterator[tuple[Person, list[Item]]]:
        for batch in _people(options, directory, pool):
            for person in batch:
                yield person, person_record(person, ctx)

    return directory, people()


def _people(options: Options, directory: RegionDirectory, pool: PersonnummerPool) -> Iterator[list[Person]]:
    config = options.config()
    as_of = options.as_of or date.today()
    patients = options.patients or config.default_patients
    biggest = max(config.municipalities, key=lambda m: m.population).code
    for people in make_people(config, directory, patients, options.seed, as_of, pool):
        if people and people[0].municipality == biggest:
            scenario.apply(people, directory, as_of)
        yield people


def write_directory(store: Store, directory: RegionDirectory) -> int:
    """The directory through the validated admin operations (normal write path, one transaction)."""
    adders: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
        "Organization": admin.add_organization,
        "Practitioner": admin.add_practitioner,
        "PractitionerRole": admin.add_assignment,
        "Location": admin.add_location,
        "HealthcareService": admin.add_service,
    }
    with store.transaction() as tx:
        for res in directory.resources:
            adders[res["resourceType"]](tx, res)
    return len(directory.resources)


def install_rule_hooks(store: Store) -> None:
    """Keep the access-rule indexes (care relationships, consents, blocks) in step with what is written."""
    try:
        from nara.security.rules import on_write
    except ImportError:  # the security package is not installed in this build
        return
    hooks = getattr(store, "write_hooks", None)
    if hooks is not None and on_write not in hooks:
        hooks.append(on_write)


def generate(store: Store, options: Options, progress: Progress | None = None) -> Summary:
    """Write the synthetic region into ``store`` (which should be empty); returns what was written."""
    started = time.perf_counter()
    install_rule_hooks(store)
    config = options.config()
    path = options.personnummer_file or default_path()
    pool = PersonnummerPool(options.seed, path)
    summary = Summary(config.name)
    directory, _ = region_records(options, pool)
    summary.directory_resources = write_directory(store, directory)
    as_of = options.as_of or date.today()
    ctx = RecordContext(directory, as_of, config.monitoring_days, config.county)
    batches = _people(options, directory, pool)
    if options.workers > 1 and store.postgres:
        _parallel(store, ctx, batches, options, summary, progress)
    else:
        _serial(store, ctx, batches, options, summary, progress)
    summary.from_test_file = pool.from_file
    summary.generated_personnummer = pool.generated
    if not pool.has_file:
        summary.warnings.append(
            f"Skatteverket's test personnummer were not found ({path or 'no file configured'}; set "
            "NARA_TESTPERSONNUMMER): every personnummer was generated (Luhn-valid, tagged "
            "'generated-personnummer') and may coincide with a real person's."
        )
    elif pool.generated:
        summary.warnings.append(
            f"The test-number file ran out for {pool.generated} of {summary.people} people (it is sparse before "
            "1976 and has about 41,000 numbers): they got generated numbers, tagged 'generated-personnummer'."
        )
    summary.seconds = time.perf_counter() - started
    return summary


def _serial(
    store: Store,
    ctx: RecordContext,
    batches: Iterator[list[Person]],
    options: Options,
    summary: Summary,
    progress: Progress | None,
) -> None:
    def on_batch(n: int) -> None:
        summary.resources += n
        if progress:
            progress(0, n)

    with BulkLoader(store, batch_size=options.batch_size, on_batch=on_batch, validate=options.validate) as loader:
        for people in batches:
            for person in people:
                for res, owner in person_record(person, ctx):
                    loader.add(res, owner)
                summary.people += 1
                if progress:
                    progress(1, 0)
    loader.analyze()


# ---- parallel loading (PostgreSQL) ---------------------------------------------------------------
_worker_state: dict[str, Any] = {}


def _init_worker(url: str, ctx: RecordContext, batch_size: int, validate: bool) -> None:
    from nara.store.store import StoreSettings

    _worker_state["store"] = Store.from_url(url, StoreSettings(statement_timeout_ms=0), pool_size=1)
    install_rule_hooks(_worker_state["store"])
    _worker_state["ctx"] = ctx
    _worker_state["batch_size"] = batch_size
    _worker_state["validate"] = validate


def _load_chunk(people: list[Person]) -> tuple[int, int]:
    store: Store = _worker_state["store"]
    ctx: RecordContext = _worker_state["ctx"]
    loader = BulkLoader(store, batch_size=_worker_state["batch_size"], validate=_worker_state["validate"])
    for person in people:
        for res, owner in person_record(person, ctx):
            loader.add(res, owner)
    loader.finish()
    return len(people), loader.stats.resources


def _chunks(batches: Iterator[list[Person]]) -> Iterator[list[Person]]:
    for people in batches:
        for i in range(0, len(people), CHUNK):
            yield people[i : i + CHUNK]


def _parallel(
    store: Store,
    ctx: RecordContext,
    batches: Iterator[list[Person]],
    options: Options,
    summary: Summary,
    progress: Progress | None,
) -> None:
    url = store.engine.url.render_as_string(hide_password=False)
    mp = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(
        options.workers,
        mp_context=mp,
        initializer=_init_worker,
        initargs=(url, ctx, options.batch_size, options.validate),
    ) as pool:
        pending: set[cf.Future[tuple[int, int]]] = set()

        def collect(done: set[cf.Future[tuple[int, int]]]) -> None:
            for fut in done:
                people, written = fut.result()
                summary.people += people
                summary.resources += written
                if progress:
                    progress(people, written)

        for chunk in _chunks(batches):
            pending.add(pool.submit(_load_chunk, chunk))
            if len(pending) >= options.workers * 3:
                done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                collect(done)
        done, _ = cf.wait(pending)
        collect(done)
    BulkLoader(store).analyze()
