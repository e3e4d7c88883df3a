"""Alembic environment shipped with schemad.

Works both ways:

- under plain ``alembic`` (the quick-start commands), the URL comes from
  SCHEMAD_DATABASE_URL / SCHEMAD_DATABASE_URL_FILE, like schemad's;
- under ``schemad``, the connection arrives in ``config.attributes`` and
  logging is left alone (schemad routes Alembic's records through structlog).
"""

from logging.config import fileConfig

from alembic import context
from sqlalchemy import create_engine, pool

config = context.config
target_metadata = None


def _url() -> str:
    from schemad.errors import ConfigError
    from schemad.settings import load_settings

    try:
        return load_settings().url().render_as_string(hide_password=False)
    except ConfigError as exc:
        raise SystemExit(f"alembic: {exc.message}") from None


if config.config_file_name is not None and not config.attributes.get("schemad"):
    fileConfig(config.config_file_name)


def run_migrations_offline() -> None:
    url = config.get_main_option("sqlalchemy.url") if config.attributes.get("schemad") else _url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    context.configure(connection=connection, target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
