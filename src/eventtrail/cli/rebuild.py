"""``rebuild``: drop the read models and make them again from the stored events."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    UsageError,
    err_console,
    parsed_option,
    settings_from,
)
from eventtrail.config import open_store
from eventtrail.readmodels import read_models_of
from eventtrail.times import parse_moment

__all__ = ["rebuild"]


def rebuild(
    since: Annotated[
        str | None,
        typer.Option(
            help="Rebuild only from this moment on (a timestamp or a time ago), keeping what is before;"
            " rounded down to 00:00, 06:00, 12:00 or 18:00 UTC (the rollups' largest buckets)."
            " [default: everything]",
            show_default=False,
        ),
    ] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Drop every read model (service rollups, request summaries) and rebuild
    it by replaying the stored events. Needed after an upgrade that changes
    their shape; safe at any time: writers wait for it."""
    start = parsed_option("--since", parse_moment, since) if since else None
    settings = settings_from(backend, data_dir, config_file)
    with open_store(settings) as store:
        models = read_models_of(store)
        if start is not None and not models.is_current():
            raise UsageError("--since: the read models are outdated; run a full rebuild (without --since)")
        began = time.monotonic()
        with Progress(
            TextColumn("replaying events"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            console=err_console,
            transient=True,
        ) as progress:
            task = progress.add_task("replay", total=None)

            def advance(done: int, total: int | None) -> None:
                progress.update(task, completed=done, total=total)

            replayed = models.rebuild(start, advance)
        elapsed = time.monotonic() - began
    cut = models.cut(start) if start else None
    scope = f"from {cut[:10]} {cut[11:16]} UTC on" if cut else "all of them"
    rate = f", {replayed / elapsed:,.0f} events/s" if elapsed > 0 and replayed else ""
    err_console.print(
        f"rebuilt the read models ({scope}): {replayed:,} events replayed in {elapsed:.1f} s{rate}",
        markup=False,
    )
