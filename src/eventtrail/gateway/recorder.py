"""Turns one upstream call into its events and hands them to the publisher.

Shared by the gateway, the ASGI middleware and the httpx hooks, so that all
of them record the same events with the same redaction. What it hands over
are call records (:mod:`eventtrail.gateway.records`), made into events off
the request path.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from eventtrail.calls import GATEWAY
from eventtrail.gateway.config import Recording
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.records import Call, error_record, new_call, request_record, response_record
from eventtrail.gateway.redact import Redactor, bounded

__all__ = ["CallRecorder"]


class CallRecorder:
    """Publishes ``MICROSERVICE_REQUEST`` / ``RESPONSE`` / ``ERROR`` events."""

    def __init__(
        self, publisher: Publisher, recording: Recording | None = None, *, source: str = GATEWAY
    ) -> None:
        self.publisher = publisher
        self.source = source
        self.redactor = Redactor(recording or Recording())
        self._limit = self.redactor.limit

    def request(
        self,
        request_id: str,
        service: str,
        method: str,
        path: str,
        query_string: str = "",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> Call:
        """Record the call about to be made; return the call, for :meth:`response` or :meth:`error`.

        The path, query and header values are cut to the recording's size
        limit, so that no request can make an event the queue refuses.
        """
        now = time.time_ns()
        if len(path) > self._limit:
            path = bounded(path, self._limit)
        call = new_call(now)
        extra: dict[str, Any] | None = None
        if (query := self.redactor.query(query_string)) is not None:
            extra = {"query": query}
        if self.redactor.request_headers and (picked := self.redactor.request_headers_of(headers)):
            extra = (extra or {}) | {"requestHeaders": picked}
        self.publisher.publish_record(
            request_record(now, request_id, call, service, self.source, method, path, extra)
        )
        return call

    def response(
        self,
        request_id: str,
        call: Call,
        service: str,
        *,
        status: int,
        latency_ms: float,
        bytes_in: int,
        bytes_out: int,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Record the answer (of any status) once its body went through."""
        extra = None
        if self.redactor.response_headers and (picked := self.redactor.response_headers_of(headers)):
            extra = {"responseHeaders": picked}
        self.publisher.publish_record(
            response_record(
                time.time_ns(),
                request_id,
                call,
                service,
                self.source,
                status,
                latency_ms,
                bytes_in,
                bytes_out,
                extra,
            )
        )

    def error(
        self, request_id: str, call: Call, service: str, *, kind: str, elapsed_ms: float, detail: str = ""
    ) -> None:
        """Record a call that ended without a (complete) answer."""
        if len(detail) > self._limit:
            detail = bounded(detail, self._limit)
        self.publisher.publish_record(
            error_record(time.time_ns(), request_id, call, service, self.source, kind, elapsed_ms, detail)
        )
