"""``eventtrail gateway`` and ``eventtrail up`` as a user runs them: child
processes on free ports, real HTTP, real files; and the large-body proof that
the gateway streams (its peak memory stays far below the body's size)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from eventtrail.config import load_settings, open_queue
from eventtrail.embedded.store import SQLiteStore
from eventtrail.event import encode_event
from tests.contract.store_contract import make_event
from tests.servers import free_port, wait_for_port

BIG = 100 * 1024 * 1024
EVENTTRAIL = [sys.executable, "-m", "eventtrail"]


def _write_config(path: Path, upstream_url: str) -> Path:
    path.write_text(
        f'[[routes]]\nprefix = "/echo"\nservice = "Echo"\nupstream = "{upstream_url}"\ntimeout = 5.0\n'
    )
    return path


@contextmanager
def _running(
    command: list[str], port: int, data_dir: Path, *, env: dict[str, str] | None = None
) -> Iterator[subprocess.Popen[str]]:
    env = {**os.environ, "EVENTTRAIL_DATA_DIR": str(data_dir), "EVENTTRAIL_BACKEND": "local", **(env or {})}
    env.pop("EVENTTRAIL_CONFIG", None)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True, cwd=data_dir.parent)
    try:
        wait_for_port(port)
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _stop(process: subprocess.Popen[str], signum: int = signal.SIGINT) -> str:
    process.send_signal(signum)
    _, errors = process.communicate(timeout=30)
    assert process.returncode == 0, errors
    return errors


def _peak_rss(pid: int) -> int:
    """The process's peak resident memory in bytes (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def _chunks(total: int, size: int = 1024 * 1024) -> Iterator[bytes]:
    block = b"u" * size
    for offset in range(0, total, size):
        yield block[: min(size, total - offset)]


def test_a_100_mb_upload_and_download_stream_through_in_bounded_memory(
    tmp_path: Path, upstream_url: str
) -> None:
    port = free_port()
    config = _write_config(tmp_path / "gateway.toml", upstream_url)
    with _running(
        [*EVENTTRAIL, "gateway", "--config", str(config), "--port", str(port)], port, tmp_path / "d"
    ) as gw:
        url = f"http://127.0.0.1:{port}/echo"
        assert httpx.get(f"{url}/warm-up").status_code == 200
        baseline = _peak_rss(gw.pid)
        uploaded = httpx.post(f"{url}/upload", content=_chunks(BIG), timeout=60)
        assert uploaded.json()["bodyBytes"] == BIG
        received = 0
        with httpx.stream("GET", f"{url}/download/{BIG}", timeout=60) as download:
            for chunk in download.iter_raw():
                received += len(chunk)
        assert received == BIG
        grown = _peak_rss(gw.pid) - baseline
        print(f"gateway peak memory grew by {grown / 2**20:.1f} MB for {BIG // 2**20} MB each way")
        # Holding either body would take 100 MB; streaming stays within buffers.
        assert grown < 20 * 1024 * 1024, f"peak memory grew by {grown / 2**20:.1f} MB"
        errors = _stop(gw)
    assert "events: 6 sent" in errors


def test_up_runs_the_gateway_and_a_worker_into_the_store(tmp_path: Path, upstream_url: str) -> None:
    port = free_port()
    config = _write_config(tmp_path / "gateway.toml", upstream_url)
    data_dir = tmp_path / "data"
    with _running([*EVENTTRAIL, "up", "--config", str(config), "--port", str(port)], port, data_dir) as up:
        answer = httpx.get(f"http://127.0.0.1:{port}/echo/orders/1", headers={"X-Request-Id": "up-1"})
        assert answer.status_code == 200
        with SQLiteStore(data_dir / "events.db") as store:
            deadline = time.monotonic() + 10
            while len(store.flow("up-1")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            # Stored by the worker while the gateway still runs.
            assert [event.type for event in store.flow("up-1")] == [
                "MICROSERVICE_REQUEST",
                "MICROSERVICE_RESPONSE",
            ]
        last = httpx.get(f"http://127.0.0.1:{port}/echo/orders/2", headers={"X-Request-Id": "up-2"})
        assert last.status_code == 200
        _stop(up, signal.SIGTERM)
    # Shutdown (on SIGTERM here) flushed the last events and the worker drained them before exiting.
    with SQLiteStore(data_dir / "events.db") as store:
        assert len(store.flow("up-2")) == 2


def test_a_bad_config_is_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "gateway.toml"
    config.write_text('[[routes]]\nprefix = "a"\nservice = "A"\nupstream = "http://127.0.0.1:1"\n')
    result = subprocess.run(
        [*EVENTTRAIL, "gateway", "--config", str(config)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {config} at routes[0]: prefix 'a' must start with /"
    ]
    missing = subprocess.run(
        [*EVENTTRAIL, "up", "--config", str(tmp_path / "nope.toml")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert missing.returncode == 2
    assert "nope.toml does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_up_stores_the_valid_messages_among_every_poison_and_its_worker_keeps_running(
    tmp_path: Path, upstream_url: str
) -> None:
    from eventtrail.embedded.queue import SQLiteQueue
    from eventtrail.event import encode_event
    from tests.contract.store_contract import make_event
    from tests.test_consumer import POISON, POISON_MAX_BODY_BYTES

    port = free_port()
    config = _write_config(tmp_path / "gateway.toml", upstream_url)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    # The poison the SQLite queue can hold, each between two valid events.
    poison = [item for item in POISON if item.sqlite]
    good = [make_event() for _ in range(len(poison) + 1)]
    bodies = [encode_event(good[0]).decode()]
    for item, event in zip(poison, good[1:], strict=True):
        bodies += [item.body, encode_event(event).decode()]
    env = {"EVENTTRAIL_MAX_BODY_BYTES": str(POISON_MAX_BODY_BYTES)}
    command = [*EVENTTRAIL, "up", "--config", str(config), "--port", str(port)]
    with _running(command, port, data_dir, env=env) as up:
        with SQLiteQueue(data_dir / "queue.db") as queue:
            queue.send(bodies)
            deadline = time.monotonic() + 30
            while queue.stats().dead < len(poison) and time.monotonic() < deadline:
                time.sleep(0.1)
            letters = queue.dead_letters(len(poison) + 10)
        assert len(letters) == len(poison)
        for item, letter in zip(poison, letters, strict=True):
            assert item.reason in letter.reason, (item.name, letter.reason)
        # The worker child is still there: a call made after the poison is stored.
        answer = httpx.get(f"http://127.0.0.1:{port}/echo/after", headers={"X-Request-Id": "after-poison"})
        assert answer.status_code == 200
        with SQLiteStore(data_dir / "events.db") as store:
            while len(store.flow("after-poison")) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(store.flow("after-poison")) == 2
            assert all(store.flow(event.request_id) for event in good)
        errors = _stop(up, signal.SIGTERM)
    assert "restarted" not in errors and "Traceback" not in errors


def test_a_taken_port_is_one_line_before_anything_listens(tmp_path: Path, upstream_url: str) -> None:
    import socket

    config = _write_config(tmp_path / "gateway.toml", upstream_url)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    env = {**os.environ, "EVENTTRAIL_DATA_DIR": str(data_dir)}
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        for command in ("gateway", "up"):
            for workers in (["--workers", "2"] if command == "gateway" else []), []:
                result = subprocess.run(
                    [*EVENTTRAIL, command, "--config", str(config), "--port", str(port), *workers],
                    capture_output=True,
                    text=True,
                    timeout=60,
                    env=env,
                )
                assert result.returncode == 2, (command, workers, result.stderr)
                lines = [line for line in result.stderr.splitlines() if not line.startswith("events stored")]
                assert lines == [
                    f"error: port {port} on 127.0.0.1 is taken (another program listens there)"
                    " (--port 0 picks a free one)"
                ], (command, workers)


def test_up_stopped_while_its_worker_starts_still_stores_what_is_queued(tmp_path: Path) -> None:
    """``up``'s stop is SIGTERM to its worker, which then drains: sent while
    the worker is still importing, it waits for the worker's handler instead
    of killing it with the queue undrained. In a fresh interpreter, as ``up``
    runs: its worker is the first process it starts."""
    settings = load_settings({"backend": "local", "data_dir": str(tmp_path)}, environ={})
    events = [make_event() for _ in range(3)]
    with open_queue(settings) as queue:
        queue.send([encode_event(event).decode() for event in events])
    script = (
        "from eventtrail.cli.gateway import _WorkerSupervisor\n"
        "from eventtrail.config import load_settings\n"
        "if __name__ == '__main__':\n"
        f"    settings = load_settings({{'backend': 'local', 'data_dir': {str(tmp_path)!r}}}, environ={{}})\n"
        "    supervisor = _WorkerSupervisor(settings)\n"
        "    supervisor.start()\n"
        "    supervisor.stop()  # at once: the worker has not imported eventtrail yet\n"
        "    print(supervisor.restarts)\n"
    )
    path = tmp_path / "stop_at_once.py"
    path.write_text(script)
    done = subprocess.run(
        [sys.executable, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "0"
    assert "worker: drained, 3 stored on the way out" in done.stderr
    with SQLiteStore(settings.store_path, read_only=True) as store:
        assert store.count() == len(events)
        assert [stored.id for stored in store.flow(events[0].request_id)] == [events[0].id]
