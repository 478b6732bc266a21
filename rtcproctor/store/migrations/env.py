"""Alembic environment: migrations run on the connection `rtcproctor.store.migrate` hands over.

There is no alembic.ini: the store configures Alembic in code, takes the upgrade lock and
owns the transaction, so this file only binds that connection to the models' metadata.
"""

from alembic import context

from rtcproctor.store.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through rtcproctor.store.migrate (`rtcproctor db upgrade`)")

# Batch mode lets later revisions alter SQLite tables (it has almost no ALTER TABLE).
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
