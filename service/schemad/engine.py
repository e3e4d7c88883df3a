"""EDGE: the SQLAlchemy engine and what schemad tunes in the drivers.

The dialect object (:mod:`schemad.dialect`) decides what each database
gets; this module holds the mechanics: building the engine, TCP keepalives
on a socket, PyMySQL's TLS on a local server, and SQLite's transactional DDL.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from contextlib import ExitStack, suppress
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine
from sqlalchemy.exc import NoSuchModuleError

from schemad.errors import ConfigError

if TYPE_CHECKING:
    from schemad.dialect import Dialect

# A peer that stops answering (blackholed network) is given up on after about
# idle + interval * count seconds when idle, TCP_USER_TIMEOUT when sending.
KEEPALIVE_IDLE_SECONDS = 10
KEEPALIVE_INTERVAL_SECONDS = 5
KEEPALIVE_COUNT = 3
TCP_USER_TIMEOUT_SECONDS = 30
# Query keys through which a URL asks PyMySQL for TLS: ssl_* directly, and
# read_default_file/read_default_group, whose option file may hold ssl-ca etc.
_MYSQL_TLS_QUERY_PREFIXES = ("ssl", "read_default")


# schemad's own work (version reads, the lock, history, drift) runs on a
# synchronous driver; env.py gets the URL as written, async driver and all.
_SYNC_DRIVERS = {
    ("postgresql", "asyncpg"): "psycopg",
    ("postgresql", "psycopg_async"): "psycopg",
    ("mysql", "aiomysql"): "pymysql",
    ("mysql", "asyncmy"): "pymysql",
    ("mariadb", "aiomysql"): "pymysql",
    ("mariadb", "asyncmy"): "pymysql",
    ("sqlite", "aiosqlite"): "pysqlite",
}
# Query options asyncpg understands that libpq does not, and what they become.
_ASYNCPG_TO_LIBPQ = {"ssl": "sslmode"}
_ASYNCPG_ONLY = frozenset(
    {
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "command_timeout",
        "timeout",
        "server_settings",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
    }
)
# Options an async MySQL driver takes that PyMySQL refuses.
_ASYNC_MYSQL_ONLY = frozenset({"echo", "loop"})
# pip packages of drivers SQLAlchemy knows by name, for "install it" messages.
DRIVER_PACKAGES = {
    "psycopg": "psycopg[binary]",
    "psycopg2": "psycopg2-binary",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "psycopg_async": "psycopg[binary]",
    "pymysql": "pymysql",
    "mysqldb": "mysqlclient",
    "mysqlconnector": "mysql-connector-python",
    "aiomysql": "aiomysql",
    "asyncmy": "asyncmy",
    "aiosqlite": "aiosqlite",
}


def sync_url(url: URL) -> URL:
    """The URL schemad itself connects with: an async driver's sync sibling.

    Only options the sync driver knows are carried over (asyncpg's ``ssl``
    becomes libpq's ``sslmode``); the connect timeout and keepalives are
    schemad's own either way.
    """
    backend, driver = url.get_backend_name(), url.get_driver_name()
    sync = _SYNC_DRIVERS.get((backend, driver))
    if sync is None:
        return url
    query = dict(url.query)
    if driver == "asyncpg":
        query = {
            _ASYNCPG_TO_LIBPQ.get(key, key): value
            for key, value in query.items()
            if key not in _ASYNCPG_ONLY
        }
    elif backend in ("mysql", "mariadb"):
        query = {key: value for key, value in query.items() if key not in _ASYNC_MYSQL_ONLY}
    return url.set(drivername=f"{backend}+{sync}", query=query)


def instance_name() -> str:
    """Who we are, as other instances will see it: host (pod) and pid."""
    return f"schemad:{socket.gethostname()}:{os.getpid()}"


def create_engine(url: URL, dialect: Dialect, connect_timeout_seconds: float) -> Engine:
    """The engine for ``url``, with ``dialect``'s connect arguments and tuning.

    Raises:
        ConfigError: the URL's driver is not installed.
    """
    try:
        engine = sa.create_engine(
            url, connect_args=dialect.connect_args(url, connect_timeout_seconds)
        )
    except (NoSuchModuleError, ImportError) as exc:
        package = DRIVER_PACKAGES.get(url.get_driver_name())
        install = f"install it (pip install {package}) or " if package else ""
        raise ConfigError(
            f"SCHEMAD_DATABASE_URL={url.render_as_string(hide_password=True)}: the "
            f"driver '{url.drivername}' is not available ({exc}); {install}use "
            "postgresql+psycopg://, mysql+pymysql:// or sqlite:///",
            variable="SCHEMAD_DATABASE_URL",
        ) from exc
    dialect.tune(engine)
    return engine


def local_pymysql_without_tls_options(url: URL) -> bool:
    """Whether PyMySQL may skip TLS: a loopback or socket server, no TLS asked for.

    Since PyMySQL 1.2.0 (checked up to 1.2.4), a connect given no ssl option
    runs in "preferred" mode: it builds a fresh ``ssl.create_default_context()``
    (loading the system CA store, about 16 ms here) and, when the server
    advertises TLS, encrypts without checking the certificate or the host
    name. PyMySQL 1.1.x used no TLS at all without an ssl option, so there
    ``ssl_disabled=True`` changes nothing. On loopback or a unix socket that
    encryption protects nothing, so schemad passes ``ssl_disabled=True`` there
    unless the URL asks for TLS; any other host keeps PyMySQL's default.
    ``ssl_disabled`` overrides every other ssl option in PyMySQL, hence the
    refusal whenever the URL carries one.
    """
    if url.get_driver_name() != "pymysql":
        return False
    if any(key.lower().startswith(_MYSQL_TLS_QUERY_PREFIXES) for key in url.query):
        return False
    return "unix_socket" in url.query or _is_loopback(url.host)


def _is_loopback(host: str | None) -> bool:
    if not host:  # PyMySQL connects to localhost when the URL names no host
        return True
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: it may be anywhere
        return False


def keep_mysql_sockets_alive(engine: Engine) -> None:
    """PyMySQL has no keepalive options; without them a blackholed network
    leaves a read blocked for the kernel's ~15 minute retransmission limit."""

    @event.listens_for(engine, "connect")
    def _keepalive(dbapi_connection: Any, _record: Any) -> None:
        sock = getattr(dbapi_connection, "_sock", None)
        if sock is not None:
            configure_keepalive(sock)


def unbound_pymysql_reads_once_connected(engine: Engine) -> None:
    """Lift the read and write timeouts that bounded PyMySQL's handshake.

    PyMySQL applies ``_read_timeout``/``_write_timeout`` to the socket before
    each read and write, so clearing them makes every later statement wait
    as long as it takes (bounded by schemad's own deadlines where it wants).
    """

    @event.listens_for(engine, "connect")
    def _unbound(dbapi_connection: Any, _record: Any) -> None:
        if hasattr(dbapi_connection, "_read_timeout"):
            dbapi_connection._read_timeout = None
            dbapi_connection._write_timeout = None


def configure_keepalive(sock: socket.socket) -> None:
    """TCP keepalives and a user timeout: a silent peer is dropped in ~30 s.

    A unix socket (``?unix_socket=``) has no TCP options and is left alone.
    """
    if sock.family == socket.AF_UNIX:
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", KEEPALIVE_IDLE_SECONDS),
        ("TCP_KEEPINTVL", KEEPALIVE_INTERVAL_SECONDS),
        ("TCP_KEEPCNT", KEEPALIVE_COUNT),
        ("TCP_USER_TIMEOUT", TCP_USER_TIMEOUT_SECONDS * 1000),
    ):
        if hasattr(socket, option):  # Linux names; other systems keep defaults
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


def make_sqlite_ddl_transactional(engine: Engine) -> None:
    """pysqlite commits before DDL by default; take over BEGIN so that a
    revision's DDL and its version-table update commit together."""

    @event.listens_for(engine, "connect")
    def _no_implicit_transactions(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN")


def make_sqlite_connection_ddl_transactional(conn: Connection, resources: ExitStack) -> None:
    """The same for one connection of an engine env.py built: its driver is
    put in autocommit mode and each transaction begins with ``BEGIN``."""
    raw = conn.connection.dbapi_connection
    previous = getattr(raw, "isolation_level", None)
    raw.isolation_level = None  # type: ignore[union-attr]

    def begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    def restore() -> None:
        event.remove(conn, "begin", begin)
        with suppress(Exception):  # env.py may have closed it already
            raw.isolation_level = previous  # type: ignore[union-attr]

    event.listen(conn, "begin", begin)
    resources.callback(restore)
