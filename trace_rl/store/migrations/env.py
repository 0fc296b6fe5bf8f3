"""Alembic environment: migrations run on the engine trace-rl hands over (see trace_rl.store.db.upgrade)."""

from alembic import context

from trace_rl.store.models import Base

engine = context.config.attributes.get("engine")
if engine is None:
    raise RuntimeError("run migrations through `trace-rl db upgrade`, which supplies the database engine")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
