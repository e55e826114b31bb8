"""Running the real ``eventtrail`` command in a child process."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.config import load_settings, open_queue, open_store
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import Event
from eventtrail.store import AppendStatus

T = TypeVar("T")


def eventtrail_env(data_dir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EVENTTRAIL_")}
    env.update({"EVENTTRAIL_DATA_DIR": str(data_dir), "COLUMNS": "200", "NO_COLOR": "1"})
    env.update(extra or {})
    return env


def run(
    data_dir: Path,
    *args: str,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "eventtrail", *args],
        input=input,
        capture_output=True,
        text=True,
        env=eventtrail_env(data_dir, env),
        cwd=cwd or data_dir,
        timeout=timeout,
    )


def spawn(data_dir: Path, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "eventtrail", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=eventtrail_env(data_dir, env),
        cwd=data_dir,
    )


def seed(
    data_dir: Path, events: Sequence[Event] = (), dead_letters: Sequence[tuple[str, str]] = ()
) -> list[str]:
    """Store ``events`` and make a dead letter of each ``(body, reason)`` in
    the real SQLite files of ``data_dir``; return the dead letters' ids."""
    settings = load_settings({"data_dir": str(data_dir)})
    with open_store(settings) as store:
        results = store.append(list(events))
    assert all(result.status is AppendStatus.STORED for result in results), results
    with open_queue(settings) as queue:
        ids = queue.send([body for body, _ in dead_letters])
        received = queue.receive(len(ids) or 1, visibility_timeout=60)
        reasons = dict(zip(ids, (reason for _, reason in dead_letters), strict=True))
        for message in received:
            queue.dead_letter(message, reasons[message.id])
    assert len(received) == len(ids)
    return ids


def stored_calls(data_dir: Path, describe: Callable[[Event], T]) -> dict[str, list[tuple[str, T]]]:
    """Each stored request's call events in ``data_dir``: (type, ``describe(event)``)."""
    flows: dict[str, list[tuple[str, T]]] = {}
    with SQLiteStore(data_dir / "events.db") as store:
        for kind in (REQUEST, RESPONSE, ERROR):
            cursor = None
            while True:
                page = store.events(type=kind, limit=1000, cursor=cursor)
                for event in page.events:
                    flows.setdefault(event.request_id, []).append((event.type, describe(event)))
                if page.cursor is None:
                    break
                cursor = page.cursor
    return flows
