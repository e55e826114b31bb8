"""Requests as people look at them: one row per request, and one request's
calls on a time axis (the waterfall).

The request list reads the request summaries of the read models
(:mod:`eventtrail.readmodels`), indexed by start time, service and status:
every match in a range is found, however rare, a page at a time. One
request's waterfall reads its flow.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from eventtrail.calls import DISCONNECTED, ERROR, REQUEST, RESPONSE, service_of
from eventtrail.event import Event
from eventtrail.readmodels import RequestPage, RequestQuery, RequestSummary, read_models_of
from eventtrail.readmodels.model import RequestStatus, milliseconds_between
from eventtrail.store import Store
from eventtrail.times import format_moment

__all__ = [
    "CallView",
    "FlowView",
    "RequestPage",
    "RequestStatus",
    "RequestSummary",
    "find_requests",
    "flow_view",
    "summarise",
]

#: ``abandoned``: its client left before it was answered (no failure of the service).
CallOutcome = Literal["ok", "failed", "abandoned", "pending"]


class CallView(msgspec.Struct, kw_only=True, rename="camel"):
    """One upstream call: from its request event to its response or error."""

    call_id: str
    service: str
    method: str | None
    path: str | None
    started_at: str
    ended_at: str | None
    offset_ms: float
    """From the request's first event to the call's start."""
    duration_ms: float | None
    status: int | None
    error: str | None
    outcome: CallOutcome
    event_ids: list[str]


class FlowView(msgspec.Struct, kw_only=True, rename="camel"):
    summary: RequestSummary
    calls: list[CallView]
    events: list[Event]


_milliseconds_between = milliseconds_between


def _calls(events: list[Event]) -> list[CallView]:
    first = events[0].timestamp
    calls: dict[str, CallView] = {}
    for event in events:
        call_id = event.data.get("callId")
        service = service_of(event)
        if event.type not in (REQUEST, RESPONSE, ERROR) or not isinstance(call_id, str) or service is None:
            continue
        call = calls.get(call_id)
        if call is None:
            # A response without its request event still shows, as a point.
            call = calls[call_id] = CallView(
                call_id=call_id,
                service=service,
                method=None,
                path=None,
                started_at=event.timestamp,
                ended_at=None,
                offset_ms=_milliseconds_between(first, event.timestamp),
                duration_ms=None,
                status=None,
                error=None,
                outcome="pending",
                event_ids=[],
            )
        call.event_ids.append(event.id)
        if event.type == REQUEST:
            method, path = event.data.get("method"), event.data.get("path")
            call.method = method if isinstance(method, str) else None
            call.path = path if isinstance(path, str) else None
            continue
        call.ended_at = event.timestamp
        call.duration_ms = _milliseconds_between(call.started_at, event.timestamp)
        if event.type == RESPONSE:
            status = event.data.get("status")
            call.status = status if isinstance(status, int) and not isinstance(status, bool) else None
            call.outcome = "failed" if call.status is not None and call.status >= 500 else "ok"
        else:
            kind = event.data.get("error")
            call.error = kind if isinstance(kind, str) else "error"
            call.outcome = "abandoned" if call.error == DISCONNECTED else "failed"
    return list(calls.values())


def _summary(events: list[Event], calls: list[CallView]) -> RequestSummary:
    errors = sum(call.outcome == "failed" for call in calls)
    status: RequestStatus = "ok"
    if errors:
        status = "error"
    elif any(call.outcome == "pending" for call in calls):
        status = "pending"
    return RequestSummary(
        request_id=events[0].request_id,
        started_at=events[0].timestamp,
        ended_at=events[-1].timestamp,
        duration_ms=_milliseconds_between(events[0].timestamp, events[-1].timestamp),
        services=list(dict.fromkeys(call.service for call in calls)),
        calls=len(calls),
        errors=errors,
        status=status,
    )


def summarise(events: list[Event]) -> RequestSummary:
    """One row of the requests list, from a request's flow (not empty)."""
    return _summary(events, _calls(events))


def flow_view(store: Store, request_id: str) -> FlowView | None:
    """A request's events, its calls and its summary (``None`` if unknown)."""
    events = store.flow(request_id)
    if not events:
        return None
    calls = _calls(events)
    return FlowView(summary=_summary(events, calls), calls=calls, events=events)


def find_requests(
    store: Store,
    *,
    limit: int = 50,
    service: str | None = None,
    status: RequestStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    min_duration_ms: float | None = None,
    cursor: str | None = None,
) -> RequestPage:
    """The requests that started in ``[since, until)``, called ``service``,
    ended with ``status`` and lasted at least ``min_duration_ms`` (each
    filter optional), newest first, one page at a time."""
    query = RequestQuery(
        since=format_moment(since) if since else None,
        until=format_moment(until) if until else None,
        service=service,
        status=status,
        min_duration_ms=min_duration_ms,
    )
    return read_models_of(store).requests(query, limit=limit, cursor=cursor)
