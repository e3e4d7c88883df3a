"""schemad: keep a database's schema at the target Alembic revision, safely."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("schemad")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
