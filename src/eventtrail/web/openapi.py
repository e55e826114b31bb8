"""The API's description, served at ``/openapi.json`` (OpenAPI 3.1).

Response schemas come from the structs the endpoints return
(``msgspec.json.schema_components``), so they cannot drift from the code.
"""

from __future__ import annotations

import functools
from typing import Any

import msgspec

from eventtrail import __version__
from eventtrail.event import Event
from eventtrail.health import HealthReport
from eventtrail.readmodels.series import SeriesReport
from eventtrail.web.traces import FlowView, RequestPage

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{name}"


def _parameter(
    name: str, description: str, schema: dict[str, Any], *, where: str = "query"
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


_TEXT = {"type": "string", "minLength": 1, "maxLength": 256}
_MOMENT = {"type": "string", "examples": ["2020-05-01T20:00:00Z", "15m", "now"]}
_SINCE = _parameter(
    "since", "From this moment (inclusive): ISO 8601 (UTC if no offset) or a time ago.", _MOMENT
)
_UNTIL = _parameter("until", "Up to this moment (exclusive): ISO 8601 or a time ago. Default: now.", _MOMENT)


def _limit(default: int, high: int) -> dict[str, Any]:
    return _parameter(
        "limit", "Page size.", {"type": "integer", "minimum": 1, "maximum": high, "default": default}
    )


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _operation(summary: str, parameters: list[dict[str, Any]], ok: dict[str, Any]) -> dict[str, Any]:
    error = {"$ref": _REF.format(name="Error")}
    return {
        "get": {
            "summary": summary,
            "parameters": parameters,
            "security": [{}, {"bearer": []}],
            "responses": {
                "200": ok,
                "400": _json(error, "A parameter is wrong; the message names it."),
                "401": _json(error, "The server requires a token and this one is missing or wrong."),
                "503": _json(error, "The store or the queue is unavailable."),
            },
        }
    }


@functools.cache
def openapi_document() -> dict[str, Any]:
    (requests_, flow, event, health, series), components = msgspec.json.schema_components(
        [RequestPage, FlowView, Event, HealthReport, SeriesReport], ref_template=_REF
    )
    components["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    events_page = {
        "type": "object",
        "properties": {
            "events": {"type": "array", "items": event},
            "cursor": {"anyOf": [{"type": "string"}, {"type": "null"}], "description": "Next page's cursor."},
        },
        "required": ["events", "cursor"],
    }
    dead_letters = {
        "type": "object",
        "properties": {
            "deadLetters": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string"},
                        "reason": {"type": "string"},
                        "receiveCount": {"type": "integer"},
                        "sentAt": {"type": "string"},
                        "failedAt": {"type": "string"},
                        "body": {"type": "string"},
                    },
                },
            }
        },
        "required": ["deadLetters"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "eventtrail",
            "version": __version__,
            "description": "Requests, flows, events, service health and dead letters recorded by eventtrail.",
        },
        "paths": {
            "/api/requests": _operation(
                "Requests that started in a range, newest first: one row per request id. Every"
                " match is found, however rare: follow the cursor to the next page.",
                [
                    _limit(50, 500),
                    _parameter("service", "Only requests that called this service.", _TEXT),
                    _parameter(
                        "status",
                        "Only requests with this overall status.",
                        {"type": "string", "enum": ["ok", "error", "pending"]},
                    ),
                    _parameter(
                        "minDurationMs",
                        "Only requests that lasted at least this many milliseconds.",
                        {"type": "number", "minimum": 0},
                    ),
                    _SINCE,
                    _UNTIL,
                    _parameter("cursor", "The cursor of the previous page.", {"type": "string"}),
                ],
                _json(requests_, "The requests found and the next page's cursor (null at the end)."),
            ),
            "/api/flows/{requestId}": _operation(
                "One request's flow: its events in time order and its calls (the waterfall).",
                [_parameter("requestId", "The request id.", _TEXT, where="path")],
                _json(flow, "The flow."),
            ),
            "/api/events": _operation(
                "One page of events of a type or of a source in a time range.",
                [
                    _parameter("type", "Events of this type (give type or source).", _TEXT),
                    _parameter("source", "Events of this source (give type or source).", _TEXT),
                    _SINCE,
                    _UNTIL,
                    _limit(100, 1000),
                    _parameter("cursor", "The cursor of the previous page.", {"type": "string"}),
                    _parameter(
                        "order", "Time order.", {"type": "string", "enum": ["asc", "desc"], "default": "asc"}
                    ),
                ],
                _json(events_page, "The page and the next page's cursor (null at the end)."),
            ),
            "/api/health": _operation(
                "Service health over a window, with the faulty services and why.",
                [
                    _parameter(
                        "window",
                        "How far back from until (at most 24h).",
                        {"type": "string", "default": "15m", "examples": ["15m", "1h"]},
                    ),
                    _UNTIL,
                ],
                _json(health, "The health report."),
            ),
            "/api/series": _operation(
                "Calls, errors and latency percentiles per step over a window, per service"
                " (or per operation of each service), read from the rollups.",
                [
                    _parameter(
                        "window",
                        "How far back from until (at most 7 days).",
                        {"type": "string", "default": "1h", "examples": ["15m", "2h", "24h"]},
                    ),
                    _parameter(
                        "step",
                        "One point per step: whole minutes; at most 1440 points. Default: at most 60 points,"
                        " in minutes up to a 6-hour window, in whole hours beyond.",
                        {"type": "string", "examples": ["1m", "5m", "1h"]},
                    ),
                    _parameter("service", "Only this service.", _TEXT),
                    _parameter(
                        "perOperation",
                        "One series per operation of each service.",
                        {"type": "boolean", "default": False},
                    ),
                    _UNTIL,
                ],
                _json(series, "The series."),
            ),
            "/api/dlq": _operation(
                "Dead letters (messages that could not be stored), oldest first.",
                [_limit(100, 1000)],
                _json(dead_letters, "The dead letters."),
            ),
        },
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    }
