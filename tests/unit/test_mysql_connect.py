"""How schemad connects to MySQL/MariaDB: TLS on local servers, socket options.

The TLS tests read the keyword arguments the engine hands to
``pymysql.connect`` (through SQLAlchemy's ``do_connect`` event), without a
server.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine import make_url

from schemad.dialect import dialect_for
from schemad.engine import configure_keepalive, create_engine, local_pymysql_without_tls_options


class _Captured(Exception):
    """Stops the connect once its arguments are recorded."""


def driver_kwargs(url: str) -> dict[str, Any]:
    parsed = make_url(url)
    engine = create_engine(parsed, dialect_for(parsed), connect_timeout_seconds=10)
    captured: dict[str, Any] = {}

    @event.listens_for(engine, "do_connect")
    def _record(_dialect: Any, _record: Any, _args: Any, kwargs: dict[str, Any]) -> None:
        captured.update(kwargs)
        raise _Captured

    try:
        with pytest.raises(_Captured):
            engine.connect()
    finally:
        engine.dispose()
    return captured


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://app:pw@127.0.0.1:3306/app",
        "mysql+pymysql://app:pw@127.1.2.3/app",
        "mariadb+pymysql://app:pw@localhost/app",
        "mysql+pymysql://app:pw@LocalHost/app",
        "mysql+pymysql://app:pw@[::1]:3306/app",
        "mysql+pymysql://app:pw@/app",
        "mysql+pymysql://app:pw@/app?unix_socket=/run/mysqld/mysqld.sock",
        "mysql+pymysql://app:pw@localhost/app?charset=utf8mb4",
    ],
)
def test_local_server_connects_without_tls(url: str) -> None:
    """A loopback host, no host, or a unix socket gets ssl_disabled=True."""
    assert driver_kwargs(url).get("ssl_disabled") is True


@pytest.mark.parametrize(
    "url",
    [
        "mysql+pymysql://app:pw@db.example.com/app",
        "mysql+pymysql://app:pw@10.0.0.5/app",
        "mysql+pymysql://app:pw@192.168.1.10/app",
        "mariadb+pymysql://app:pw@[2001:db8::1]/app",
        "mysql+pymysql://app:pw@localhost.example.com/app",
        "mysql+pymysql://app:pw@mysql/app",
    ],
)
def test_remote_server_keeps_pymysql_default(url: str) -> None:
    """Any host that is not loopback keeps PyMySQL's own TLS behaviour."""
    assert "ssl_disabled" not in driver_kwargs(url)


@pytest.mark.parametrize(
    "query",
    [
        "ssl_ca=/etc/mysql/ca.pem",
        "ssl_disabled=false",
        "ssl_verify_cert=true",
        "ssl_verify_identity=true",
        "ssl_check_hostname=false",
        "read_default_file=/etc/mysql/my.cnf",
        "read_default_group=client",
    ],
)
def test_local_server_with_a_tls_option_keeps_it(query: str) -> None:
    """A loopback URL that says anything about TLS is left to PyMySQL."""
    kwargs = driver_kwargs(f"mysql+pymysql://app:pw@127.0.0.1/app?{query}")
    assert kwargs.get("ssl_disabled") is not True  # the URL's own string, if any, passes as is


def test_other_mysql_drivers_are_left_alone() -> None:
    """ssl_disabled is PyMySQL's argument: mysqlclient would reject it."""
    url = make_url("mysql+mysqldb://app:pw@127.0.0.1/app")
    assert local_pymysql_without_tls_options(url) is False


def test_postgresql_gets_no_mysql_argument() -> None:
    """Only MySQL/MariaDB URLs are touched."""
    assert "ssl_disabled" not in driver_kwargs("postgresql+psycopg://app:pw@127.0.0.1/app")


def test_tcp_socket_gets_keepalives() -> None:
    """A TCP connection is given keepalives, so a silent peer is noticed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        configure_keepalive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0


def test_unix_socket_is_left_alone() -> None:
    """A unix socket has no TCP options; setting them would fail every connect."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        configure_keepalive(sock)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 0
