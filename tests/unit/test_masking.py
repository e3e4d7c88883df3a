"""One set of secrets, masked in every form a password takes in text."""

from __future__ import annotations

from urllib.parse import quote, quote_plus

import pytest
from sqlalchemy.engine import URL, make_url

from schemad.masking import MASK, Secrets

PASSWORD = "Zq9-Secr3t!pw@:/%x"


def rendered_by_sqlalchemy(password: str) -> str:
    url = URL.create("postgresql+psycopg", "app", password, "db", 5432, "app")
    text = url.render_as_string(hide_password=False)
    return text.split("app:", 1)[1].split("@db", 1)[0]


@pytest.mark.parametrize(
    "form",
    [
        PASSWORD,
        quote(PASSWORD, safe=""),
        quote_plus(PASSWORD),
        rendered_by_sqlalchemy(PASSWORD),
        quote(PASSWORD, safe="").replace("%", "%%"),
    ],
    ids=["raw", "quoted", "quote_plus", "sqlalchemy", "ini-escaped"],
)
def test_every_form_of_the_password_is_masked(form: str) -> None:
    """Raw, URL-quoted, form-quoted, SQLAlchemy-rendered and %-doubled forms all mask."""
    secrets = Secrets.of([PASSWORD])
    assert secrets.redact(f"error near '{form}' here") == f"error near '{MASK}' here"


def test_secret_query_parameters_are_secrets() -> None:
    """sslpassword, password and similar query values are masked; other values are not."""
    url = make_url("postgresql+psycopg://app@db/app?sslpassword=Key-Pass-9&sslmode=require")
    secrets = Secrets.of_url(None, url.query)
    text = "sslpassword=Key-Pass-9 sslmode=require"
    assert secrets.redact(text) == "sslpassword=*** sslmode=require"


def test_short_values_are_not_secrets() -> None:
    """A one- or two-character password would mask ordinary text; it is ignored."""
    assert Secrets.of(["ab"]).redact("about a table") == "about a table"


def test_redact_deep_walks_nested_structures() -> None:
    """Dicts, lists and tuples (an exception rendered as data) are masked throughout."""
    secrets = Secrets.of([PASSWORD])
    event = {"exception": [{"frames": ({"line": PASSWORD},)}], "n": 3}
    assert secrets.redact_deep(event) == {"exception": [{"frames": ({"line": MASK},)}], "n": 3}


def test_secrets_combine() -> None:
    """Two URLs' secrets combine into one set that masks both."""
    both = Secrets.of(["first-pw"]) | Secrets.of(["second-pw"])
    assert both.redact("first-pw and second-pw") == f"{MASK} and {MASK}"
