"""Real faults, shared by the fault tests.

Fixtures and helpers, each usable alone:

- ``tmpfs``: mount a tiny tmpfs (``tmpfs(size="2m")`` returns its folder),
  unmounted at the end of the test; skips the test if mounting is not
  permitted.
- :class:`LockHolder`: a second SQLite connection holding a database's write
  lock (``BEGIN IMMEDIATE``) until released, as another process would.
- :func:`eventtrail_process` / :func:`stop_process` / :func:`child_pids`:
  ``eventtrail`` commands as child processes with their own data folder, and
  their processes.
- :class:`CallLoad`: threads calling a URL with unique ``X-Request-Id``
  headers, remembering which calls were answered 2xx and when.
- :func:`drain_into_store`: run ``eventtrail worker --drain`` on a data
  folder and return the request ids stored.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.gateway.upstreams import echo_server
from tests.servers import wait_for_port

EVENTTRAIL = [sys.executable, "-m", "eventtrail"]

TmpfsFactory = Callable[..., Path]


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[TmpfsFactory]:
    """``tmpfs(size="2m", name="small")``: a fresh tmpfs of ``size`` mounted
    under the test's folder; every one is unmounted when the test ends."""
    mounted: list[Path] = []

    def mount(size: str = "2m", name: str = "tmpfs") -> Path:
        where = tmp_path / name
        where.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(where)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            pytest.skip(f"mounting a tmpfs is not permitted here: {result.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in reversed(mounted):
        subprocess.run(["umount", "-l", str(where)], capture_output=True, timeout=30)


def fill(folder: Path, *, leave_bytes: int = 0) -> Path:
    """Fill the filesystem of ``folder`` with one file until at most
    ``leave_bytes`` are free; return the file (delete it to free the space)."""
    filler = folder / "filler"
    block = b"\0" * 65536
    with filler.open("wb") as file:
        while shutil.disk_usage(folder).free > leave_bytes:
            try:
                file.write(block[: max(4096, min(len(block), shutil.disk_usage(folder).free - leave_bytes))])
                file.flush()
            except OSError:
                break
    return filler


class LockHolder:
    """Holds the write lock of the SQLite file at ``path`` from a second
    connection (``BEGIN IMMEDIATE``) between :meth:`hold` and :meth:`release`."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30)
        self.held = False

    def hold(self) -> LockHolder:
        self._db.execute("BEGIN IMMEDIATE")
        self.held = True
        return self

    def release(self) -> None:
        if self.held:
            self._db.execute("ROLLBACK")
            self.held = False

    def close(self) -> None:
        self.release()
        self._db.close()

    def __enter__(self) -> LockHolder:
        return self.hold()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def write_gateway_config(path: Path, upstream_url: str, publisher: str = "") -> Path:
    """A gateway config routing ``/echo`` to ``upstream_url``, plus a ``[publisher]`` table body."""
    text = f'[[routes]]\nprefix = "/echo"\nservice = "Echo"\nupstream = "{upstream_url}"\ntimeout = 5.0\n'
    if publisher:
        text += f"\n[publisher]\n{publisher}\n"
    path.write_text(text)
    return path


@pytest.fixture(scope="session")
def echo_upstream() -> Iterator[str]:
    """The URL of an echo upstream served for the whole session."""
    with echo_server() as server:
        yield server.url


@dataclass
class RunningProcess:
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def eventtrail_process(
    arguments: list[str],
    data_dir: Path,
    *,
    port: int | None = None,
    log_name: str = "eventtrail.log",
    environment: dict[str, str] | None = None,
    own_group: bool = False,
) -> Iterator[RunningProcess]:
    """``eventtrail ARGUMENTS`` on the embedded backend in ``data_dir`` (plus
    ``environment``), its stderr in a log file beside it; waits for ``port``
    to accept connections. Killed at the end if still running. ``own_group``:
    in a process group of its own (as a service manager runs it), which
    signals to the group reach, children included."""
    env = {
        **os.environ,
        "EVENTTRAIL_DATA_DIR": str(data_dir),
        "EVENTTRAIL_BACKEND": "local",
        **(environment or {}),
    }
    env.pop("EVENTTRAIL_CONFIG", None)
    log_path = data_dir.parent / log_name
    with log_path.open("ab") as log_file:
        process = subprocess.Popen(
            [*EVENTTRAIL, *arguments],
            env=env,
            stderr=log_file,
            stdout=log_file,
            cwd=data_dir.parent,
            start_new_session=own_group,
        )
    running = RunningProcess(process, log_path)
    try:
        if port is not None:
            wait_for_port(port, timeout=30)
        yield running
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; an AssertionError naming ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not in {timeout:.0f}s: {what}")
        time.sleep(0.05)


def stop_process(running: RunningProcess, signum: int = signal.SIGTERM, timeout: float = 60) -> str:
    """Signal the process, wait for it, check that it exited 0; return its log."""
    running.process.send_signal(signum)
    try:
        running.process.wait(timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"still running {timeout:.0f}s after signal {signum}:\n{running.log}") from None
    assert running.process.returncode == 0, running.log
    return running.log


def child_pids(pid: int) -> list[int]:
    """The direct children of process ``pid``."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        children += [int(child) for child in (task / "children").read_text().split()]
    return children


@dataclass
class CallLoad:
    """``threads`` clients calling ``url`` (plus ``/<n>``) until stopped.

    ``answered`` maps the request id of every call answered 2xx to the
    monotonic time the answer was complete; ``failed`` counts the others
    (refused connections while the gateway is down included).
    """

    url: str
    threads: int = 4
    answered: dict[str, float] = field(default_factory=dict)
    failed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> CallLoad:
        for index in range(self.threads):
            thread = threading.Thread(target=self._call, args=(index,), daemon=True)
            thread.start()
            self._workers.append(thread)
        return self

    def _call(self, index: int) -> None:
        run = uuid.uuid4().hex[:8]
        with httpx.Client(timeout=10) as client:
            for number in range(10_000_000):
                if self._stop.is_set():
                    return
                request_id = f"load-{run}-{index}-{number}"
                try:
                    answer = client.get(f"{self.url}/{number}", headers={"X-Request-Id": request_id})
                    answer.read()
                except httpx.HTTPError:
                    with self._lock:
                        self.failed += 1
                    time.sleep(0.01)
                    continue
                done = time.monotonic()
                with self._lock:
                    if 200 <= answer.status_code < 300:
                        self.answered[request_id] = done
                    else:
                        self.failed += 1

    def stop(self) -> None:
        self._stop.set()
        for thread in self._workers:
            thread.join(30)

    def __enter__(self) -> CallLoad:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def drain_into_store(data_dir: Path, timeout: float = 120) -> dict[str, int]:
    """Run ``eventtrail worker --drain`` on ``data_dir``; return, per request
    id stored, its number of events."""
    env = {**os.environ, "EVENTTRAIL_DATA_DIR": str(data_dir), "EVENTTRAIL_BACKEND": "local"}
    env.pop("EVENTTRAIL_CONFIG", None)
    result = subprocess.run(
        [*EVENTTRAIL, "worker", "--drain"], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return stored_request_ids(data_dir)


def stored_request_ids(data_dir: Path) -> dict[str, int]:
    """Per request id in the store of ``data_dir``, its number of events."""
    with contextlib.closing(sqlite3.connect(data_dir / "events.db")) as db:
        rows = db.execute("SELECT request_id, count(*) FROM events GROUP BY request_id").fetchall()
    return {str(request_id): int(count) for request_id, count in rows}
