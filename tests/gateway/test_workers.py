"""The gateway in several processes on one port (``serve_gateway(workers=N)``):
each worker answers, has its own spill file, is restarted after a SIGKILL,
and every call is recorded once."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from eventtrail.calls import REQUEST, RESPONSE
from eventtrail.config import load_settings
from eventtrail.gateway import parse_gateway_config
from eventtrail.gateway.serve import listening_socket, spill_path
from tests.gateway.conftest import queued_events
from tests.servers import free_port, wait_for_port

SERVE = """
import json, sys
from eventtrail.config import load_settings
from eventtrail.gateway import parse_gateway_config
from eventtrail.gateway.serve import serve_gateway


def prepare(app):  # run in each worker: its mark shows in every worker's metrics
    app.rejected = 1000


if __name__ == "__main__":  # the workers are spawned: they import this file again
    upstream, port, data_dir, workers = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
    config = parse_gateway_config({"routes": [{"prefix": "/echo", "service": "Echo", "upstream": upstream}]})
    settings = load_settings({"backend": "local", "data_dir": data_dir}, environ={})
    counts = serve_gateway(config, settings, "127.0.0.1", port, workers=workers, prepare_app=prepare)
    print(json.dumps([[c.published, c.sent, c.dropped] for c in counts]))
"""


def workers_of(pid: int) -> set[int]:
    """The worker processes of the gateway process ``pid``: its spawned
    children (not multiprocessing's resource tracker)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                command = (entry / "cmdline").read_bytes()
            except (OSError, IndexError):
                continue
            if parent == pid and b"spawn_main" in command:
                found.add(int(entry.name))
    return found


def wait_until(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


@contextmanager
def gateway_workers(
    tmp_path: Path, upstream_url: str, workers: int
) -> Iterator[tuple[subprocess.Popen[str], int]]:
    script = tmp_path / "serve.py"
    script.write_text(SERVE)
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTTRAIL_")}
    process = subprocess.Popen(
        [sys.executable, str(script), upstream_url, str(port), str(tmp_path / "data"), str(workers)],
        cwd=Path(__file__).resolve().parents[2],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_port(port)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.slow
def test_workers_share_the_port_survive_a_kill_and_record_every_call(
    tmp_path: Path, upstream_url: str
) -> None:
    with gateway_workers(tmp_path, upstream_url, 2) as (process, port):
        wait_until(lambda: len(workers_of(process.pid)) == 2)
        first = workers_of(process.pid)
        answered = 0
        for number in range(60):  # a new connection each: the kernel spreads them
            answer = httpx.get(f"http://127.0.0.1:{port}/echo/{number}", headers={"Connection": "close"})
            assert answer.status_code == 200
            answered += 1
        for _ in range(10):
            metrics = httpx.get(f"http://127.0.0.1:{port}/metrics", headers={"Connection": "close"}).text
            assert "eventtrail_gateway_rejected_requests_total 1000" in metrics
        settings = load_settings({"backend": "local", "data_dir": str(tmp_path / "data")}, environ={})
        publishing = parse_gateway_config(
            {"routes": [{"prefix": "/e", "service": "E", "upstream": upstream_url}]}
        ).publisher
        # Each worker keeps its own spill file (and journal beside it).
        assert spill_path(publishing, settings, 0).exists()
        assert spill_path(publishing, settings, 1).exists()
        assert spill_path(publishing, settings, 1) != spill_path(publishing, settings, 0)

        time.sleep(0.3)  # the killed worker's calls reached its journal
        killed = min(first)
        os.kill(killed, signal.SIGKILL)
        wait_until(lambda: len(workers_of(process.pid)) == 2 and killed not in workers_of(process.pid))
        for number in range(40):
            # The restarted worker may not listen yet: a refused connection
            # (never an error answer) is tried again, a bounded number of times.
            for _attempt in range(50):
                try:
                    answer = httpx.get(
                        f"http://127.0.0.1:{port}/echo/after-{number}", headers={"Connection": "close"}
                    )
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert answer.status_code == 200
            answered += 1

        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=40)
    assert process.returncode == 0
    counts = json.loads(stdout.strip().splitlines()[-1])
    assert len(counts) >= 2  # one per worker process that stopped gracefully
    assert all(dropped == 0 for _, _, dropped in counts)
    # Every answered call, the killed worker's ones included (its successor
    # took over its journal). Delivery is at least once: a batch sent just
    # before the kill may be sent again, the same event with the same id,
    # which the store keeps once.
    unique = {event.id: event for event in queued_events(tmp_path / "data" / "queue.db")}.values()
    requests = [event for event in unique if event.type == REQUEST]
    responses = [event for event in unique if event.type == RESPONSE]
    assert len(requests) == len(responses) == answered
    assert {event.request_id for event in requests} == {event.request_id for event in responses}


def test_port_zero_is_resolved_once_and_shared_by_reuseport() -> None:
    first = listening_socket("127.0.0.1", 0)
    try:
        port = first.getsockname()[1]
        second = listening_socket("127.0.0.1", port)
        try:
            assert second.getsockname()[1] == port
            # A plain socket (no SO_REUSEPORT) cannot take the port.
            with socket.socket() as intruder, pytest.raises(OSError):
                intruder.bind(("127.0.0.1", port))
        finally:
            second.close()
    finally:
        first.close()


def test_workers_must_be_at_least_one(upstream_url: str) -> None:
    from eventtrail.gateway.serve import serve_gateway

    config = parse_gateway_config({"routes": [{"prefix": "/e", "service": "E", "upstream": upstream_url}]})
    with pytest.raises(ValueError, match="at least 1"):
        serve_gateway(config, None, "127.0.0.1", 0, workers=0)
