"""Reading nginx and HAProxy log lines into calls: every outcome, ids that
are the same when a line is read again, and hostile lines that are a bad
line, never another exception."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.event import Event, encode_event, parse_event
from eventtrail.ingest import BadLine, HAProxyFormat, NginxFormat, call_events
from eventtrail.ingest.accesslog import MAX_PATH_CHARS, line_key

NGINX = NginxFormat()
HAPROXY = HAProxyFormat()


def nginx_line(**fields: Any) -> str:
    base = {
        "msec": "1795809361.414",
        "request_id": "2e96d2dc780943769671eb708c6d554f",
        "request_method": "GET",
        "uri": "/a/orders/42",
        "status": "200",
        "request_time": "0.004",
        "request_length": "82",
        "service": "Microservice A",
        "upstream_addr": "127.0.0.1:9001",
        "upstream_status": "200",
        "upstream_response_time": "0.003",
        "upstream_connect_time": "0.001",
        "upstream_header_time": "0.003",
        "upstream_bytes_received": "113",
    }
    base.update(fields)
    return json.dumps({key: value for key, value in base.items() if value is not None})


def events_of(line: str, log_format: Any = NGINX) -> list[Event]:
    request = log_format.parse(line)
    assert request is not None
    return call_events(request, source=log_format.default_source, key=line_key(log_format.name, line))


def test_an_answered_call_is_a_request_and_a_response() -> None:
    request, response = events_of(nginx_line())
    assert (request.type, response.type) == (REQUEST, RESPONSE)
    assert request.request_id == response.request_id == "2e96d2dc780943769671eb708c6d554f"
    assert request.source == "nginx"
    assert request.data == {
        "Name": "Microservice A",
        "callId": request.data["callId"],
        "method": "GET",
        "path": "/a/orders/42",
        "upstream": "127.0.0.1:9001",
    }
    assert response.data["status"] == 200 and response.data["latencyMs"] == 3.0
    assert response.data["bytesOut"] == 113 and response.data["bytesIn"] == 82
    assert response.data["callId"] == request.data["callId"]
    # The request started request_time before the line was written.
    assert request.timestamp == "2026-11-27T19:56:01.410000Z"
    assert response.timestamp == "2026-11-27T19:56:01.413000Z"


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"upstream_status": "502", "upstream_connect_time": "-", "upstream_header_time": "-"}, "refused"),
        ({"upstream_status": "502", "upstream_connect_time": "0.000", "upstream_header_time": "-"}, "reset"),
        (
            {"upstream_status": "504", "upstream_header_time": "-", "upstream_response_time": "1.002"},
            "timeout",
        ),
        ({"upstream_status": "504", "upstream_header_time": None, "upstream_connect_time": None}, "timeout"),
        ({"upstream_status": "502", "upstream_header_time": None, "upstream_connect_time": None}, "error"),
        ({"upstream_status": "-"}, "error"),
    ],
)
def test_nginx_failures_are_errors_of_their_kind(fields: dict[str, Any], kind: str) -> None:
    _, outcome = events_of(nginx_line(**fields))
    assert outcome.type == ERROR and outcome.data["error"] == kind


def test_a_client_that_left_first_is_said_so_not_an_upstream_without_status() -> None:
    # As Debian's nginx 1.22 logs a client that gave up on a slow upstream.
    line = nginx_line(
        status="499",
        request_time="0.404",
        upstream_status="-",
        upstream_response_time="0.403",
        upstream_connect_time="0.000",
        upstream_header_time="-",
        upstream_bytes_received="0",
    )
    _, outcome = events_of(line)
    assert outcome.type == ERROR and outcome.data["error"] == "disconnected"
    assert outcome.data["detail"] == (
        "nginx: the client closed the connection before 127.0.0.1:9001 answered (499)"
    )
    assert outcome.data["elapsedMs"] == 403.0
    # Only the upstream nginx was waiting for: an earlier one's failure is its own.
    two = nginx_line(
        status="499",
        upstream_addr="127.0.0.1:9099, 127.0.0.1:9001",
        upstream_status="502, -",
        upstream_response_time="0.000, 0.2",
        upstream_connect_time="-, 0.000",
        upstream_header_time="-, -",
        upstream_bytes_received="0, 0",
    )
    first, last = [event for event in events_of(two) if event.type == ERROR]
    assert first.data["error"] == "refused" and last.data["detail"].endswith("9001 answered (499)")
    # Without 499, an upstream without status stays one.
    _, other = events_of(nginx_line(upstream_status="-"))
    assert other.data["detail"] == "nginx: no status from 127.0.0.1:9001"


def test_an_upstream_s_own_502_and_504_are_responses() -> None:
    for status in ("502", "504", "503", "500"):
        _, outcome = events_of(nginx_line(upstream_status=status))
        assert outcome.type == RESPONSE and outcome.data["status"] == int(status)


def test_several_upstreams_are_several_calls_in_order() -> None:
    line = nginx_line(
        service="",
        upstream_addr="127.0.0.1:9099, 127.0.0.1:9001 : 127.0.0.1:9002",
        upstream_status="502, 200 : 404",
        upstream_response_time="0.000, 0.001 : 0.002",
        upstream_connect_time="-, 0.000 : 0.001",
        upstream_header_time="-, 0.001 : 0.002",
        upstream_bytes_received="0, 113 : 50",
        request_time="0.003",
    )
    events = events_of(line)
    assert [event.type for event in events] == [REQUEST, ERROR, REQUEST, RESPONSE, REQUEST, RESPONSE]
    assert [event.data["Name"] for event in events[::2]] == [
        "127.0.0.1:9099",
        "127.0.0.1:9001",
        "127.0.0.1:9002",
    ]
    assert len({event.data["callId"] for event in events}) == 3
    # The store orders ties on the timestamp by id: that order is this order.
    assert sorted(events, key=lambda event: (event.timestamp, event.id)) == events


def test_a_line_read_again_gives_the_same_events_and_another_line_other_ids() -> None:
    line = nginx_line()
    assert events_of(line) == events_of(line)
    other = events_of(nginx_line(msec="1795809361.415"))
    assert not {event.id for event in other} & {event.id for event in events_of(line)}


def test_lines_that_proxied_nothing_are_skipped() -> None:
    for addr in ("", "-", None):
        assert NGINX.parse(nginx_line(upstream_addr=addr)) is None


def test_time_iso8601_when_there_is_no_msec() -> None:
    request, _ = events_of(nginx_line(msec=None, time_iso8601="2026-11-27T19:56:01+00:00"))
    assert request.timestamp == "2026-11-27T19:56:00.996000Z"


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("not json", "not JSON"),
        ("[1, 2]", "not a JSON object"),
        (nginx_line(request_id=None), "`request_id` is missing"),
        (nginx_line(upstream_status="200, 200"), "2 values for 1 upstreams"),
        (nginx_line(upstream_status="2000"), "not an HTTP status"),
        (nginx_line(upstream_status="\u0662\u0660\u0660"), "not an HTTP status"),
        (nginx_line(upstream_response_time="nan"), "not a number"),
        (nginx_line(upstream_response_time="1_000"), "not a number"),
        (nginx_line(msec="99999999999999"), "out of range"),
        (nginx_line(msec=None), "neither `msec` nor `time_iso8601`"),
        (nginx_line(msec=None, time_iso8601="yesterday"), "time_iso8601"),
        (nginx_line(request_time="-5"), "out of range"),
        (json.dumps({"upstream_addr": ["a"]}), "not a string"),
    ],
)
def test_bad_nginx_lines_say_why(line: str, reason: str) -> None:
    with pytest.raises(BadLine, match=reason):
        NGINX.parse(line)


def test_a_huge_path_is_bounded() -> None:
    request, _ = events_of(nginx_line(uri="/a/" + "x" * 100_000))
    assert len(request.data["path"]) < MAX_PATH_CHARS + 50


def haproxy_line(**fields: Any) -> str:
    base: dict[str, Any] = {
        "ts": 1795809424,
        "ms": "097",
        "unique_id": "7F000001BFD07F00000146AA6B09E090000052FF",
        "method": "GET",
        "uri": "/a/x",
        "status": 200,
        "backend": "svc",
        "server": "a",
        "TR": 1,
        "Tw": 0,
        "Tc": 0,
        "Tr": 6,
        "Ta": 8,
        "termination_state": "----",
        "bytes_read": 116,
        "bytes_uploaded": 85,
        "retries": 0,
    }
    base.update(fields)
    return json.dumps({key: value for key, value in base.items() if value is not None})


def test_haproxy_answered_call() -> None:
    request, response = events_of(haproxy_line(), HAPROXY)
    assert request.request_id == "7F000001BFD07F00000146AA6B09E090000052FF"
    assert request.data["Name"] == "svc" and request.data["server"] == "a"
    assert request.timestamp == "2026-11-27T19:57:04.098000Z"
    assert response.data["status"] == 200 and response.data["latencyMs"] == 7.0
    assert response.data["bytesOut"] == 116 and response.data["bytesIn"] == 85


@pytest.mark.parametrize(
    ("fields", "kind"),
    [
        ({"termination_state": "sH--", "Tr": -1, "status": 504}, "timeout"),
        ({"termination_state": "sC--", "Tr": -1, "Tc": -1, "status": 503}, "timeout"),
        ({"termination_state": "SC--", "Tr": -1, "Tc": -1, "status": 503, "retries": 3}, "refused"),
        ({"termination_state": "SH--", "Tr": -1, "status": 502}, "reset"),
        ({"termination_state": "CH--", "Tr": -1, "status": -1}, "disconnected"),
    ],
)
def test_haproxy_failures_come_from_the_termination_state(fields: dict[str, Any], kind: str) -> None:
    _, outcome = events_of(haproxy_line(**fields), HAPROXY)
    assert outcome.type == ERROR and outcome.data["error"] == kind


def test_haproxy_says_when_the_client_left_first() -> None:
    _, left = events_of(haproxy_line(termination_state="CH--", Tr=-1, status=-1), HAPROXY)
    assert left.data["error"] == "disconnected"
    assert left.data["detail"] == "haproxy: the client closed the connection before svc/a answered (CH--)"
    _, other = events_of(haproxy_line(termination_state="PH--", Tr=-1, status=-1), HAPROXY)
    assert other.data["detail"] == "haproxy: no response from svc/a (PH--)"


def test_haproxy_syslog_header_and_answers_of_its_own() -> None:
    line = "<134>Nov 27 19:57:04 haproxy[1234]: " + haproxy_line()
    assert len(events_of(line, HAPROXY)) == 2
    assert HAPROXY.parse(haproxy_line(server="<NOSRV>", status=403)) is None
    assert (
        HAPROXY.parse(haproxy_line(server="-", unique_id="-", method="<BADREQ>", termination_state="CR--"))
        is None
    )
    (_, down) = events_of(
        haproxy_line(server="<NOSRV>", termination_state="SC--", Tr=-1, status=503), HAPROXY
    )
    assert down.data["error"] == "refused" and down.data["Name"] == "svc"
    assert len(events_of(haproxy_line(service="Microservice A"), HAPROXY)) == 2


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("no json here", "no JSON object"),
        ('{"ts": 1, "ms": "070"', "not JSON"),
        (haproxy_line(unique_id=None), "`unique_id` is missing"),
        (haproxy_line(ms="1000"), "out of range"),
        (haproxy_line(status=999), "not an HTTP status"),
        (haproxy_line(Ta="x"), "not a number"),
    ],
)
def test_bad_haproxy_lines_say_why(line: str, reason: str) -> None:
    with pytest.raises(BadLine, match=reason):
        HAPROXY.parse(line)


_values = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(), max_size=2),
)
_NGINX_KEYS = json.loads(nginx_line()).keys() | {"time_iso8601"}
_HAPROXY_KEYS = json.loads(haproxy_line()).keys() | {"service"}


@settings(max_examples=400, deadline=None)
@given(
    log_format=st.sampled_from([NGINX, HAPROXY]),
    changes=st.dictionaries(st.sampled_from(sorted(_NGINX_KEYS | _HAPROXY_KEYS)), _values, max_size=5),
)
def test_any_line_is_events_or_a_bad_line(log_format: Any, changes: dict[str, Any]) -> None:
    line = (nginx_line if log_format is NGINX else haproxy_line)(**changes)
    try:
        request = log_format.parse(line)
    except BadLine:
        return
    if request is None:
        return
    try:
        events = call_events(request, source="test", key=line_key(log_format.name, line))
    except BadLine:
        return
    for event in events:
        # Whatever is made is what the consumer accepts: the same event back.
        assert parse_event(encode_event(event)) == event


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200) | st.binary(max_size=200).map(lambda raw: raw.decode("latin-1")))
def test_arbitrary_text_is_a_bad_line_or_nothing(text: str) -> None:
    for log_format in (NGINX, HAPROXY):
        with contextlib.suppress(BadLine):
            log_format.parse(text)
