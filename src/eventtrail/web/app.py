"""The HTTP API and the web UI, as one Starlette application.

Every ``/api/`` endpoint answers JSON; bad parameters get a 400 with
``{"error": "..."}`` saying which parameter and why. With a token, every
``/api/`` request must carry ``Authorization: Bearer <token>``; the UI's
static files carry no data and are served without it.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, cast, get_args

import msgspec
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Receive, Scope, Send

from eventtrail.health import HealthThresholds, service_health
from eventtrail.queue import Queue, QueueError
from eventtrail.readmodels import read_models_of
from eventtrail.readmodels.prometheus import CONTENT_TYPE as METRICS_CONTENT_TYPE
from eventtrail.readmodels.prometheus import render_metrics
from eventtrail.readmodels.series import BadSeries, default_step, series
from eventtrail.store import InvalidCursor, Store, StoreError, TransientStoreError
from eventtrail.times import parse_duration, parse_moment
from eventtrail.web.openapi import openapi_document
from eventtrail.web.server import trusted_hosts
from eventtrail.web.traces import RequestStatus, find_requests, flow_view

__all__ = ["MAX_HEALTH_WINDOW", "MAX_SERIES_WINDOW", "TokenCheck", "build_app"]

STATIC = Path(__file__).parent / "static"

#: The longest health window (health reads rollups: its cost is bounded by
#: the buckets of the window, not by its events).
MAX_HEALTH_WINDOW = timedelta(days=1)

#: The longest series window.
MAX_SERIES_WINDOW = timedelta(days=7)

_encode = msgspec.json.Encoder().encode


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return _encode(content)


class BadParameter(Exception):
    """A query parameter the API cannot use: a 400 naming it."""


def _error(status: int, message: str, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


class Parameters:
    """The query parameters of one request, read and checked one by one."""

    def __init__(self, request: Request, allowed: set[str]) -> None:
        self._query = request.query_params
        unknown = sorted(set(self._query) - allowed)
        if unknown:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadParameter(f"unknown parameter {', '.join(unknown)} (known: {known})")
        for name in self._query:
            if len(self._query.getlist(name)) > 1:
                raise BadParameter(f"{name}: given more than once")

    def text(self, name: str, *, max_length: int = 256) -> str | None:
        value = self._query.get(name)
        if value is None:
            return None
        if not value or len(value) > max_length:
            raise BadParameter(f"{name}: must be 1 to {max_length} characters")
        return value

    def integer(self, name: str, default: int, *, low: int, high: int) -> int:
        value = self._query.get(name)
        if value is None:
            return default
        try:
            number = int(value)
        except ValueError:
            raise BadParameter(f"{name}: {value!r} is not a whole number") from None
        if not low <= number <= high:
            raise BadParameter(f"{name}: must be between {low} and {high}, not {number}")
        return number

    def number(self, name: str, *, low: float, high: float) -> float | None:
        value = self._query.get(name)
        if value is None:
            return None
        try:
            number = float(value)
        except ValueError:
            raise BadParameter(f"{name}: {value[:64]!r} is not a number") from None
        if not low <= number <= high:  # NaN fails both comparisons
            raise BadParameter(f"{name}: must be between {low:g} and {high:g}")
        return number

    def flag(self, name: str) -> bool:
        value = self._query.get(name)
        if value is None:
            return False
        if value.lower() not in ("true", "false", "1", "0"):
            raise BadParameter(f"{name}: {value[:64]!r} is not one of true, false")
        return value.lower() in ("true", "1")

    def choice(self, name: str, choices: tuple[str, ...]) -> str | None:
        value = self._query.get(name)
        if value is not None and value not in choices:
            raise BadParameter(f"{name}: {value!r} is not one of {', '.join(choices)}")
        return value

    def moment(self, name: str) -> datetime | None:
        value = self._query.get(name)
        if value is None:
            return None
        try:
            return parse_moment(value)
        except ValueError as error:
            raise BadParameter(f"{name}: {error}") from None

    def duration(self, name: str, default: timedelta, *, longest: timedelta) -> timedelta:
        value = self._query.get(name)
        if value is None:
            return default
        try:
            duration = parse_duration(value)
        except ValueError as error:
            raise BadParameter(f"{name}: {error}") from None
        if duration > longest:
            raise BadParameter(f"{name}: at most {longest.total_seconds() / 3600:g} hours")
        return duration


def _range(since: datetime | None, until: datetime | None) -> None:
    if since and until and since >= until:
        raise BadParameter("since: must be before until")


def _json_endpoint(handler: Callable[[Request], Any]) -> Callable[[Request], Response]:
    """Run ``handler`` (blocking: Starlette runs it in its thread pool) and
    turn what it returns or raises into JSON."""

    def endpoint(request: Request) -> Response:
        try:
            result = handler(request)
        except BadParameter as error:
            return _error(400, str(error))
        except InvalidCursor as error:
            return _error(400, f"cursor: {error}")
        except TransientStoreError as error:
            return _error(503, f"the store is busy, try again: {error}", {"Retry-After": "1"})
        except (StoreError, QueueError) as error:
            return _error(503, str(error))
        if isinstance(result, Response):
            return result
        return JSONResponse(result)

    return endpoint


class TokenCheck:
    """Refuse requests under ``prefix`` (one or several) without ``Authorization: Bearer <token>``."""

    def __init__(
        self, app: ASGIApp, token: str, *, prefix: str | tuple[str, ...] = ("/api/", "/metrics")
    ) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()
        self.prefixes = (prefix,) if isinstance(prefix, str) else prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not secrets.compare_digest(given, self.expected):
                message = "missing API token" if not given else "wrong API token"
                response = _error(
                    401,
                    f"{message}: send the header Authorization: Bearer <token>",
                    {"WWW-Authenticate": 'Bearer realm="eventtrail"'},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def build_app(
    store: Store,
    queue: Queue | None = None,
    *,
    token: str | None = None,
    thresholds: HealthThresholds | None = None,
    refresh_seconds: float = 2.0,
    allowed_hosts: Sequence[str] | None = None,
) -> ASGIApp:
    """The API and UI over ``store`` (and ``queue``, for ``/api/dlq``).

    ``token``: when given, every ``/api/`` request must carry it as a Bearer
    token. ``refresh_seconds``: how often the UI polls while open.
    ``allowed_hosts``: the Host header values answered (see
    :func:`~eventtrail.web.server.trusted_hosts`); loopback names only by
    default, any other Host gets a 400.
    """
    health_thresholds = thresholds or HealthThresholds()
    statuses: tuple[str, ...] = get_args(RequestStatus)

    def requests_(request: Request) -> Any:
        query = Parameters(
            request, {"limit", "service", "status", "since", "until", "minDurationMs", "cursor"}
        )
        since, until = query.moment("since"), query.moment("until")
        _range(since, until)
        status = cast(RequestStatus | None, query.choice("status", statuses))
        return find_requests(
            store,
            limit=query.integer("limit", 50, low=1, high=500),
            service=query.text("service"),
            status=status,
            since=since,
            until=until,
            min_duration_ms=query.number("minDurationMs", low=0, high=1e12),
            cursor=query.text("cursor", max_length=4096),
        )

    def flow(request: Request) -> Any:
        Parameters(request, set())
        request_id = request.path_params["request_id"]
        if not 1 <= len(request_id) <= 256:
            raise BadParameter("requestId: must be 1 to 256 characters")
        view = flow_view(store, request_id)
        if view is None:
            return _error(404, f"no events for request {request_id}")
        return view

    def events(request: Request) -> Any:
        query = Parameters(request, {"type", "source", "since", "until", "limit", "cursor", "order"})
        type_, source = query.text("type"), query.text("source")
        if (type_ is None) == (source is None):
            raise BadParameter("type, source: give exactly one of them")
        since, until = query.moment("since"), query.moment("until")
        _range(since, until)
        page = store.events(
            type=type_,
            source=source,
            since=since,
            until=until,
            limit=query.integer("limit", 100, low=1, high=1000),
            cursor=query.text("cursor", max_length=4096),
            newest_first=query.choice("order", ("asc", "desc")) == "desc",
        )
        return {"events": page.events, "cursor": page.cursor}

    def health(request: Request) -> Any:
        query = Parameters(request, {"window", "until"})
        window = query.duration("window", timedelta(minutes=15), longest=MAX_HEALTH_WINDOW)
        until = query.moment("until")
        try:
            return service_health(store, window, until=until, thresholds=health_thresholds)
        except ValueError as error:
            raise BadParameter(f"until: {error}") from None

    def series_(request: Request) -> Any:
        query = Parameters(request, {"window", "step", "service", "until", "perOperation"})
        window = query.duration("window", timedelta(hours=1), longest=MAX_SERIES_WINDOW)
        step = query.duration("step", default_step(window), longest=MAX_SERIES_WINDOW)
        until = query.moment("until")
        try:
            return series(
                read_models_of(store),
                window,
                step,
                until=until,
                service=query.text("service"),
                operations=query.flag("perOperation"),
            )
        except BadSeries as error:
            raise BadParameter(str(error)) from None

    def metrics(_: Request) -> Response:
        try:
            body = render_metrics(read_models_of(store))
        except StoreError as error:
            return Response(f"# {error}\n", status_code=503, media_type="text/plain")
        return Response(body, headers={"Content-Type": METRICS_CONTENT_TYPE})

    def dlq(request: Request) -> Any:
        query = Parameters(request, {"limit"})
        limit = query.integer("limit", 100, low=1, high=1000)
        if queue is None:
            return _error(503, "no queue is configured for this server")
        return {"deadLetters": [letter.to_document() for letter in queue.dead_letters(limit)]}

    def ui_settings(request: Request) -> Any:
        Parameters(request, set())
        return {"refreshSeconds": refresh_seconds}

    async def openapi(_: Request) -> Response:
        return JSONResponse(openapi_document())

    async def index(_: Request) -> Response:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def http_error(_: Request, error: Exception) -> Response:
        assert isinstance(error, HTTPException)
        return _error(error.status_code, error.detail, error.headers)

    app = Starlette(
        routes=[
            Route("/api/requests", _json_endpoint(requests_)),
            Route("/api/flows/{request_id:path}", _json_endpoint(flow)),
            Route("/api/events", _json_endpoint(events)),
            Route("/api/health", _json_endpoint(health)),
            Route("/api/series", _json_endpoint(series_)),
            Route("/api/dlq", _json_endpoint(dlq)),
            Route("/api/ui-settings", _json_endpoint(ui_settings)),
            Route("/openapi.json", openapi),
            Route("/metrics", metrics),
            Route("/", index),
            Mount("/static", StaticFiles(directory=STATIC), name="static"),
        ],
        exception_handlers={HTTPException: http_error},
    )
    checked: ASGIApp = TokenCheck(app, token) if token is not None else app
    hosts = list(allowed_hosts) if allowed_hosts is not None else trusted_hosts("127.0.0.1")
    return TrustedHostMiddleware(checked, allowed_hosts=hosts, www_redirect=False)
