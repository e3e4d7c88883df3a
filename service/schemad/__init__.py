"""schemad: keep a database's schema at the target Alembic revision, safely."""

# The one place the version is written: pyproject.toml reads it from here, and
# reading it back from the installed metadata would cost every command ~60 ms.
__version__ = "0.1.0"
