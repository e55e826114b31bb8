"""``ingest nginx|haproxy``: the calls recorded in an existing gateway's
access log become events."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from eventtrail.cli.common import Backend, ConfigFile, DataDir, UsageError, err_console, settings_from
from eventtrail.cli.render import plural, shown
from eventtrail.cli.worker import _stop_on_signals
from eventtrail.config import Settings, open_queue
from eventtrail.ingest import FORMATS, Ingestor, Line
from eventtrail.queue import QueueError
from eventtrail.retry import Backoff

__all__ = ["app"]

app = typer.Typer(
    help="Record the calls of a gateway you already run, from its access log (see examples/).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

#: Bad lines shown one by one; past that they are only counted.
SHOWN_BAD_LINES = 20

log = logging.getLogger("eventtrail.ingest")

Files = Annotated[
    list[Path] | None,
    typer.Argument(help="Access log files (JSON lines).", show_default=False),
]
Follow = Annotated[
    bool,
    typer.Option(
        "--follow",
        "-f",
        help="Keep reading as the files grow, across rotation (rename or copytruncate), until Ctrl-C or"
        " SIGTERM; a restart resumes where the last run stopped (positions are kept in the data folder).",
    ),
]
FromEnd = Annotated[
    bool,
    typer.Option("--from-end", help="With --follow and no saved position: skip what the files hold now."),
]
Source = Annotated[
    str | None,
    typer.Option(help="The events' source. [default: the format's name]", show_default=False),
]


class _BadLines:
    """Reports bad lines on stderr (the first ones whole, then a count)."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, line: Line, reason: str) -> None:
        self.count += 1
        if self.count <= SHOWN_BAD_LINES:
            err_console.print(shown(f"warning: {line.path}:{line.number}: {reason}"), soft_wrap=True)
        elif self.count == SHOWN_BAD_LINES + 1:
            err_console.print("warning: more bad lines; only counting them from now on")


def _run(
    format_name: str,
    files: list[Path],
    *,
    follow: bool,
    from_end: bool,
    source: str | None,
    settings: Settings,
    syslog: Path | None = None,
) -> None:
    for path in files:
        if not path.is_file():
            what = "a folder" if path.is_dir() else "not found"
            raise UsageError(f"{path}: {what} (give access log files)")
    if not files and syslog is None:
        raise UsageError("give at least one access log file")
    if from_end and not follow:
        raise UsageError("--from-end goes with --follow")
    stop = threading.Event()
    bad = _BadLines()
    with open_queue(settings) as queue:
        ingestor = Ingestor(
            FORMATS[format_name],
            queue,
            source=source,
            max_body_bytes=settings.max_body_bytes,
            on_bad=bad,
            backoff=Backoff(attempts=None, base=0.5, cap=15.0, sleep=stop.wait) if follow else None,
        )
        try:
            if syslog is not None:
                _stop_on_signals(stop)
                err_console.print(shown(f"listening for {format_name} logs on {syslog} (Ctrl-C to stop)"))
                _listen(ingestor, syslog, stop)
            elif follow:
                _stop_on_signals(stop)
                err_console.print(shown(f"following {', '.join(map(str, files))} (Ctrl-C to stop)"))
                ingestor.follow(files, Path(settings.data_dir) / "ingest", stop, from_end=from_end)
            else:
                _read_all(ingestor, files)
        except QueueError as error:
            counts = ingestor.counts
            raise QueueError(
                f"{error}; {counts.lines:,} lines were read and their events sent before it"
                " (ingesting the same files again sends nothing twice)"
            ) from None
    counts = ingestor.counts
    err_console.print(
        f"{plural(counts.lines, 'line')}: {plural(counts.requests, 'proxied request')},"
        f" {plural(counts.events, 'event')} queued, {counts.not_proxied:,} not proxied, {counts.bad:,} bad",
        highlight=False,
    )


def _read_all(ingestor: Ingestor, files: list[Path]) -> None:
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    ) as progress:
        for path in files:
            task = progress.add_task(str(path), total=path.stat().st_size)

            def advance(offset: int, task: TaskID = task) -> None:
                progress.update(task, completed=offset)

            ingestor.read(path, on_progress=advance)


def _listen(ingestor: Ingestor, path: Path, stop: threading.Event) -> None:
    """Take syslog datagrams on a Unix socket (HAProxy's ``log /path/to/socket``)."""
    if path.exists():
        if not path.is_socket():
            raise UsageError(f"{path} exists and is not a socket")
        path.unlink()
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(str(path))
    except OSError as error:
        raise UsageError(f"cannot listen on {path}: {error.strerror}") from None
    receiver.settimeout(0.2)
    number = 0
    try:
        while not stop.is_set():
            lines: list[Line] = []
            while len(lines) < 1000:
                try:
                    datagram = receiver.recv(65536)
                except TimeoutError:
                    break
                number += 1
                try:
                    text = datagram.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    lines.append(Line(None, number, str(path), "not UTF-8"))
                    continue
                lines.append(Line(text, number, str(path)))
            if lines:
                ingestor.send(ingestor.bodies(lines))
    finally:
        receiver.close()
        path.unlink(missing_ok=True)


@app.command()
def nginx(
    files: Files = None,
    follow: Follow = False,
    from_end: FromEnd = False,
    source: Source = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Ingest nginx JSON access logs (log_format ... escape=json; see examples/nginx-eventtrail.conf).

    Each proxied request becomes a MICROSERVICE_REQUEST and a MICROSERVICE_RESPONSE (or a
    MICROSERVICE_ERROR: a refused or reset upstream's 502, a 504 timeout) per upstream tried, under
    the line's request_id. Event ids derive from the line: reading a file twice stores nothing twice.
    Bad lines are reported with file and line number and counted; they never stop the rest.
    """
    settings = settings_from(backend, data_dir, config_file)
    _run("nginx", files or [], follow=follow, from_end=from_end, source=source, settings=settings)


@app.command()
def haproxy(
    files: Files = None,
    follow: Follow = False,
    from_end: FromEnd = False,
    syslog: Annotated[
        Path | None,
        typer.Option(
            help="Listen on this Unix datagram socket for HAProxy's syslog messages (log /path format raw).",
            show_default=False,
        ),
    ] = None,
    source: Source = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Ingest HAProxy JSON log lines (see examples/haproxy-eventtrail.cfg), from files or a syslog socket.

    Each request passed to a server becomes a MICROSERVICE_REQUEST and a MICROSERVICE_RESPONSE, or a
    MICROSERVICE_ERROR from the termination state (server timeout, refused connection, reset). The
    unique-id is the request id; the backend names the service.
    """
    if syslog is not None and (files or follow):
        raise UsageError("--syslog reads a socket: give no files and no --follow with it")
    settings = settings_from(backend, data_dir, config_file)
    _run(
        "haproxy",
        files or [],
        follow=follow,
        from_end=from_end,
        source=source,
        settings=settings,
        syslog=syslog,
    )
