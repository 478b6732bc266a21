"""Schema migrations (Alembic, shipped in `migrations/`), run by `Store.open` and `rtcproctor db`.

Several server processes may start at once on one database, so an upgrade holds a lock
for its whole transaction: `pg_advisory_xact_lock` on PostgreSQL, `BEGIN IMMEDIATE` (the
write lock) on SQLite. Whoever comes second finds the schema at head and does nothing.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)
# Alembic narrates every context it opens at INFO; the store logs what changed instead.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

MIGRATIONS = Path(__file__).parent / "migrations"
BASELINE = "0001"
# What `Base.metadata.create_all` made before migrations existed; such a database is
# stamped at BASELINE rather than migrated.
BASELINE_TABLES = frozenset(
    {"exams", "students", "stream_events", "chat_messages", "attention_requests", "alerts"}
)
# pg_advisory_xact_lock takes a bigint: "RTCPROCT" in ASCII.
PG_LOCK_KEY = int.from_bytes(b"RTCPROCT", "big")
# Alembic keeps the running migration context in module globals, so two upgrades
# interleaving on one event loop would mix their connections: one at a time per process.
_UPGRADING = threading.Lock()


class LegacySchemaError(RuntimeError):
    """A database from before migrations that is not the schema BASELINE stands for."""


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert revision is not None
    return revision


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _lock(conn: Connection) -> None:
    """Held until the caller's transaction ends."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_LOCK_KEY})
    elif conn.dialect.name == "sqlite":
        # pysqlite leaves DDL outside transactions; taking the write lock by hand makes the
        # whole upgrade one transaction that a second process waits for (busy timeout).
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _adopt_legacy(conn: Connection, config: Config) -> None:
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" in tables or not tables & BASELINE_TABLES:
        return
    missing = BASELINE_TABLES - tables
    if missing:
        raise LegacySchemaError(
            "this database predates migrations and lacks tables "
            f"{', '.join(sorted(missing))}: it cannot be upgraded automatically"
        )
    log.info("database made before migrations: stamping it at revision %s", BASELINE)
    command.stamp(config, BASELINE)


def upgrade(conn: Connection, revision: str = "head") -> None:
    """Bring the schema to `revision` inside the connection's transaction; the caller commits."""
    _lock(conn)
    config = alembic_config(conn)
    _adopt_legacy(conn, config)
    before = current(conn)
    command.upgrade(config, revision)
    after = current(conn)
    if after != before:
        log.info("database schema upgraded from %s to %s", before or "empty", after)


async def upgrade_engine(engine: AsyncEngine, revision: str = "head") -> None:
    # A thread lock (event loops in several threads share Alembic's globals), polled rather
    # than awaited in a thread, so that a cancelled start never leaves it held.
    while not _UPGRADING.acquire(blocking=False):  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    try:
        async with engine.connect() as conn:
            await conn.run_sync(upgrade, revision)
            await conn.commit()
    finally:
        _UPGRADING.release()


async def revisions(engine: AsyncEngine) -> tuple[str | None, str]:
    """The database's revision (None before the first upgrade) and the code's head."""
    async with engine.connect() as conn:
        return await conn.run_sync(current), head()
