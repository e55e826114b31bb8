"""An OTLP/HTTP trace receiver: spans from anything instrumented with
OpenTelemetry (the SDKs, Envoy, nginx's otel module, Kong, Traefik) become
call events.

``POST /v1/traces`` takes an ``ExportTraceServiceRequest`` as protobuf
(``application/x-protobuf``) or as OTLP's JSON (``application/json``: ids in
hex, as the OTLP specification says, not proto3's base64), optionally
gzipped, and answers as the OTLP/HTTP specification asks: 200 with a
``partial_success`` naming the spans it rejected, 400 with a
``google.rpc.Status`` for a payload it cannot read, 413, 415, and 503 with
``Retry-After`` while the queue cannot take the events (exporters retry
then).

Which spans are calls (:func:`span_call`): a ``CLIENT`` span with HTTP
attributes, and a ``SERVER`` span that names the upstream it passed the
request to (a proxy's: ``peer.service`` or Envoy's ``upstream_cluster``).
The trace id is the request id, the peer (``peer.service``, else
``server.address``...) the service, the resource's ``service.name`` the
source. A span without an HTTP status whose Envoy ``response_flags`` hold
``DC`` (the client left first) is a ``disconnected`` call, no failure of the
service's. Event ids derive from the span: an exporter's retry stores nothing
twice.
"""

from __future__ import annotations

import base64
import logging
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from eventtrail.calls import DISCONNECTED
from eventtrail.event import DEFAULT_MAX_BODY_BYTES, InvalidEvent, encode_event, parse_event
from eventtrail.ingest.accesslog import Attempt, BadLine, ProxiedRequest, call_events
from eventtrail.queue import PartialSend, Queue, QueueError, TransientQueueError

__all__ = [
    "MAX_BODY_BYTES",
    "OTLP_SOURCE",
    "BadExport",
    "Export",
    "build_otlp_app",
    "decode_export",
    "export_bodies",
    "span_call",
]

log = logging.getLogger(__name__)

#: The largest export taken, before and after decompression (the OTel
#: collector's default is a few MiB; SDK batches are far smaller).
MAX_BODY_BYTES = 16 * 1024 * 1024

#: The source of spans whose resource names no ``service.name``.
OTLP_SOURCE = "unknown_service"

_PROTOBUF = "application/x-protobuf"
_JSON = "application/json"

# Attribute names, current semantic conventions first, then the older ones
# that exporters still send.
_METHOD = ("http.request.method", "http.method")
_STATUS = ("http.response.status_code", "http.status_code")
_PEER = ("peer.service", "server.address", "net.peer.name", "upstream_cluster", "http.host")
_URL = ("url.full", "http.url")
_PATH = ("url.path", "http.target")
_REQUEST_SIZE = ("http.request.body.size", "http.request_content_length")
_RESPONSE_SIZE = ("http.response.body.size", "http.response_content_length")
# A SERVER span is a proxy's call when it names its upstream.
_PROXY_UPSTREAM = ("peer.service", "upstream_cluster")
# Envoy tags its spans with its response flags ("DC,UC", "-" for none); DC:
# the downstream (the client) closed the connection before the answer.
_RESPONSE_FLAGS = "response_flags"
_CLIENT_LEFT = "DC"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        return getattr(value, kind)
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


def _first(attributes: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        value = attributes.get(name)
        if value not in (None, ""):
            return value
    return None


def _size(attributes: Mapping[str, Any], names: tuple[str, ...]) -> int:
    value = _first(attributes, names)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _error_kind(text: str) -> str:
    lowered = text.lower()
    if "timeout" in lowered or "timed out" in lowered or "deadline" in lowered:
        return "timeout"
    if "refused" in lowered or "connecterror" in lowered or "connectexception" in lowered:
        return "refused"
    if "reset" in lowered or "disconnected" in lowered or "broken pipe" in lowered or "eof" in lowered:
        return "reset"
    return "error"


def span_call(span: Span, *, source: str) -> tuple[ProxiedRequest, bytes] | None:
    """The call a span records and the key its events' ids derive from;
    ``None`` for a span that is not an HTTP call; raises :class:`BadLine`
    for a span that cannot be one (bad ids or times)."""
    attributes = _attributes(span.attributes)
    method = _first(attributes, _METHOD)
    if span.kind == Span.SPAN_KIND_SERVER:
        if _first(attributes, _PROXY_UPSTREAM) is None:
            return None
    elif span.kind != Span.SPAN_KIND_CLIENT:
        return None
    if not isinstance(method, str):
        return None
    if len(span.trace_id) != 16 or not any(span.trace_id) or len(span.span_id) != 8:
        raise BadLine("trace_id must be 16 bytes and span_id 8 bytes")
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start or end < start:
        raise BadLine("the span has no start time or ends before it starts")

    url = _first(attributes, _URL)
    parts = urlsplit(url) if isinstance(url, str) else None
    peer = _first(attributes, _PEER) or (parts.hostname if parts else None)
    service = str(peer) if peer is not None else "unknown"
    path = _first(attributes, _PATH)
    if not isinstance(path, str):
        path = (parts.path or "/") if parts else "/"

    status = _first(attributes, _STATUS)
    if isinstance(status, str) and status.isascii() and status.isdigit():
        status = int(status)
    flags = attributes.get(_RESPONSE_FLAGS)
    outcome: dict[str, Any]
    if isinstance(status, int) and not isinstance(status, bool) and 100 <= status <= 599:
        outcome = {"status": status}
    elif isinstance(flags, str) and _CLIENT_LEFT in flags.split(","):
        outcome = {
            "error": DISCONNECTED,
            "detail": f"the client closed the connection before {service[:256]} answered (DC)",
        }
    elif span.status.code == Status.STATUS_CODE_ERROR:
        exception = next(
            (_attributes(event.attributes) for event in span.events if event.name == "exception"), {}
        )
        described = " ".join(
            str(part)
            for part in (attributes.get("error.type"), exception.get("exception.type"), span.status.message)
            if part
        )
        detail = span.status.message or str(exception.get("exception.message") or described)
        outcome = {"error": _error_kind(described), "detail": detail[:500]}
    else:
        return None
    attempt = Attempt(
        service=service[:256],
        started_ms=start / 1e6,
        duration_ms=(end - start) / 1e6,
        bytes_in=_size(attributes, _REQUEST_SIZE),
        bytes_out=_size(attributes, _RESPONSE_SIZE),
        extra={"spanId": span.span_id.hex(), "spanName": span.name[:256]},
        **outcome,
    )
    request = ProxiedRequest(
        request_id=span.trace_id.hex(), method=method[:32], path=path, attempts=[attempt]
    )
    return request, b"otlp\n" + span.trace_id + span.span_id


class BadExport(ValueError):
    """A payload that is not an OTLP trace export."""


def _hex_ids_to_base64(document: Any) -> Any:
    """OTLP's JSON writes trace and span ids in hex; protobuf's JSON reader
    wants base64 for bytes fields."""
    if isinstance(document, dict):
        converted = {}
        for key, value in document.items():
            if key in (
                "traceId",
                "spanId",
                "parentSpanId",
                "trace_id",
                "span_id",
                "parent_span_id",
            ) and isinstance(value, str):
                try:
                    value = base64.b64encode(bytes.fromhex(value)).decode()
                except ValueError:
                    raise BadExport(f"{key} {value[:40]!r} is not hex") from None
            converted[key] = _hex_ids_to_base64(value)
        return converted
    if isinstance(document, list):
        return [_hex_ids_to_base64(item) for item in document]
    return document


def decode_export(body: bytes, content_type: str, content_encoding: str = "") -> ExportTraceServiceRequest:
    """The export in ``body``; raises :class:`BadExport` saying why not."""
    if content_encoding.strip().lower() == "gzip":
        try:
            decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            body = decompressor.decompress(body, MAX_BODY_BYTES + 1)
        except zlib.error as error:
            raise BadExport(f"the body is not gzip: {error}") from None
        if len(body) > MAX_BODY_BYTES or decompressor.unconsumed_tail:
            raise BadExport(f"the body is over {MAX_BODY_BYTES:,} bytes once decompressed")
    elif content_encoding.strip().lower() not in ("", "identity"):
        raise BadExport(f"unsupported Content-Encoding {content_encoding!r} (gzip or none)")
    export = ExportTraceServiceRequest()
    if content_type == _PROTOBUF:
        try:
            export.ParseFromString(body)
        except (DecodeError, RecursionError) as error:
            raise BadExport(f"the body is not an ExportTraceServiceRequest: {error}") from None
        return export
    try:
        document = msgspec.json.decode(body)
        json_format.ParseDict(_hex_ids_to_base64(document), export, ignore_unknown_fields=True)
    except (msgspec.DecodeError, json_format.ParseError, RecursionError, TypeError, ValueError) as error:
        raise BadExport(f"the body is not OTLP JSON: {str(error)[:300]}") from None
    return export


@dataclass(slots=True)
class Export:
    """What one export became."""

    spans: int = 0
    calls: int = 0
    rejected: int = 0
    bodies: list[str] = field(default_factory=list)
    first_error: str = ""


def export_bodies(
    export: ExportTraceServiceRequest, *, max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
) -> Export:
    """The message bodies of every call in ``export``; spans that cannot be
    calls are counted as rejected, with the first reason."""
    result = Export()
    for resource_spans in export.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        name = resource.get("service.name")
        source = name[:256] if isinstance(name, str) and name else OTLP_SOURCE
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                result.spans += 1
                try:
                    found = span_call(span, source=source)
                    if found is None:
                        continue
                    request, key = found
                    bodies = [encode_event(event) for event in call_events(request, source=source, key=key)]
                    for body in bodies:
                        parse_event(body, max_bytes=max_body_bytes)
                except (BadLine, InvalidEvent) as error:
                    result.rejected += 1
                    result.first_error = result.first_error or f"span {span.span_id.hex()}: {error}"
                    continue
                result.calls += 1
                result.bodies.extend(body.decode() for body in bodies)
    return result


def _status_response(
    status: int, message: str, content_type: str, headers: dict[str, str] | None = None
) -> Response:
    payload = status_pb2.Status(code=3 if status == 400 else 14 if status == 503 else 2, message=message)
    if content_type == _JSON:
        body = json_format.MessageToJson(payload).encode()
    else:
        body, content_type = payload.SerializeToString(), _PROTOBUF
    return Response(body, status_code=status, media_type=content_type, headers=headers)


def build_otlp_app(
    queue: Queue,
    *,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    retry_after_seconds: int = 5,
    on_export: Callable[[Export], None] | None = None,
) -> Starlette:
    """The receiver's ASGI app, sending the calls' events to ``queue``."""

    async def traces(request: Request) -> Response:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in (_PROTOBUF, _JSON):
            return _status_response(
                415, f"Content-Type must be {_PROTOBUF} or {_JSON}, not {content_type or 'none'!r}", _JSON
            )
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _status_response(413, f"the body is over {MAX_BODY_BYTES:,} bytes", content_type)
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > MAX_BODY_BYTES:
                    return _status_response(413, f"the body is over {MAX_BODY_BYTES:,} bytes", content_type)
        except ClientDisconnect:
            return Response(status_code=400)
        try:
            export = decode_export(bytes(body), content_type, request.headers.get("content-encoding", ""))
        except BadExport as error:
            return _status_response(400, str(error), content_type)
        result = export_bodies(export, max_body_bytes=max_body_bytes)
        if result.bodies:
            try:
                await run_in_threadpool(queue.send, result.bodies)
            except (TransientQueueError, PartialSend) as error:
                log.warning("the queue did not take an export of %d spans: %s", result.spans, error)
                return _status_response(
                    503,
                    f"the queue is unavailable, retry later: {error}",
                    content_type,
                    {"Retry-After": str(retry_after_seconds)},
                )
            except QueueError as error:
                log.error("the queue refused an export of %d spans: %s", result.spans, error)
                return _status_response(503, f"the queue refused the events: {error}", content_type)
        if on_export is not None:
            on_export(result)
        response = ExportTraceServiceResponse()
        if result.rejected:
            response.partial_success.rejected_spans = result.rejected
            response.partial_success.error_message = result.first_error[:1000]
        if content_type == _JSON:
            return Response(json_format.MessageToJson(response).encode(), media_type=_JSON)
        return Response(response.SerializeToString(), media_type=_PROTOBUF)

    return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])
