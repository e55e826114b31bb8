"""HAProxy's JSON log lines (a ``log-format`` of its own, see
``examples/haproxy-eventtrail.cfg``), from a file or a syslog socket.

The keys: ``ts`` (``%Ts``) and ``ms`` (``"%ms"``, quoted: HAProxy pads it with
zeros), when the request was accepted; ``unique_id`` (``%ID``, the events'
request id), ``method``, ``uri``, ``status`` (``%ST``), ``backend`` (``%b``:
the service, unless a ``service`` key names it), ``server`` (``%s``); the
timers ``TR``, ``Tw``, ``Tc``, ``Tr`` and ``Ta`` in milliseconds (``-1``: that
phase never ended); ``termination_state`` (``%tsc``) for timeouts and
resets; optional ``bytes_read`` (``%B``), ``bytes_uploaded`` (``%U``) and
``retries`` (``%rc``). Strings go through HAProxy's ``json`` converter so
that any byte a client sends stays valid JSON.
"""

from __future__ import annotations

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

__all__ = ["HAProxyFormat"]

_decode = msgspec.json.Decoder(dict[str, Any]).decode

# %s when HAProxy answered by itself (no server was chosen).
_NO_SERVER = ("<NOSRV>", "<STATS>", "<CACHE>")


def _timer(record: dict[str, Any], name: str, *, required: bool = True) -> float:
    """A timer in milliseconds; -1 (the phase never ended) stays -1."""
    text = field_text(record, name, required=required)
    if text is None:
        return -1.0
    return field_number(text, name, low=-1, high=86_400_000 * 365)


class HAProxyFormat:
    """Reads HAProxy's JSON log lines (see the module's doc)."""

    name = "haproxy"
    default_source = "haproxy"

    def parse(self, line: str) -> ProxiedRequest | None:
        # A syslog message carries a header before the JSON (unless the log
        # target says `format raw`).
        start = line.find("{")
        if start < 0:
            raise BadLine("no JSON object in the line")
        try:
            record = _decode(line[start:])
        except msgspec.ValidationError:
            raise BadLine("not a JSON object") from None
        except msgspec.DecodeError as error:
            raise BadLine(f"not JSON: {error}") from None
        server = field_text(record, "server", required=False)
        state = field_text(record, "termination_state") or ""
        if server in (None, *_NO_SERVER):
            # HAProxy answered by itself (a bad request, a deny, its stats),
            # unless no server could take the request (all down: a failed call).
            if state[:1] not in ("s", "S"):
                return None
            server = None
        backend = field_text(record, "backend")
        assert backend is not None
        service = field_text(record, "service", required=False) or backend

        seconds = field_number(field_text(record, "ts") or "", "ts", high=253_402_300_799)
        millis = field_number(field_text(record, "ms") or "", "ms", high=999)
        accepted = seconds * 1000 + millis
        waited = max(_timer(record, "TR"), 0) + max(_timer(record, "Tw", required=False), 0)
        active = _timer(record, "Ta")
        response = _timer(record, "Tr", required=False)
        duration = max(active - max(_timer(record, "TR"), 0), 0)

        outcome: dict[str, Any]
        cause, phase = (state + "--")[0], (state + "--")[1]
        retries = field_text(record, "retries", required=False)
        after = f" after {retries} retries" if retries not in (None, "0") else ""
        where = f"{backend}/{server}" if server else backend
        if cause == "s":
            outcome = {"error": "timeout", "detail": f"haproxy: {where} did not answer in time{after}"}
        elif cause == "S" and phase == "C":
            outcome = {"error": "refused", "detail": f"haproxy: {where} refused the connection{after}"}
        elif cause == "S":
            outcome = {"error": "reset", "detail": f"haproxy: {where} closed the connection ({state})"}
        elif response < 0 and cause == "C":
            outcome = {
                "error": DISCONNECTED,
                "detail": f"haproxy: the client closed the connection before {where} answered ({state})",
            }
        elif response < 0:
            outcome = {"error": "error", "detail": f"haproxy: no response from {where} ({state})"}
        else:
            status = field_text(record, "status")
            assert status is not None
            outcome = {"status": field_status(status, "status")}
        uploaded = field_text(record, "bytes_uploaded", required=False)
        read = field_text(record, "bytes_read", required=False)
        attempt = Attempt(
            service=service,
            started_ms=accepted + waited,
            duration_ms=duration,
            bytes_in=int(field_number(uploaded, "bytes_uploaded")) if uploaded else 0,
            bytes_out=int(field_number(read, "bytes_read")) if read else 0,
            extra={"backend": backend, "server": server} if server else {"backend": backend},
            **outcome,
        )
        request_id = field_text(record, "unique_id")
        method = field_text(record, "method")
        uri = field_text(record, "uri")
        assert request_id is not None and method is not None and uri is not None
        return ProxiedRequest(request_id=request_id, method=method, path=uri, attempts=[attempt])
