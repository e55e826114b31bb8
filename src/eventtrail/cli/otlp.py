"""``otlp``: an OTLP/HTTP receiver, so that anything instrumented with
OpenTelemetry records its calls."""

from __future__ import annotations

import threading
from typing import Annotated

import typer

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    bind_port,
    err_console,
    settings_from,
)
from eventtrail.cli.render import plural
from eventtrail.config import open_queue

__all__ = ["otlp"]


def otlp(
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback requires a token.")
    ] = "127.0.0.1",
    port: Annotated[
        int,
        typer.Option(min=0, max=65535, help="Port to listen on (4318: OTLP/HTTP's own; 0: any free port)."),
    ] = 4318,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EVENTTRAIL_OTLP_TOKEN",
            help="Require this Bearer token on every export (exporters send it with"
            " OTEL_EXPORTER_OTLP_HEADERS='Authorization=Bearer <token>'). [env: EVENTTRAIL_OTLP_TOKEN]",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Receive OpenTelemetry traces over OTLP/HTTP (POST /v1/traces, protobuf or JSON, gzip) until Ctrl-C.

    CLIENT spans with HTTP attributes (and SERVER spans of a proxy that name their upstream) become
    calls: the trace id is the request id, the peer (peer.service, else server.address) the service,
    the resource's service.name the source; the status code, or the span's error, the outcome. Event
    ids derive from span ids: an exporter's retry stores nothing twice. While the queue is down,
    exports get 503 with Retry-After, and exporters retry.
    """
    try:
        from eventtrail.ingest.otlp import Export, build_otlp_app
        from eventtrail.web import check_binding, serve
        from eventtrail.web.app import TokenCheck
    except ImportError as error:
        raise UsageError(
            f"the receiver needs the otlp extra: pip install 'eventtrail[otlp]' ({error})"
        ) from None
    token = token or None
    try:
        check_binding(host, token)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = settings_from(backend, data_dir, config_file)
    listening = bind_port(host, port)
    totals = Export()
    lock = threading.Lock()

    def count(export: Export) -> None:
        with lock:
            totals.spans += export.spans
            totals.calls += export.calls
            totals.rejected += export.rejected

    with listening, open_queue(settings) as queue:
        app = build_otlp_app(queue, max_body_bytes=settings.max_body_bytes, on_export=count)
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"OTLP/HTTP receiver on http://{shown}:{listening.getsockname()[1]}/v1/traces (Ctrl-C to stop)",
            markup=False,
            highlight=False,
        )
        try:
            serve(TokenCheck(app, token, prefix="/v1/") if token else app, listening)
        finally:
            # Also on Ctrl-C, which the server re-raises once it has stopped.
            err_console.print(
                f"{plural(totals.spans, 'span')} received: {plural(totals.calls, 'call')} recorded,"
                f" {totals.rejected:,} rejected",
                highlight=False,
            )
