"""What the events may say about a request: selected headers and the query
string, with secrets replaced by a marker before anything is recorded."""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import parse_qsl, urlencode

from eventtrail.gateway.config import DEFAULT_REDACTED_HEADERS, DEFAULT_REDACTED_QUERY, Recording

__all__ = ["REDACTED", "Redactor"]

REDACTED = "[redacted]"


class Redactor:
    """Picks the headers a :class:`Recording` asks for and hides secrets."""

    def __init__(self, recording: Recording) -> None:
        self.secret_headers = frozenset(
            name.lower() for name in (*DEFAULT_REDACTED_HEADERS, *recording.redact_headers)
        )
        self.secret_query = frozenset(
            name.lower() for name in (*DEFAULT_REDACTED_QUERY, *recording.redact_query)
        )
        self.request_headers = frozenset(name.lower() for name in recording.request_headers)
        self.response_headers = frozenset(name.lower() for name in recording.response_headers)
        self.record_query = recording.query

    def _pick(self, wanted: frozenset[str], headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        picked: dict[str, str] = {}
        for raw_name, raw_value in headers:
            name = raw_name.decode("latin-1").lower()
            if name not in wanted:
                continue
            value = REDACTED if name in self.secret_headers else raw_value.decode("latin-1")
            # Repeated headers are kept, joined as HTTP allows (RFC 9110 5.3).
            picked[name] = f"{picked[name]}, {value}" if name in picked else value
        return picked

    def request_headers_of(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The configured request headers, secrets redacted (empty if none)."""
        return self._pick(self.request_headers, headers) if self.request_headers else {}

    def response_headers_of(self, headers: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
        """The configured response headers, secrets redacted (empty if none)."""
        return self._pick(self.response_headers, headers) if self.response_headers else {}

    def query(self, query_string: str) -> str | None:
        """The query string to record, secret parameters redacted; ``None``
        when there is none or queries are not recorded."""
        if not query_string or not self.record_query:
            return None
        pairs = parse_qsl(query_string, keep_blank_values=True)
        if not any(name.lower() in self.secret_query for name, _ in pairs):
            return query_string
        return urlencode(
            [(name, REDACTED if name.lower() in self.secret_query else value) for name, value in pairs],
            safe="[]",
        )
