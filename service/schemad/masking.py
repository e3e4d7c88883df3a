"""Secrets: every form a secret can take in text, and one way to mask them.

Standard library only. A password reaches text raw (a driver's error), the
way SQLAlchemy renders it in a URL (``!`` becomes ``%21``), URL-quoted or
form-quoted (a message that quotes a DSN), or with ``%`` doubled (an ini
value). One :class:`Secrets` holds every form of every secret of a run and
masks them wherever text leaves the process: log lines, history rows,
``/status``, command output, metric labels.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, quote_plus, urlsplit

MASK = "***"
# Shorter values would mask ordinary words; no real password is that short.
MIN_LENGTH = 3
# A webhook URL's path is masked on its own only when it is long enough to be
# a token rather than a word such as /hook.
MIN_WEBHOOK_PATH = 8
# Query parameters whose values are secrets: password, passwd, sslpassword,
# ssl_key_password, secret, token, ...
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)


@dataclass(frozen=True)
class Secrets:
    """Every text form of some secrets, longest first."""

    forms: tuple[str, ...] = ()

    @classmethod
    def of(cls, values: Iterable[str | None]) -> Secrets:
        """The secrets ``values`` (empty and too short ones are ignored)."""
        forms: set[str] = set()
        for value in values:
            if value:
                forms.update(_forms(str(value)))
        usable = (form for form in forms if len(form) >= MIN_LENGTH)
        # Longest first: a form that contains another is masked whole.
        return cls(tuple(sorted(usable, key=lambda form: (-len(form), form))))

    @classmethod
    def of_url(
        cls, password: str | None, query: Mapping[str, str | Sequence[str]] | None = None
    ) -> Secrets:
        """A URL's secrets: its password and every secret query parameter."""
        values: list[str | None] = [password]
        for key, value in (query or {}).items():
            if _SECRET_KEY.search(key):
                values.extend([value] if isinstance(value, str) else list(value))
        return cls.of(values)

    @classmethod
    def of_webhook(cls, url: str | None) -> Secrets:
        """A webhook URL's secrets: the whole URL, its password, and its path and
        query (a Slack or Mattermost URL's token is its path)."""
        if not url:
            return cls()
        parts = urlsplit(url)
        values: list[str | None] = [url, parts.password]
        rest = url.split(parts.netloc, 1)[1] if parts.netloc else ""
        if len(rest) >= MIN_WEBHOOK_PATH:
            values.append(rest)
        return cls.of(values)

    def __or__(self, other: Secrets) -> Secrets:
        return Secrets.of([*self.forms, *other.forms])

    def merged(self, other: Secrets) -> Secrets:
        """These and ``other``'s forms, as they are (``|`` derives forms of forms
        again, which grows with every merge: fan-out merges once per target)."""
        forms = set(self.forms) | set(other.forms)
        return Secrets(tuple(sorted(forms, key=lambda form: (-len(form), form))))

    def __bool__(self) -> bool:
        return bool(self.forms)

    def redact(self, text: str) -> str:
        """``text`` with every form of every secret replaced by ``***``."""
        for form in self.forms:
            if form in text:
                text = text.replace(form, MASK)
        return text

    def redact_deep(self, value: Any) -> Any:
        """Like :meth:`redact`, through dicts, lists and tuples (a log event)."""
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self.redact_deep(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(self.redact_deep(item) for item in value)
        return value


def _forms(value: str) -> set[str]:
    rendered = {
        value,
        quote(value, safe=""),  # a DSN in a message
        quote(value, safe=" +"),  # SQLAlchemy's URL rendering
        quote_plus(value),  # a query string
    }
    # configparser and Alembic's ini values double every '%'.
    return rendered | {form.replace("%", "%%") for form in rendered if "%" in form}
