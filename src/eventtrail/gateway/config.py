"""The gateway's configuration file: routes, what is recorded, the publisher.

A TOML file with one ``[[routes]]`` table per service::

    [[routes]]
    prefix = "/a"
    service = "Microservice A"
    upstream = "http://127.0.0.1:9001"
    timeout = 5.0

and optional ``[recording]`` and ``[publisher]`` tables (see
:class:`Recording` and :class:`PublisherSettings`). Where events go (the
embedded queue or SQS) is not here: it is the same configuration as every
other command (``EVENTTRAIL_BACKEND`` etc., see :mod:`eventtrail.config`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

import msgspec

from eventtrail.config import ConfigError

__all__ = [
    "DEFAULT_REDACTED_HEADERS",
    "DEFAULT_REDACTED_QUERY",
    "GatewayConfig",
    "PublisherSettings",
    "Recording",
    "Route",
    "load_gateway_config",
    "parse_gateway_config",
]

_Seconds = Annotated[float, msgspec.Meta(gt=0)]

#: Headers whose values are never recorded, whatever the configuration adds.
DEFAULT_REDACTED_HEADERS = (
    "authorization",
    "proxy-authorization",
    "cookie",
    "set-cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
    "x-amz-security-token",
)

#: Query parameters whose values are never recorded.
DEFAULT_REDACTED_QUERY = (
    "access_token",
    "api_key",
    "apikey",
    "code",
    "key",
    "password",
    "secret",
    "signature",
    "token",
    "x-amz-signature",
    "x-amz-security-token",
)


class Route(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Requests under ``prefix`` go to ``upstream`` (the prefix removed) and
    are recorded as calls to ``service``."""

    prefix: str
    service: Annotated[str, msgspec.Meta(min_length=1, max_length=256)]
    upstream: str
    timeout: _Seconds = 30.0
    """Seconds the upstream may stay silent: before its response headers, and
    between two chunks of its body. Past it: 504 and a ``timeout`` error."""
    connect_timeout: _Seconds = 5.0
    """Seconds to open a connection to the upstream. Past it: 504."""

    def __post_init__(self) -> None:
        if not self.prefix.startswith("/"):
            raise ValueError(f"prefix {self.prefix!r} must start with /")
        parts = urlsplit(self.upstream)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"upstream {self.upstream!r} must be an http:// or https:// URL")
        if parts.query or parts.fragment:
            raise ValueError(f"upstream {self.upstream!r} must not have a query or fragment")

    @property
    def bare_prefix(self) -> str:
        """The prefix without its trailing slash (``/`` stays ``""``)."""
        return self.prefix.rstrip("/")

    @property
    def upstream_base(self) -> str:
        """The upstream URL without its trailing slash."""
        return self.upstream.rstrip("/")


class Recording(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What goes into the events. Secrets never do: the redacted headers and
    query parameters below are always on, ``redact_*`` adds to them."""

    enabled: bool = True
    """Publish events at all (off: a plain reverse proxy)."""
    query: bool = True
    """Record the query string (``query`` data key), secrets redacted."""
    request_headers: list[str] = msgspec.field(default_factory=list)
    """Request headers to record (``requestHeaders``), by name."""
    response_headers: list[str] = msgspec.field(default_factory=list)
    """Response headers to record (``responseHeaders``), by name."""
    redact_headers: list[str] = msgspec.field(default_factory=list)
    """More headers whose values are replaced by ``[redacted]``."""
    redact_query: list[str] = msgspec.field(default_factory=list)
    """More query parameters whose values are replaced by ``[redacted]``."""


class PublisherSettings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """How events leave the gateway: a bounded buffer, batches, a spill file."""

    buffer_size: Annotated[int, msgspec.Meta(ge=1)] = 100_000
    """Events held in memory; past it, events are counted as dropped."""
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 200
    """Events per queue send."""
    flush_interval: _Seconds = 0.05
    """Seconds an event may wait in the buffer before its batch is sent."""
    spill_path: str | None = None
    """The spill file (SQLite) used while the queue is down. Default:
    ``<data_dir>/gateway-spill.db``."""
    retry_interval: _Seconds = 1.0
    """Seconds between attempts to reach a queue that failed (doubles, up to
    ``max_retry_interval``)."""
    max_retry_interval: _Seconds = 15.0
    queue_process: bool = True
    """Operate the queue from a child process, off the gateway's GIL (see
    :mod:`eventtrail.gateway.offload`)."""


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole file."""

    routes: list[Route]
    recording: Recording = msgspec.field(default_factory=Recording)
    publisher: PublisherSettings = msgspec.field(default_factory=PublisherSettings)
    metrics_path: str = "/metrics"
    """Where the gateway serves its Prometheus metrics (``""``: nowhere)."""

    def __post_init__(self) -> None:
        if not self.routes:
            raise ValueError("at least one [[routes]] table is needed")
        seen: set[str] = set()
        for route in self.routes:
            if route.bare_prefix in seen:
                raise ValueError(f"prefix {route.prefix!r} is routed twice")
            seen.add(route.bare_prefix)
        if self.metrics_path and self.metrics_path.rstrip("/") in seen:
            raise ValueError(f"metrics_path {self.metrics_path!r} is also a route prefix")


def parse_gateway_config(values: dict[str, Any], *, origin: str = "gateway config") -> GatewayConfig:
    """Validate a decoded config; raise :class:`ConfigError` in one line."""
    try:
        return msgspec.convert(values, GatewayConfig, strict=True)
    except msgspec.ValidationError as error:
        message = str(error)
        reason, _, where = message.partition(" - at `$")
        where = where.rstrip("`").lstrip(".")
        location = f" at {where}" if where else ""
        raise ConfigError(f"{origin}{location}: {reason[0].lower()}{reason[1:]}") from None


def load_gateway_config(path: Path) -> GatewayConfig:
    """Read and validate a gateway config file."""
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"gateway config {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read gateway config {path}: {error}") from None
    return parse_gateway_config(values, origin=str(path))
