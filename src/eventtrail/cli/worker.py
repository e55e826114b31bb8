"""``worker``, ``status`` and ``purge``: running the consumer and keeping the
store tidy."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer

from eventtrail.cli.common import (
    Backend,
    ConfigFile,
    DataDir,
    MaxReceives,
    UsageError,
    console,
    err_console,
    fail,
    settings_from,
)
from eventtrail.cli.render import plural
from eventtrail.config import open_queue, open_store, start_follower
from eventtrail.readmodels import read_models_of
from eventtrail.store import StoreError
from eventtrail.times import moment_before, parse_duration
from eventtrail.worker import Worker, open_patiently

if TYPE_CHECKING:
    from eventtrail.embedded.follower import FollowerProcess

__all__ = ["purge", "status", "worker"]


def _stop_on_signals(stop: threading.Event) -> None:
    def handle(signum: int, frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now
        logging.getLogger("eventtrail.worker").info(
            "%s received: finishing the current batch", signal.Signals(signum).name
        )
        stop.set()

    signal.signal(signal.SIGINT, handle)
    signal.signal(signal.SIGTERM, handle)


@contextmanager
def _stopped_at_exit(follower: FollowerProcess | None) -> Iterator[None]:
    """Stop ``follower`` when the worker stops, after it folded what was stored."""
    try:
        yield
    finally:
        if follower is not None and not follower.stop():
            err_console.print("the read models are behind the store: the next worker's follower catches up")


def worker(
    drain: Annotated[
        bool, typer.Option("--drain", help="Stop (exit 0) once the queue has nothing left to process.")
    ] = False,
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=1,
            max=10_000,
            help="Messages per batch. [env: EVENTTRAIL_BATCH_SIZE; default: 1000]",
            show_default=False,
        ),
    ] = None,
    visibility_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.1, help="Seconds a batch stays hidden from other workers. [default: 30]", show_default=False
        ),
    ] = None,
    max_receives: MaxReceives = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Log only problems.")] = False,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Consume the queue: store each batch, dead-letter what can never be stored.

    Stops cleanly on Ctrl-C or SIGTERM after finishing its current batch; a
    second signal stops at once (unfinished messages come back after their
    visibility timeout, nothing is lost).

    A queue or store that is locked, full or unreachable is waited for with
    backoff (logged once when the wait starts and once when it ends); a store
    that can never work (a corrupt file) stops it with exit code 1, every
    message left in the queue.
    """
    settings = settings_from(
        backend,
        data_dir,
        config_file,
        batch_size=batch_size,
        visibility_timeout=visibility_timeout,
        max_receives=max_receives,
    )
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    _stop_on_signals(stop)
    queue = open_patiently(lambda: open_queue(settings), stop)
    # The read models are folded beside the worker (by a follower process on
    # the embedded backend), so that storing a batch never waits for them.
    store = None
    if queue is not None:
        store = open_patiently(lambda: open_store(settings, project=False), stop)
    if queue is None or store is None:
        if queue is not None:
            queue.close()
        err_console.print("stopped before the queue and the store could be opened")
        return
    follower = start_follower(settings)
    with queue, store, _stopped_at_exit(follower):
        run = Worker.configured(queue, store, settings)
        logging.getLogger("eventtrail.worker").info(
            "consuming %s (%s backend)%s",
            settings.queue_name if settings.backend == "aws" else settings.queue_path,
            settings.backend,
            ", until drained" if drain else "",
        )
        try:
            total = run.run(drain=drain, stop=stop)
        except StoreError as error:
            # Waiting cannot help a store that can never work: say so, and
            # leave every message in the queue for when it is repaired.
            fail(f"the worker stopped; every message not yet stored stays in the queue: {error}")
    err_console.print(
        f"{total.received} received: {total.stored} stored, {total.retried} to retry,"
        f" {total.dead_lettered} dead-lettered"
    )


def status(backend: Backend = None, data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Show how many messages wait, are in flight, or are dead letters, and
    whether the read models are up to date."""
    settings = settings_from(backend, data_dir, config_file)
    with open_queue(settings, read_only=True) as queue:
        stats = queue.stats()
    console.print(f"backend:     {settings.backend}")
    console.print(f"visible:     {stats.visible}")
    console.print(f"in flight:   {stats.in_flight}")
    console.print(f"dead letters: {stats.dead}")
    with open_store(settings, read_only=True) as store:
        models = read_models_of(store)
        try:
            current = models.is_current()
            # DynamoDB's read models are written as the events are stored: never behind.
            behind = models.lag() if current else 0
        except StoreError as error:
            console.print(f"read models: cannot be read ({error})", markup=False)
            return
        if not current:
            state = f"not built for this version: {models.rebuilt_by}"
        elif behind:
            state = f"{plural(behind, 'event')} behind the store (a running worker folds them)"
        else:
            state = "up to date"
        console.print(f"read models: {state}")


def purge(
    older_than: Annotated[
        str | None,
        typer.Option(
            help="Delete events older than this (30d, 12h...). [default: the retention_days setting]",
            show_default=False,
        ),
    ] = None,
    backend: Backend = None,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
) -> None:
    """Delete events past the retention period (run it periodically, e.g. from cron).

    On AWS there is nothing to run: the DynamoDB table's TTL deletes events
    retention_days after their time."""
    settings = settings_from(backend, data_dir, config_file)
    try:
        age = parse_duration(older_than) if older_than is not None else None
    except ValueError as error:
        raise UsageError(f"--older-than: {error}") from None
    if settings.backend == "aws":
        err_console.print(_aws_retention(settings.retention_days))
        return
    if age is None:
        if settings.retention_days is None:
            raise UsageError("give --older-than or set EVENTTRAIL_RETENTION_DAYS")
        age = timedelta(days=settings.retention_days)
    cutoff = moment_before(datetime.now(UTC), age)
    with open_store(settings) as store:
        removed = store.purge(cutoff)
    err_console.print(f"purged {plural(removed, 'event')} older than {cutoff.isoformat(timespec='seconds')}")


def _aws_retention(retention_days: float | None) -> str:
    """What ``purge`` says on AWS, where the table's TTL deletes old events."""
    expiry = (
        "retention_days is not set, so events stored with these settings never expire"
        if retention_days is None
        else f"retention_days = {retention_days:g}: events expire {retention_days:g} days after their time"
    )
    return (
        "nothing purged: on AWS, DynamoDB deletes old events itself through the table's TTL"
        f" (ExpiresAt, set from the retention_days setting when an event is stored); {expiry}"
    )
