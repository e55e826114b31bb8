"""Turns one upstream call into its events and hands them to the publisher.

Shared by the gateway, the ASGI middleware and the httpx hooks, so that all
of them record the same events with the same redaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from eventtrail.calls import GATEWAY, call_error, call_request, call_response
from eventtrail.gateway.config import Recording
from eventtrail.gateway.publisher import Publisher
from eventtrail.gateway.redact import Redactor
from eventtrail.ids import uuid7_str

__all__ = ["CallRecorder"]


class CallRecorder:
    """Publishes ``MICROSERVICE_REQUEST`` / ``RESPONSE`` / ``ERROR`` events."""

    def __init__(
        self, publisher: Publisher, recording: Recording | None = None, *, source: str = GATEWAY
    ) -> None:
        self.publisher = publisher
        self.source = source
        self.redactor = Redactor(recording or Recording())

    def request(
        self,
        request_id: str,
        service: str,
        method: str,
        path: str,
        query_string: str = "",
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> str:
        """Record the call about to be made; return its call id."""
        call_id = uuid7_str()
        extra: dict[str, Any] = {}
        if (query := self.redactor.query(query_string)) is not None:
            extra["query"] = query
        if self.redactor.request_headers and (picked := self.redactor.request_headers_of(headers)):
            extra["requestHeaders"] = picked
        self.publisher.publish(
            call_request(request_id, call_id, service, method, path, source=self.source, **extra)
        )
        return call_id

    def response(
        self,
        request_id: str,
        call_id: str,
        service: str,
        *,
        status: int,
        latency_ms: float,
        bytes_in: int,
        bytes_out: int,
        headers: Iterable[tuple[bytes, bytes]] = (),
    ) -> None:
        """Record the answer (of any status) once its body went through."""
        extra: dict[str, Any] = {}
        if self.redactor.response_headers and (picked := self.redactor.response_headers_of(headers)):
            extra["responseHeaders"] = picked
        self.publisher.publish(
            call_response(
                request_id,
                call_id,
                service,
                status=status,
                latency_ms=latency_ms,
                bytes_in=bytes_in,
                bytes_out=bytes_out,
                source=self.source,
                **extra,
            )
        )

    def error(
        self, request_id: str, call_id: str, service: str, *, kind: str, elapsed_ms: float, detail: str = ""
    ) -> None:
        """Record a call that ended without a (complete) answer."""
        self.publisher.publish(
            call_error(
                request_id,
                call_id,
                service,
                error=kind,
                elapsed_ms=elapsed_ms,
                detail=detail,
                source=self.source,
            )
        )
