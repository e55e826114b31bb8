"""The gateway's configuration file: routes, what is recorded, the publisher.

A TOML file with one ``[[routes]]`` table per service::

    [[routes]]
    prefix = "/a"
    service = "Microservice A"
    upstream = "http://127.0.0.1:9001"
    timeout = 5.0

and optional ``[recording]``, ``[publisher]`` and ``[server]`` tables (see
:class:`Recording`, :class:`PublisherSettings` and :class:`ServerLimits`). Where events go (the
embedded queue or SQS) is not here: it is the same configuration as every
other command (``EVENTTRAIL_BACKEND`` etc., see :mod:`eventtrail.config`).
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any

import msgspec
from yarl import URL

from eventtrail.config import ConfigError

__all__ = [
    "DEFAULT_REDACTED_HEADERS",
    "DEFAULT_REDACTED_QUERY",
    "GatewayConfig",
    "PublisherSettings",
    "Recording",
    "Route",
    "ServerLimits",
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
        if not _is_plain_path(self.prefix):
            raise ValueError(
                f"prefix {self.prefix!r} must be a plain path: no '.' or '..' segment, no '//',"
                " no '%', '\\', '?', '#' or control character"
            )
        try:
            url = URL(self.upstream)
        except ValueError:
            url = URL()
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ValueError(f"upstream {self.upstream!r} must be an http:// or https:// URL")
        if url.raw_user is not None or url.raw_password is not None:
            raise ValueError(f"upstream {self.upstream!r} must not have a user or password")
        if url.raw_query_string or url.raw_fragment or "?" in self.upstream or "#" in self.upstream:
            raise ValueError(f"upstream {self.upstream!r} must not have a query or fragment")
        if not _is_plain_path(url.raw_path, allow_percent=True):
            raise ValueError(
                f"upstream {self.upstream!r} must have a plain path: no '.' or '..' segment, no '//'"
            )

    @property
    def bare_prefix(self) -> str:
        """The prefix without its trailing slash (``/`` stays ``""``)."""
        return self.prefix.rstrip("/")

    @property
    def upstream_url(self) -> URL:
        """The upstream as a parsed URL (its path is the route's base path)."""
        return URL(self.upstream)

    @property
    def base_path(self) -> str:
        """The upstream's path as written (percent-encoded), without its
        trailing slash: every path the route forwards starts with it."""
        return URL(self.upstream).raw_path.rstrip("/")


def _is_plain_path(path: str, *, allow_percent: bool = False) -> bool:
    """No dot segment, empty segment (but a trailing slash), or character
    that a normalising proxy or the upstream could read otherwise."""
    if any(char in path for char in "\\?#") or any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        return False
    if "%" in path and not allow_percent:
        return False
    segments = path.split("/")[1:]
    if segments and segments[-1] == "":
        segments.pop()
    return all(segment not in ("", ".", "..") for segment in segments)


class Recording(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What goes into the events. Secrets never do: headers and query
    parameters whose names look secret (see :mod:`eventtrail.gateway.redact`)
    and the defaults below are always redacted, ``redact_*`` adds to them."""

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
    record_query: list[str] | None = None
    """If set, an allow-list: only these query parameters are recorded with
    their values, every other one as ``[redacted]``. Names are compared as
    secrets are (case, ``-``/``_``, brackets and percent-encoding ignored);
    a name listed here is recorded even if it looks secret, unless
    ``redact_query`` names it too."""
    max_value_chars: Annotated[int, msgspec.Meta(ge=64, le=16_384)] = 1024
    """Longest recorded path, query string and header value; past it the
    value is cut and ends with ``…[truncated, N chars in all]``. It bounds
    an event's size whatever a client sends."""


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
    journal_interval: _Seconds = 0.005
    """Seconds between two writes of the buffered records to the journal (a
    file the kernel keeps when the gateway is killed): what a crash of the
    gateway can lose at most. Longer: fewer writes, more to lose."""
    send_timeout: _Seconds = 2.0
    """Seconds a queue call may take before the queue counts as down (the
    events then go to the spill file)."""
    queue_process: bool = True
    """Operate the queue from a child process, off the gateway's GIL (see
    :mod:`eventtrail.gateway.offload`). It is also what lets the gateway
    start, and spill, while its queue cannot be opened (locked, unreachable):
    with ``false`` the queue must open at start."""


class ServerLimits(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """What one client may hold of the gateway (``[server]``). The defaults
    sit beside nginx's: its ``large_client_header_buffers 4 8k`` (32 KiB of
    request head), ``client_header_timeout 60s`` and ``worker_connections``
    (512 compiled in, 1024 in its sample config)."""

    max_header_bytes: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 32 * 1024
    """Largest request head (request line and headers). Past it: 431 and the
    connection is closed; the rest of the head is read and thrown away."""
    header_timeout: _Seconds = 30.0
    """Seconds a client has to send a whole request head, counted from the
    connection's opening or the end of the previous response. Past it, the
    connection is closed (with a 408 if part of a head came)."""
    keep_alive_timeout: _Seconds = 5.0
    """Seconds an idle keep-alive connection stays open between requests."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Connections (idle ones included) and requests in flight, each at
    most. A request on a connection past it is answered 503 at once and the
    connection closed; idle connections leave by the two timeouts above."""


class GatewayConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """The whole file."""

    routes: list[Route]
    recording: Recording = msgspec.field(default_factory=Recording)
    publisher: PublisherSettings = msgspec.field(default_factory=PublisherSettings)
    server: ServerLimits = msgspec.field(default_factory=ServerLimits)
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
