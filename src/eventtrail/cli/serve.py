"""``serve``: the HTTP API and the web UI."""

from __future__ import annotations

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
from eventtrail.config import open_queue, open_store

__all__ = ["serve"]


def serve(
    host: Annotated[
        str, typer.Option(help="Address to bind; anything but loopback requires a token.")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=0, max=65535, help="Port to listen on (0: any free port).")] = 8765,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EVENTTRAIL_API_TOKEN",
            help="Require this Bearer token on every API request: at least 16 visible ASCII characters."
            " [env: EVENTTRAIL_API_TOKEN]",
            show_default=False,
            show_envvar=False,
        ),
    ] = None,
    allowed_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allowed-host",
            help="A Host name the server answers to (repeatable; *.example.com patterns allowed)."
            " Default: loopback names, plus the bound address; any name when bound to 0.0.0.0 or ::.",
            show_default=False,
        ),
    ] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Serve the JSON API (described at /openapi.json) and the web UI until Ctrl-C."""
    try:
        from eventtrail.web import build_app, check_binding
        from eventtrail.web import serve as run
        from eventtrail.web.server import trusted_hosts
    except ImportError as error:
        raise UsageError(f"the web UI needs the web extra: pip install 'eventtrail[web]' ({error})") from None
    token = token or None  # an empty EVENTTRAIL_API_TOKEN means none
    try:
        check_binding(host, token)
    except ValueError as error:
        raise UsageError(str(error)) from None
    settings = settings_from(backend, data_dir, config_file)
    listening = bind_port(host, port)
    with listening, open_store(settings) as store, open_queue(settings) as queue:
        shown = f"[{host}]" if ":" in host else host
        bound = listening.getsockname()[1]
        # The token is a secret: it never goes to a terminal or a log.
        hint = " (the UI asks for the API token)" if token else ""
        err_console.print(
            f"eventtrail UI and API on http://{shown}:{bound}/{hint} (Ctrl-C to stop)", markup=False
        )
        app = build_app(store, queue, token=token, allowed_hosts=trusted_hosts(host, allowed_host or ()))
        run(app, listening)
