"""A real SQLite store and queue holding demo traffic, served over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from eventtrail.demo import demo_flows
from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event
from eventtrail.web import BackgroundServer, build_app

#: Requests of demo traffic, over the last ~10 minutes.
DEMO_REQUESTS = 1500
TOKEN = "correct-horse-battery-staple"


@dataclass(frozen=True)
class Backend:
    data_dir: Path
    store: SQLiteStore
    queue: SQLiteQueue
    events: list[Event]
    dead_letter_id: str


@pytest.fixture(scope="session")
def backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    data_dir = tmp_path_factory.mktemp("web-data")
    spacing_ms = 400.0
    start = datetime.now(UTC) - timedelta(milliseconds=spacing_ms * DEMO_REQUESTS)
    events = [
        event
        for flow in demo_flows(DEMO_REQUESTS, start=start, seed=6, spacing_ms=spacing_ms)
        for event in flow
    ]
    with SQLiteStore(data_dir / "events.db") as store, SQLiteQueue(data_dir / "queue.db") as queue:
        store.append(events)
        (message_id,) = queue.send(['{"not": "an event"}'])
        (message,) = queue.receive(1, visibility_timeout=30)
        queue.dead_letter(message, "field `id`: required field is missing")
        yield Backend(data_dir, store, queue, events, message_id)


@pytest.fixture(scope="session")
def server(backend: Backend) -> Iterator[BackgroundServer]:
    with BackgroundServer(build_app(backend.store, backend.queue, refresh_seconds=1.0)) as running:
        yield running


@pytest.fixture(scope="session")
def token_server(backend: Backend) -> Iterator[BackgroundServer]:
    with BackgroundServer(build_app(backend.store, backend.queue, token=TOKEN)) as running:
        yield running
