"""Requests as people look at them: one row per request, and one request's
calls on a time axis (the waterfall).

Recent requests are read as the newest ``MICROSERVICE_REQUEST`` events (the
type index, newest first), grouped by request id, then each request's flow:
never a scan of the whole store, so it works the same on DynamoDB.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

import msgspec

from eventtrail.calls import ERROR, REQUEST, RESPONSE, service_of
from eventtrail.event import Event
from eventtrail.store import Store

__all__ = [
    "CallView",
    "FlowView",
    "RecentRequests",
    "RequestStatus",
    "RequestSummary",
    "flow_view",
    "recent_requests",
    "summarise",
]

RequestStatus = Literal["ok", "error", "pending"]
CallOutcome = Literal["ok", "failed", "pending"]

#: Request ids looked at, at most, to fill one list when filters are strict.
MAX_CANDIDATES = 2000


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


class RequestSummary(msgspec.Struct, kw_only=True, rename="camel"):
    request_id: str
    started_at: str
    ended_at: str
    duration_ms: float
    services: list[str]
    """Services called, in the order of their first call."""
    calls: int
    errors: int
    status: RequestStatus
    """``error`` if any call failed, else ``pending`` if a call has not ended, else ``ok``."""


class FlowView(msgspec.Struct, kw_only=True, rename="camel"):
    summary: RequestSummary
    calls: list[CallView]
    events: list[Event]


class RecentRequests(msgspec.Struct, kw_only=True, rename="camel"):
    requests: list[RequestSummary]
    examined: int
    """Request ids looked at to find these (filters may skip many)."""
    exhausted: bool
    """Every request in the time range was looked at."""


def _milliseconds_between(start: str, end: str) -> float:
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(delta.total_seconds() * 1000, 3)


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
            call.outcome = "failed"
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


def recent_requests(
    store: Store,
    *,
    limit: int = 50,
    service: str | None = None,
    status: RequestStatus | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    max_candidates: int = MAX_CANDIDATES,
) -> RecentRequests:
    """The newest requests that called ``service`` and ended with ``status``
    (each filter optional), with a call starting in ``[since, until)``."""
    found: list[RequestSummary] = []
    seen: set[str] = set()
    cursor: str | None = None
    page_size = min(1000, max(limit * 4, 100))
    while len(found) < limit and len(seen) < max_candidates:
        page = store.events(
            type=REQUEST, since=since, until=until, limit=page_size, cursor=cursor, newest_first=True
        )
        for event in page.events:
            if event.request_id in seen:
                continue
            seen.add(event.request_id)
            events = store.flow(event.request_id)
            if not events:
                continue
            summary = summarise(events)
            if (service is None or service in summary.services) and (
                status is None or summary.status == status
            ):
                found.append(summary)
                if len(found) >= limit:
                    break
            if len(seen) >= max_candidates:
                break
        else:
            if page.cursor is None:
                return RecentRequests(requests=_newest_first(found), examined=len(seen), exhausted=True)
        cursor = page.cursor
    return RecentRequests(requests=_newest_first(found), examined=len(seen), exhausted=False)


def _newest_first(summaries: list[RequestSummary]) -> list[RequestSummary]:
    return sorted(summaries, key=lambda summary: summary.started_at, reverse=True)
