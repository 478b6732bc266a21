"""Alembic migrations: exactly the models' schema, old databases adopted, upgrades serialised.

Every test runs on a real SQLite file and on a real PostgreSQL server (`database_url`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, inspect
from sqlalchemy.ext.asyncio import create_async_engine

from rtcproctor.store import Store, migrate
from rtcproctor.store.migrate import BASELINE_TABLES, LegacySchemaError
from rtcproctor.store.models import Base


def _differences(conn: Connection) -> list:
    context = MigrationContext.configure(
        conn, opts={"compare_type": True, "compare_server_default": True}
    )
    return compare_metadata(context, Base.metadata)


async def run_sync(url: str, fn, *args):
    """Run `fn(sync_connection, *args)` on a throwaway engine and commit."""
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            result = await conn.run_sync(fn, *args)
            await conn.commit()
            return result
    finally:
        await engine.dispose()


def _tables(conn: Connection) -> set[str]:
    return set(inspect(conn).get_table_names())


def _drop_index(conn: Connection) -> None:
    conn.exec_driver_sql("DROP INDEX ix_alerts_student_at")


async def _revision(url: str) -> str | None:
    return await run_sync(url, migrate.current)


async def test_migrations_make_exactly_the_models_schema(database_url):
    store = await Store.open(database_url)
    assert await migrate.revisions(store.engine) == (migrate.head(), migrate.head())
    await store.close()
    assert await run_sync(database_url, _tables) == BASELINE_TABLES | {"alembic_version"}
    assert await run_sync(database_url, _differences) == []

    await run_sync(database_url, _drop_index)  # the comparison does see a difference
    assert [d[0] for d in await run_sync(database_url, _differences)] == ["add_index"]


async def test_a_database_made_by_create_all_is_adopted(database_url):
    engine = create_async_engine(database_url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)  # what Store.open did before migrations
    old = Store(engine)
    exam, key = await old.create_exam("made before migrations")
    [(student, _code)] = await old.add_students(exam.id, ["Ann"])
    await old.add_message(student.id, "student", "still here")
    await old.close()
    assert await _revision(database_url) is None

    store = await Store.open(database_url)
    try:
        assert await migrate.revisions(store.engine) == (migrate.head(), migrate.head())
        assert await store.exam_by_key(key) == exam
        assert [m.text for m in await store.messages(student.id)] == ["still here"]
    finally:
        await store.close()
    assert await run_sync(database_url, _differences) == []


def _create_all_but_alerts(conn: Connection) -> None:
    Base.metadata.create_all(
        conn, tables=[t for t in Base.metadata.sorted_tables if t.name != "alerts"]
    )


async def test_an_older_partial_schema_is_refused_not_guessed(database_url):
    await run_sync(database_url, _create_all_but_alerts)
    with pytest.raises(LegacySchemaError, match="alerts"):
        await Store.open(database_url)
    assert "alembic_version" not in await run_sync(database_url, _tables)


async def test_stores_opening_together_upgrade_once(database_url):
    """Replicas start at once: the upgrade lock makes all of them succeed on one schema."""
    stores = await asyncio.gather(*(Store.open(database_url) for _ in range(6)))
    try:
        for store in stores:
            assert await migrate.revisions(store.engine) == (migrate.head(), migrate.head())
        exam, key = await stores[0].create_exam()
        assert await stores[-1].exam_by_key(key) == exam
    finally:
        for store in stores:
            await store.close()
    assert await run_sync(database_url, _differences) == []


def db_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "rtcproctor", "db", *args], capture_output=True, text=True
    )


def test_db_commands_show_and_apply_migrations(database_url):
    url = ["--database", database_url]
    if database_url.startswith("sqlite"):
        missing = db_command("current", *url)
        assert missing.returncode == 2 and "no database at" in missing.stderr
    else:
        empty = db_command("current", *url)
        assert empty.returncode == 1 and empty.stdout.startswith("none (head is ")
    upgraded = db_command("upgrade", *url)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout == f"{migrate.head()} (head)\n"
    now = db_command("current", *url)
    assert now.returncode == 0 and now.stdout == f"{migrate.head()} (head)\n"


def test_backup_points_postgresql_to_pg_dump(postgres):
    url = postgres.database()
    out = subprocess.run(
        [sys.executable, "-m", "rtcproctor", "backup", "copy.db", "--database", url],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "pg_dump" in out.stderr and url.replace("+asyncpg", "") in out.stderr
