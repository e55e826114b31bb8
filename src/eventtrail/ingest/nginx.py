"""nginx's JSON access log (``log_format ... escape=json``).

The keys are nginx's variable names (``examples/nginx-eventtrail.conf`` has
the ``log_format``):

- the time: ``msec`` (preferred: milliseconds) or ``time_iso8601``, when the
  request ended; ``request_time``, how long it took;
- ``request_id`` (the events' request id), ``request_method``, ``uri`` (or
  ``request_uri``);
- ``upstream_addr``, ``upstream_status``, ``upstream_response_time``: one
  value per upstream tried, separated by ``, `` (and `` : `` across internal
  redirects); a line without ``upstream_addr`` proxied nothing;
- optional: ``upstream_connect_time`` and ``upstream_header_time`` (tell a
  refused connection from a reset one and a 504 timeout from an upstream's
  own 504), ``status`` (499: the client left before the upstream answered),
  ``upstream_bytes_received``, ``request_length``, and ``service``
  (``set $service "Microservice A";`` per ``location``; else the upstream's
  address names the service).
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

from eventtrail.calls import DISCONNECTED
from eventtrail.ingest.accesslog import (
    Attempt,
    BadLine,
    ProxiedRequest,
    field_number,
    field_status,
    field_text,
)
from eventtrail.times import parse_timestamp

__all__ = ["LOG_FORMAT", "NginxFormat"]

#: The ``log_format`` this module reads, as the demo writes it into nginx's
#: configuration. ``examples/`` is not installed with the package, so the
#: example carries a copy, which a test holds to this text byte for byte.
LOG_FORMAT = """log_format eventtrail escape=json
    '{"msec":"$msec","request_id":"$request_id","request_method":"$request_method",'
    '"uri":"$uri","status":"$status","request_time":"$request_time",'
    '"request_length":"$request_length","service":"$service",'
    '"upstream_addr":"$upstream_addr","upstream_status":"$upstream_status",'
    '"upstream_response_time":"$upstream_response_time",'
    '"upstream_connect_time":"$upstream_connect_time",'
    '"upstream_header_time":"$upstream_header_time",'
    '"upstream_bytes_received":"$upstream_bytes_received"}';"""

# Values of several upstreams: ", " within one upstream group, " : " between
# the groups of internal redirects (an address has ":" but never " : ").
_SEPARATORS = re.compile(r", | : ")
_decode = msgspec.json.Decoder(dict[str, Any]).decode


def _values(record: dict[str, Any], name: str, count: int, *, required: bool) -> list[str] | None:
    # "-" is a value here (this upstream has none), not the absence of the field.
    text = record.get(name)
    if text is None or text == "":
        if required:
            raise BadLine(f"`{name}` is missing")
        return None
    if not isinstance(text, str):
        raise BadLine(f"`{name}` is not a string")
    values = _SEPARATORS.split(text)
    if len(values) != count:
        raise BadLine(f"`{name}` has {len(values)} values for {count} upstreams")
    return values


def _seconds_as_ms(text: str, name: str) -> float:
    return 0.0 if text == "-" else field_number(text, name, high=86_400 * 365) * 1000


class NginxFormat:
    """Reads lines of nginx's JSON access log (see the module's doc)."""

    name = "nginx"
    default_source = "nginx"

    def parse(self, line: str) -> ProxiedRequest | None:
        try:
            record = _decode(line)
        except msgspec.ValidationError:
            raise BadLine("not a JSON object") from None
        except msgspec.DecodeError as error:
            raise BadLine(f"not JSON: {error}") from None
        addresses = field_text(record, "upstream_addr", required=False)
        if addresses is None:
            return None
        upstreams = _SEPARATORS.split(addresses)
        count = len(upstreams)
        statuses = _values(record, "upstream_status", count, required=True)
        times = _values(record, "upstream_response_time", count, required=True)
        connects = _values(record, "upstream_connect_time", count, required=False)
        headers = _values(record, "upstream_header_time", count, required=False)
        received = _values(record, "upstream_bytes_received", count, required=False)
        assert statuses is not None and times is not None

        ended_ms = self._ended_ms(record)
        request_text = field_text(record, "request_time", required=False)
        took_ms = _seconds_as_ms(request_text, "request_time") if request_text else 0.0
        length_text = field_text(record, "request_length", required=False)
        bytes_in = int(field_number(length_text, "request_length")) if length_text else 0
        named = field_text(record, "service", required=False)
        path = field_text(record, "uri", required=False) or field_text(record, "request_uri")
        assert path is not None

        # 499: the client left first. nginx then closed the connection to the
        # upstream it was waiting for (the last one), which never answered.
        client_left = record.get("status") in ("499", 499)
        started = ended_ms - took_ms
        attempts: list[Attempt] = []
        for index, upstream in enumerate(upstreams):
            duration = _seconds_as_ms(times[index], "upstream_response_time")
            outcome: dict[str, Any]
            if client_left and index == count - 1 and statuses[index] == "-":
                outcome = {
                    "error": DISCONNECTED,
                    "detail": f"nginx: the client closed the connection before {upstream} answered (499)",
                }
            else:
                outcome = self._outcome(
                    statuses[index],
                    connects[index] if connects else None,
                    headers[index] if headers else None,
                    upstream,
                )
            out = received[index] if received else "-"
            attempts.append(
                Attempt(
                    service=named or upstream,
                    started_ms=started,
                    duration_ms=duration,
                    bytes_in=bytes_in,
                    bytes_out=0 if out == "-" else int(field_number(out, "upstream_bytes_received")),
                    extra={"upstream": upstream},
                    **outcome,
                )
            )
            started += duration
        request_id = field_text(record, "request_id")
        method = field_text(record, "request_method")
        assert request_id is not None and method is not None
        return ProxiedRequest(request_id=request_id, method=method, path=path, attempts=attempts)

    @staticmethod
    def _ended_ms(record: dict[str, Any]) -> float:
        msec = field_text(record, "msec", required=False)
        if msec is not None:
            return field_number(msec, "msec", high=253_402_300_799.999) * 1000
        iso = field_text(record, "time_iso8601", required=False)
        if iso is None:
            raise BadLine("neither `msec` nor `time_iso8601` is present")
        try:
            return parse_timestamp(iso).timestamp() * 1000
        except ValueError as error:
            raise BadLine(f"`time_iso8601`: {error}") from None

    @staticmethod
    def _outcome(status: str, connect: str | None, header: str | None, upstream: str) -> dict[str, Any]:
        """``status`` or ``error`` (with ``detail``) of one attempt.

        nginx answers 502 itself when the upstream refused the connection
        (no connect time) or closed it before its headers (no header time),
        and 504 when it stayed silent past ``proxy_read_timeout``.
        """
        if status == "504" and header in (None, "-"):
            return {"error": "timeout", "detail": f"nginx: {upstream} did not answer in time"}
        if status == "502":
            if connect == "-":
                return {"error": "refused", "detail": f"nginx: {upstream} refused the connection"}
            if header == "-":
                return {"error": "reset", "detail": f"nginx: {upstream} closed the connection"}
            if connect is None and header is None:
                return {
                    "error": "error",
                    "detail": f"nginx: 502 from {upstream} (log $upstream_connect_time"
                    " and $upstream_header_time to tell refused from reset)",
                }
        if status == "-":
            return {"error": "error", "detail": f"nginx: no status from {upstream}"}
        return {"status": field_status(status, "upstream_status")}
