"""What the events may say about a request: selected headers and the query
string, with secrets replaced by a marker and every value cut to a bounded
size before anything is recorded.

A secret is recognised by its name, not from an exact list: the name is
percent-decoded, split into words (``client_secret``, ``clientSecret``,
``user[password]``, ``X-Amz-Credential`` all give their words) and any word
that is, or contains, a secret-like word marks it. Some harmless names are
redacted with them (``author`` contains ``auth``); a user who wants those
recorded lists them in ``record_query``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import unquote_plus

from eventtrail.gateway.config import DEFAULT_REDACTED_HEADERS, DEFAULT_REDACTED_QUERY, Recording

__all__ = ["REDACTED", "Redactor", "bounded", "is_secret_header", "is_secret_name", "name_key"]

REDACTED = "[redacted]"

# A word containing one of these marks a secret, wherever it sits in the word
# (``refreshtoken``, ``passwd``, ``xamzcredential``).
_SECRET_PARTS = (
    "token",
    "secret",
    "passw",
    "pwd",
    "credential",
    "jwt",
    "signature",
    "session",
    "sessid",
    "cookie",
    "auth",
    "apikey",
    "privatekey",
    "accesskey",
    "bearer",
    "csrf",
    "xsrf",
)
# Short words that are secrets alone but too common inside other words
# (``sig`` in ``design``, ``code`` in ``encode``): they mark a name only as a
# whole word, or as the end of one (``apikey``, ``hmacsig``).
_SECRET_WORDS = frozenset(
    {"key", "keys", "sig", "code", "pass", "pin", "otp", "sid", "hmac", "nonce", "salt"}
)
_SECRET_ENDINGS = ("key", "sig")
# Header names: anything naming a token, secret, key, credential or the like.
_SECRET_HEADER_PARTS = (*_SECRET_PARTS, "key")

# Word boundaries: anything not a letter or digit, and a lower-to-upper case
# change (``clientSecret``).
_NOT_ALNUM = re.compile(r"[^0-9a-zA-Z]+")
_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")
_QUERY_SEPARATOR = re.compile(r"[&;]")
# A name decoded this many times is what any server decoding it again sees.
_DECODE_ROUNDS = 3


def _decoded(name: str) -> str:
    for _ in range(_DECODE_ROUNDS):
        if "%" not in name and "+" not in name:
            break
        name = unquote_plus(name, errors="replace")
    return name


def _words(name: str) -> list[str]:
    return [word.lower() for word in _NOT_ALNUM.split(_CAMEL.sub("_", _decoded(name))) if word]


@lru_cache(maxsize=4096)
def name_key(name: str) -> str:
    """``name`` as it is compared: decoded, lowercase, words joined by ``_``
    (``User[Password]``, ``user-password`` and ``user%5Bpassword%5D`` are
    all ``user_password``)."""
    return "_".join(_words(name))


@lru_cache(maxsize=4096)
def is_secret_name(name: str) -> bool:
    """Whether a query parameter called ``name`` (as sent) holds a secret."""
    words = _words(name)
    compact = "".join(words)
    if any(part in compact for part in _SECRET_PARTS):
        return True
    return any(word in _SECRET_WORDS or word.endswith(_SECRET_ENDINGS) for word in words)


def is_secret_header(name: str) -> bool:
    """Whether a header called ``name`` (lowercase) holds a secret."""
    compact = "".join(_words(name))
    return any(part in compact for part in _SECRET_HEADER_PARTS)


def bounded(text: str, limit: int) -> str:
    """``text``, cut to ``limit`` characters with a marker saying so."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}…[truncated, {len(text)} chars in all]"


class Redactor:
    """Picks the headers a :class:`Recording` asks for and hides secrets."""

    def __init__(self, recording: Recording) -> None:
        self.secret_headers = frozenset(
            name.lower() for name in (*DEFAULT_REDACTED_HEADERS, *recording.redact_headers)
        )
        self.secret_query = frozenset(
            name_key(name) for name in (*DEFAULT_REDACTED_QUERY, *recording.redact_query)
        )
        self.allowed_query = (
            None
            if recording.record_query is None
            else frozenset(name_key(name) for name in recording.record_query) - self.secret_query
        )
        self.request_headers = frozenset(name.lower() for name in recording.request_headers)
        self.response_headers = frozenset(name.lower() for name in recording.response_headers)
        self.record_query = recording.query
        self.limit = recording.max_value_chars
        # Decided once per header name: the names come from the configuration.
        self._hidden_headers = frozenset(
            name
            for name in self.request_headers | self.response_headers
            if name in self.secret_headers or is_secret_header(name)
        )

    def _pick(self, wanted: frozenset[str], headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        picked: dict[str, str] = {}
        limit = self.limit
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name not in wanted:
                continue
            if name in self._hidden_headers:
                value = REDACTED
            else:
                value = raw_value.decode("latin-1")
                if len(value) > limit:
                    value = bounded(value, limit)
            # Repeated headers are kept, joined as HTTP allows (RFC 9110 5.3).
            if name in picked:
                joined = f"{picked[name]}, {value}"
                picked[name] = bounded(joined, limit) if len(joined) > limit else joined
            else:
                picked[name] = value
        return picked

    def request_headers_of(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The configured request headers, secrets redacted (empty if none)."""
        return self._pick(self.request_headers, headers) if self.request_headers else {}

    def response_headers_of(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The configured response headers, secrets redacted (empty if none)."""
        return self._pick(self.response_headers, headers) if self.response_headers else {}

    def _hidden(self, name: str) -> bool:
        key = name_key(name)
        if key in self.secret_query:
            return True
        if self.allowed_query is not None:
            return key not in self.allowed_query
        return is_secret_name(name)

    def query(self, query_string: str) -> str | None:
        """The query string to record, secret parameters redacted, cut to the
        size limit; ``None`` when there is none or queries are not recorded.

        Pairs are split at ``&`` and at ``;`` (some servers read ``;`` as a
        separator): a secret behind either is redacted. What is not redacted
        is recorded exactly as the client encoded it.
        """
        if not query_string or not self.record_query:
            return None
        limit = self.limit
        # Only what can be recorded is looked at: a pair cut by the limit
        # keeps its name, so its value is still redacted when it must be.
        text = query_string[:limit] if len(query_string) > limit else query_string
        pieces: list[str] = []
        position = 0
        for separator in (*_QUERY_SEPARATOR.finditer(text), None):
            end = separator.start() if separator is not None else len(text)
            pair = text[position:end]
            name, equals, _value = pair.partition("=")
            pieces.append(f"{name}={REDACTED}" if equals and self._hidden(name) else pair)
            if separator is not None:
                pieces.append(separator.group())
                position = separator.end()
        recorded = "".join(pieces)
        if len(query_string) > limit or len(recorded) > limit:
            return f"{recorded[:limit]}…[truncated, {len(query_string)} chars in all]"
        return recorded
