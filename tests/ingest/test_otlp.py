"""`eventtrail otlp` with the real OpenTelemetry SDK exporting to it: spans
become calls, a retried export stores nothing twice, malformed payloads get
the answers OTLP exporters expect."""

from __future__ import annotations

import gzip
import json
import signal
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from google.rpc import status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import parse_event
from eventtrail.ingest.otlp import export_bodies
from tests.cli import run, spawn
from tests.servers import free_port, wait_for_port


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, Path, subprocess.Popen[str]]]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    port = free_port()
    process = spawn(data_dir, "otlp", "--port", str(port))
    try:
        wait_for_port(port)
        yield f"http://127.0.0.1:{port}/v1/traces", data_dir, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            process.wait(15)


def recorded_spans() -> list[ReadableSpan]:
    """A checkout request calling A (200), B (503), a refused C, a timed-out D,
    through a proxy span naming its upstream, plus spans that are not calls."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "checkout"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests")
    with tracer.start_as_current_span("GET /checkout", kind=SpanKind.SERVER):
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "url.full": "http://orders.internal:9001/orders/42?x=1",
                "peer.service": "Microservice A",
                "http.response.status_code": 200,
                "http.response.body.size": 120,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.method": "GET",
                "http.url": "http://stock.internal/stock/42",
                "http.status_code": 503,
            },
        ):
            pass
        with tracer.start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "POST", "server.address": "payments"},
        ) as refused:
            refused.record_exception(ConnectionRefusedError(111, "Connection refused"))
            refused.set_status(Status(StatusCode.ERROR, "ConnectionRefusedError: Connection refused"))
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={"http.request.method": "GET", "server.address": "slow.internal"},
        ) as slow:
            slow.set_attribute("error.type", "httpx.ReadTimeout")
            slow.set_status(Status(StatusCode.ERROR))
        with tracer.start_as_current_span(
            "ingress",
            kind=SpanKind.SERVER,
            attributes={"http.method": "GET", "upstream_cluster": "svc_c", "http.status_code": "502"},
        ):
            pass
        with tracer.start_as_current_span("compute prices", kind=SpanKind.INTERNAL):
            pass
    provider.shutdown()
    return list(memory.get_finished_spans())


EXPECTED = {
    "Microservice A": (RESPONSE, 200),
    "stock.internal": (RESPONSE, 503),
    "payments": (ERROR, "refused"),
    "slow.internal": (ERROR, "timeout"),
    "svc_c": (RESPONSE, 502),
}


def drain(data_dir: Path) -> None:
    result = run(data_dir, "worker", "--drain", "--quiet")
    assert result.returncode == 0, result.stderr


def test_the_sdk_s_spans_become_calls_and_a_retry_stores_nothing_twice(
    receiver: tuple[str, Path, subprocess.Popen[str]],
) -> None:
    url, data_dir, process = receiver
    spans = recorded_spans()
    exporter = OTLPSpanExporter(endpoint=url)
    assert exporter.export(spans) is SpanExportResult.SUCCESS
    assert exporter.export(spans) is SpanExportResult.SUCCESS  # what an exporter's retry sends
    exporter.shutdown()  # type: ignore[no-untyped-call]
    drain(data_dir)

    trace_id = format(spans[0].context.trace_id, "032x")
    with SQLiteStore(data_dir / "events.db") as store:
        flow = store.flow(trace_id)
        assert store.count() == 10
    assert {event.source for event in flow} == {"checkout"}
    calls: dict[str, tuple[str, object]] = {}
    for event in flow:
        if event.type != REQUEST:
            calls[event.data["Name"]] = (event.type, event.data.get("status", event.data.get("error")))
    assert calls == EXPECTED
    first = next(event for event in flow if event.type == REQUEST and event.data["Name"] == "Microservice A")
    assert first.data["path"] == "/orders/42" and first.data["method"] == "GET"
    assert [event.timestamp for event in flow] == sorted(event.timestamp for event in flow)

    health = run(data_dir, "health", "--window", "1h", "--json")
    assert health.returncode == 0, health.stderr
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=15)
    assert "14 spans received: 10 calls recorded, 0 rejected" in stderr


def test_otlp_json_with_hex_ids_and_gzip(receiver: tuple[str, Path, subprocess.Popen[str]]) -> None:
    url, data_dir, _ = receiver
    trace_id = "5b8efff798038103d269b633813fc60c"
    export = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": trace_id,
                                "spanId": "eee19b7ec3c1b174",
                                "name": "GET",
                                "kind": 3,
                                "startTimeUnixNano": "1795809361000000000",
                                "endTimeUnixNano": "1795809361012000000",
                                "attributes": [
                                    {"key": "http.request.method", "value": {"stringValue": "GET"}},
                                    {"key": "peer.service", "value": {"stringValue": "Microservice A"}},
                                    {"key": "http.response.status_code", "value": {"intValue": "200"}},
                                ],
                            },
                            {
                                "traceId": "00000000000000000000000000000000",
                                "spanId": "eee19b7ec3c1b175",
                                "kind": 3,
                                "startTimeUnixNano": "1795809361000000000",
                                "endTimeUnixNano": "1795809361012000000",
                                "attributes": [
                                    {"key": "http.request.method", "value": {"stringValue": "GET"}}
                                ],
                            },
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(
        url,
        content=gzip.compress(json.dumps(export).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["partialSuccess"]["rejectedSpans"] == "1"
    assert "trace_id must be 16 bytes" in answer["partialSuccess"]["errorMessage"]
    drain(data_dir)
    with SQLiteStore(data_dir / "events.db") as store:
        flow = store.flow(trace_id)
    assert [(event.type, event.data.get("status")) for event in flow] == [(REQUEST, None), (RESPONSE, 200)]
    assert flow[0].timestamp == "2026-11-27T19:56:01.000000Z" and flow[1].data["latencyMs"] == 12.0


@pytest.mark.parametrize(
    ("body", "headers", "status"),
    [
        (b"\xff\xff\xff", {"Content-Type": "application/x-protobuf"}, 400),
        (b"not json", {"Content-Type": "application/json"}, 400),
        (
            b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "xyz"}]}]}]}',
            {"Content-Type": "application/json"},
            400,
        ),
        (b"[" * 100_000, {"Content-Type": "application/json"}, 400),
        (b"plain", {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}, 400),
        (b"x", {"Content-Type": "application/x-protobuf", "Content-Encoding": "br"}, 400),
        (b"x", {"Content-Type": "text/plain"}, 415),
    ],
)
def test_malformed_payloads_get_the_otlp_answers(
    receiver: tuple[str, Path, subprocess.Popen[str]], body: bytes, headers: dict[str, str], status: int
) -> None:
    url, _, process = receiver
    response = httpx.post(url, content=body, headers=headers)
    assert response.status_code == status, response.text
    if headers["Content-Type"] == "application/x-protobuf":
        message = status_pb2.Status()
        message.ParseFromString(response.content)
        assert message.message
    else:
        assert response.json()["message"]
    assert process.poll() is None


def test_a_decompression_bomb_is_refused(receiver: tuple[str, Path, subprocess.Popen[str]]) -> None:
    url, _, _ = receiver
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))
    response = httpx.post(
        url, content=bomb, headers={"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    )
    assert response.status_code == 400 and b"decompressed" in response.content
    assert httpx.get(url).status_code == 405


def test_a_public_address_needs_a_token_and_the_token_is_checked(tmp_path: Path) -> None:
    refused = run(tmp_path, "otlp", "--host", "0.0.0.0", "--port", str(free_port()))
    assert refused.returncode == 2 and "give a token" in refused.stderr
    port = free_port()
    token = "otlp-token-0123456789abcdef"
    process = spawn(tmp_path, "otlp", "--port", str(port), "--token", token)
    try:
        wait_for_port(port)
        url = f"http://127.0.0.1:{port}/v1/traces"
        empty = ExportTraceServiceRequest().SerializeToString()
        headers = {"Content-Type": "application/x-protobuf"}
        assert httpx.post(url, content=empty, headers=headers).status_code == 401
        authorised = httpx.post(url, content=empty, headers=headers | {"Authorization": f"Bearer {token}"})
        assert authorised.status_code == 200
        ExportTraceServiceResponse().ParseFromString(authorised.content)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(15)


_ANY_VALUE = st.one_of(
    st.text(max_size=20).map(lambda text: AnyValue(string_value=text)),
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(lambda number: AnyValue(int_value=number)),
    st.floats().map(lambda number: AnyValue(double_value=number)),
    st.booleans().map(lambda flag: AnyValue(bool_value=flag)),
)
_KEYS = st.sampled_from(
    [
        "http.request.method",
        "http.method",
        "http.response.status_code",
        "http.status_code",
        "peer.service",
        "server.address",
        "url.full",
        "url.path",
        "upstream_cluster",
        "response_flags",
        "error.type",
        "http.response.body.size",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    kind=st.integers(min_value=0, max_value=5),
    attributes=st.lists(st.tuples(_KEYS, _ANY_VALUE), max_size=8),
    trace_id=st.binary(max_size=17),
    span_id=st.binary(max_size=9),
    start=st.integers(min_value=0, max_value=2**64 - 1),
    length=st.integers(min_value=-(2**40), max_value=2**40),
    error=st.booleans(),
)
def test_any_span_is_a_call_nothing_or_a_rejection(
    kind: int,
    attributes: list[tuple[str, AnyValue]],
    trace_id: bytes,
    span_id: bytes,
    start: int,
    length: int,
    error: bool,
) -> None:
    span = Span(
        trace_id=trace_id,
        span_id=span_id,
        kind=kind,  # type: ignore[arg-type]
        start_time_unix_nano=start,
        end_time_unix_nano=max(0, min(2**64 - 1, start + length)),
        attributes=[KeyValue(key=key, value=value) for key, value in attributes],
    )
    if error:
        span.status.code = ProtoStatus.STATUS_CODE_ERROR
    export = ExportTraceServiceRequest()
    export.resource_spans.add().scope_spans.add().spans.append(span)
    result = export_bodies(export)
    assert result.spans == 1 and result.calls + result.rejected <= 1
    assert len(result.bodies) == 2 * result.calls
    for body in result.bodies:
        parse_event(body)


def test_an_envoy_span_of_a_client_that_left_first_is_a_disconnected_call() -> None:
    def envoy_span(span_id: bytes, status: str, flags: str) -> Span:
        span = Span(
            trace_id=bytes(range(1, 17)),
            span_id=span_id,
            kind=Span.SPAN_KIND_SERVER,
            start_time_unix_nano=1_795_809_361_000_000_000,
            end_time_unix_nano=1_795_809_361_400_000_000,
            attributes=[
                KeyValue(key=key, value=AnyValue(string_value=value))
                for key, value in {
                    "http.method": "GET",
                    "upstream_cluster": "svc_b",
                    "http.status_code": status,
                    "response_flags": flags,
                }.items()
            ],
        )
        span.status.code = ProtoStatus.STATUS_CODE_ERROR
        return span

    export = ExportTraceServiceRequest()
    export.resource_spans.add().scope_spans.add().spans.extend(
        [
            envoy_span(b"span0001", "0", "DC"),
            envoy_span(b"span0002", "200", "DC"),
            envoy_span(b"span0003", "0", "UF,URX"),
        ]
    )
    result = export_bodies(export)
    outcomes = [parse_event(body) for body in result.bodies if parse_event(body).type != REQUEST]
    left, answered, failed = (event.data for event in outcomes)
    assert (left["error"], left["elapsedMs"]) == ("disconnected", 400.0)
    assert left["detail"] == "the client closed the connection before svc_b answered (DC)"
    # An answer that went out is the answer, whoever left afterwards; other flags are failures.
    assert answered["status"] == 200 and failed["error"] == "error"


def test_export_bodies_of_the_sdk_spans_are_valid_events() -> None:
    export = encode_spans(recorded_spans())
    result = export_bodies(export)
    assert (result.spans, result.calls, result.rejected) == (7, 5, 0)
    events = [parse_event(body) for body in result.bodies]
    assert {event.request_id for event in events} == {events[0].request_id}
    assert all(isinstance(event.data["spanId"], str) for event in events if event.type == REQUEST)


@pytest.mark.slow
def test_the_queue_down_is_a_503_with_retry_after(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    SQLiteQueue(data_dir / "queue.db").close()
    port = free_port()
    process = spawn(data_dir, "otlp", "--port", str(port))
    export = encode_spans(recorded_spans()).SerializeToString()
    url = f"http://127.0.0.1:{port}/v1/traces"
    headers = {"Content-Type": "application/x-protobuf"}
    # Another process holds the queue's write lock past the busy timeout.
    holder = sqlite3.connect(data_dir / "queue.db", isolation_level=None)
    try:
        wait_for_port(port)
        holder.execute("BEGIN IMMEDIATE")
        response = httpx.post(url, content=export, headers=headers, timeout=60)
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        status = status_pb2.Status()
        status.ParseFromString(response.content)
        assert "retry later" in status.message
        holder.execute("ROLLBACK")
        # What the exporter's retry brings once the queue is back.
        assert httpx.post(url, content=export, headers=headers, timeout=60).status_code == 200
    finally:
        holder.close()
        process.send_signal(signal.SIGINT)
        process.wait(15)
    with SQLiteQueue(data_dir / "queue.db") as queue:
        assert queue.stats().visible == 10
