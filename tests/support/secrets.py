"""Every form a password takes in text, written out independently of schemad's own list."""

from __future__ import annotations

from urllib.parse import quote, quote_plus


def secret_forms(password: str) -> tuple[str, ...]:
    """Raw, URL-quoted, form-quoted, as SQLAlchemy renders a URL, and %-doubled (an ini)."""
    forms = {
        password,
        quote(password, safe=""),
        quote(password, safe=" +"),
        quote_plus(password),
    }
    forms |= {form.replace("%", "%%") for form in forms if "%" in form}
    return tuple(sorted(forms))
