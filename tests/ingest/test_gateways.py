"""Debian's nginx and HAProxy, started here on free ports in front of a real
upstream, with the log formats shipped in examples/: their logs ingested
once, twice, and followed across rotation and restarts, with exact counts."""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from eventtrail.calls import ERROR, REQUEST, RESPONSE
from eventtrail.embedded.queue import SQLiteQueue
from tests.cli import run, spawn, stored_calls
from tests.servers import ROOT, free_port, wait_for_port

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

pytestmark = pytest.mark.slow


class _Upstream(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path.startswith("/slow"):
            time.sleep(1.0)
        if self.path.startswith("/reset"):
            # RST instead of an answer: the gateway sees the connection reset.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close_connection = True
            self.connection.close()
            return
        status = 503 if self.path.startswith("/fail") else 200
        self.send_response(status)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass

    def handle_one_request(self) -> None:
        try:
            super().handle_one_request()
        except OSError:
            self.close_connection = True


@contextmanager
def upstream() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Upstream)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


#: Path prefix -> (what the call must become, its status or error kind).
EXPECTED = {
    "/a/ok": (RESPONSE, 200),
    "/a/fail": (RESPONSE, 503),
    "/a/slow": (ERROR, "timeout"),
    "/a/reset": (ERROR, "reset"),
    "/dead/x": (ERROR, "refused"),
}


@dataclass
class Traffic:
    """Request ids the gateway answered, by the path asked."""

    answered: dict[str, str] = field(default_factory=dict)

    def send(self, port: int, paths: list[str], header: str = "x-request-id") -> None:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            for path in paths:
                try:
                    response = client.get(path, headers={"Connection": "close"})
                except httpx.HTTPError as error:
                    raise AssertionError(f"{path}: {error!r}") from error
                request_id = response.headers.get(header)
                if path.startswith("/local"):
                    continue
                assert request_id, (path, response.status_code, response.headers)
                self.answered[request_id] = path


MIXED = ["/a/ok"] * 8 + ["/a/fail", "/a/slow", "/a/reset", "/dead/x", "/local"]


def _example(name: str, pattern: str) -> str:
    text = (ROOT / "examples" / name).read_text()
    found = re.search(pattern, text, re.DOTALL | re.MULTILINE)
    assert found, f"{pattern} not in examples/{name}"
    return found.group(0)


@contextmanager
def nginx(folder: Path, upstream_port: int) -> Iterator[tuple[int, Path, subprocess.Popen[bytes]]]:
    port, dead = free_port(), free_port()
    log = folder / "access.log"
    log_format = _example("nginx-eventtrail.conf", r"^log_format eventtrail.*?';$")
    (folder / "nginx.conf").write_text(
        f"""
daemon off;
master_process off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log {folder}/error.log;
events {{ worker_connections 128; }}
http {{
  client_body_temp_path {folder}/body;
  proxy_temp_path {folder}/proxy;
  {log_format}
  access_log {log} eventtrail;
  server {{
    listen 127.0.0.1:{port};
    set $service "";
    add_header X-Request-Id $request_id always;
    location /a/ {{
      set $service "Microservice A";
      proxy_read_timeout 300ms;
      proxy_pass http://127.0.0.1:{upstream_port}/;
    }}
    location /dead/ {{ set $service "Dead"; proxy_pass http://127.0.0.1:{dead}/; }}
    location /local {{ return 200 "local"; }}
  }}
}}
"""
    )
    process = subprocess.Popen([NGINX, "-p", str(folder), "-c", str(folder / "nginx.conf")])
    try:
        wait_for_port(port)
        yield port, log, process
    finally:
        process.terminate()
        process.wait(10)


def stored(data_dir: Path) -> dict[str, list[tuple[str, object]]]:
    """Each stored request's calls: (event type, status or error kind)."""
    return stored_calls(data_dir, lambda event: event.data.get("status", event.data.get("error")))


def queued(data_dir: Path) -> int:
    with SQLiteQueue(data_dir / "queue.db") as queue:
        return queue.stats().visible


def drain(data_dir: Path) -> None:
    result = run(data_dir, "worker", "--drain", "--quiet")
    assert result.returncode == 0, result.stderr


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


_SPAWNED: list[subprocess.Popen[str]] = []


def reaped(process: subprocess.Popen[str]) -> subprocess.Popen[str]:
    """``process``, killed at the end of the test if it is still running."""
    _SPAWNED.append(process)
    return process


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test() -> Iterator[None]:
    yield
    while _SPAWNED:
        process = _SPAWNED.pop()
        if process.poll() is None:
            process.kill()
            process.wait(10)


def ready(process: subprocess.Popen[str]) -> None:
    """Wait for a follower's first line (it reads from there on)."""
    assert process.stderr is not None
    line = process.stderr.readline()
    assert line.startswith(("following", "listening")), line + process.stderr.read()


def check_flows(data_dir: Path, traffic: Traffic) -> None:
    flows = stored(data_dir)
    assert set(flows) == set(traffic.answered)
    for request_id, path in traffic.answered.items():
        kind, outcome = EXPECTED[path]
        assert sorted(flows[request_id], key=str) == sorted([(REQUEST, None), (kind, outcome)], key=str), path


def test_nginx_log_ingested_once_twice_and_followed(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    traffic = Traffic()
    with upstream() as upstream_port, nginx(tmp_path, upstream_port) as (port, log, process):
        traffic.send(port, MIXED)
        first = run(data_dir, "ingest", "nginx", str(log))
        assert first.returncode == 0, first.stderr
        assert "13 lines: 12 proxied requests, 24 events queued, 1 not proxied, 0 bad" in first.stderr
        drain(data_dir)
        check_flows(data_dir, traffic)

        # Twice: the same ids, nothing stored twice.
        again = run(data_dir, "ingest", "nginx", str(log))
        assert again.returncode == 0 and "24 events queued" in again.stderr
        drain(data_dir)
        assert sum(len(calls) for calls in stored(data_dir).values()) == 24

        # Followed from the end, across a rename rotation, a restart and a copytruncate.
        follower = reaped(spawn(data_dir, "ingest", "nginx", "--follow", "--from-end", str(log)))
        ready(follower)
        traffic.send(port, MIXED)
        wait_until(lambda: queued(data_dir) == 24)
        log.rename(tmp_path / "access.log.1")
        traffic.send(port, ["/a/ok"] * 3)  # still written to the renamed file
        process.send_signal(signal.SIGUSR1)  # nginx reopens its log: a new access.log
        wait_until(log.exists)
        traffic.send(port, ["/a/fail"] * 2)
        wait_until(lambda: queued(data_dir) == 24 + 10)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(20) == 0, follower.stderr.read() if follower.stderr else ""

        traffic.send(port, ["/a/ok"] * 4)  # while nobody follows
        follower = reaped(spawn(data_dir, "ingest", "nginx", "--follow", str(log)))
        ready(follower)
        wait_until(lambda: queued(data_dir) == 34 + 8)
        (tmp_path / "access.log.2").write_bytes(log.read_bytes())
        with log.open("r+b") as file:
            file.truncate(0)
        time.sleep(0.5)
        traffic.send(port, ["/dead/x"] * 2)
        wait_until(lambda: queued(data_dir) == 42 + 4)
        follower.send_signal(signal.SIGTERM)
        assert follower.wait(20) == 0

    # Exactly once on the queue: every line sent, none sent twice.
    assert queued(data_dir) == 46
    drain(data_dir)
    check_flows(data_dir, traffic)


def test_a_client_that_gave_up_on_nginx_is_recorded_as_such(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    with upstream() as upstream_port, nginx(tmp_path, upstream_port) as (port, log, _):
        # The client leaves before the upstream answers, and before nginx's own timeout.
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(f"http://127.0.0.1:{port}/a/slow", timeout=0.1)
        wait_until(lambda: log.exists() and b'"status":"499"' in log.read_bytes())
        ingested = run(data_dir, "ingest", "nginx", str(log))
        assert ingested.returncode == 0, ingested.stderr
        assert "1 proxied request, 2 events queued" in ingested.stderr
    drain(data_dir)
    [calls] = stored_calls(
        data_dir, lambda event: (event.data.get("error"), event.data.get("detail"))
    ).values()
    left = f"nginx: the client closed the connection before 127.0.0.1:{upstream_port} answered (499)"
    assert sorted(calls, key=str) == sorted(
        [(REQUEST, (None, None)), (ERROR, ("disconnected", left))], key=str
    )
    # A call its client gave up on is counted, and is no failure of the service's.
    health = run(data_dir, "health", "--json", "--min-calls", "1")
    assert health.returncode == 0, health.stderr
    [service] = json.loads(health.stdout)["services"]
    assert (service["service"], service["calls"], service["errors"], service["abandoned"]) == (
        "Microservice A",
        1,
        0,
        1,
    )


@contextmanager
def haproxy(folder: Path, upstream_port: int, log_target: str) -> Iterator[int]:
    port, dead = free_port(), free_port()
    log_format = _example("haproxy-eventtrail.cfg", r"^    log-format .*?$")
    unique_id = _example("haproxy-eventtrail.cfg", r"^    unique-id-format .*?$")
    (folder / "haproxy.cfg").write_text(
        f"""
global
    log {log_target} local0 info
defaults
    mode http
    log global
    timeout connect 1s
    timeout client 5s
    timeout server 300ms
frontend gateway
    bind 127.0.0.1:{port}
{unique_id}
    http-after-response set-header X-Request-Id %[unique-id]
{log_format}
    use_backend dead if {{ path_beg /dead/ }}
    default_backend a
backend a
    http-request replace-path /a/(.*) /\\1
    server a1 127.0.0.1:{upstream_port}
backend dead
    server d1 127.0.0.1:{dead}
"""
    )
    output = (folder / "haproxy.out").open("ab")
    process = subprocess.Popen([HAPROXY, "-f", str(folder / "haproxy.cfg")], stdout=output, stderr=output)
    try:
        wait_for_port(port)
        yield port
    finally:
        process.terminate()
        process.wait(10)
        output.close()


HAPROXY_EXPECTED_DEAD = (ERROR, "refused")


def test_haproxy_log_from_a_file_and_from_a_syslog_socket(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    traffic = Traffic()
    with upstream() as upstream_port:
        # `log stdout format raw`: the lines go to a file, read once and twice.
        with haproxy(tmp_path, upstream_port, "stdout format raw") as port:
            traffic.send(port, [path for path in MIXED if path != "/local"])
            time.sleep(0.5)
        log = tmp_path / "haproxy.out"
        for _ in range(2):
            result = run(data_dir, "ingest", "haproxy", str(log))
            assert result.returncode == 0, result.stderr
            # The port probe's empty connection is HAProxy's own 400: not proxied.
            assert "12 proxied requests, 24 events queued, 1 not proxied, 0 bad" in result.stderr
        assert queued(data_dir) == 48
        drain(data_dir)
        check_flows(data_dir, traffic)

        # A syslog socket: HAProxy's own syslog header before each line.
        socket_path = tmp_path / "haproxy.sock"
        listener = reaped(spawn(data_dir, "ingest", "haproxy", "--syslog", str(socket_path)))
        ready(listener)
        with haproxy(tmp_path, upstream_port, str(socket_path)) as port:
            traffic.send(port, ["/a/ok", "/a/fail", "/dead/x"])
            wait_until(lambda: queued(data_dir) == 6)
        listener.send_signal(signal.SIGTERM)
        assert listener.wait(20) == 0
        assert not socket_path.exists()
    drain(data_dir)
    check_flows(data_dir, traffic)


def test_bad_lines_are_counted_and_named_and_never_stop_the_rest(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    good = (
        '{"msec":"1795809361.414","request_id":"r1","request_method":"GET","uri":"/a","status":"200",'
        '"request_time":"0.004","upstream_addr":"127.0.0.1:9001","upstream_status":"200",'
        '"upstream_response_time":"0.003"}'
    )
    log = tmp_path / "access.log"
    log.write_bytes(
        "\n".join(
            [good, "not json", '{"upstream_addr": "x"}', "\x1b]0;owned\x07", good.replace("r1", "r2")]
        ).encode()
        + b"\n\xff\xfe\n"
    )
    result = run(data_dir, "ingest", "nginx", str(log))
    assert result.returncode == 0, result.stderr
    assert f"warning: {log}:2: not JSON" in result.stderr
    assert f"warning: {log}:3: `upstream_status` is missing" in result.stderr
    assert f"warning: {log}:6: not UTF-8" in result.stderr
    assert "\x1b" not in result.stderr
    assert "6 lines: 2 proxied requests, 4 events queued, 0 not proxied, 4 bad" in result.stderr
    assert queued(data_dir) == 4


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ingest", "nginx"], "give at least one access log file"),
        (["ingest", "nginx", "missing.log"], "missing.log: not found"),
        (["ingest", "nginx", "."], ".: a folder"),
        (["ingest", "nginx", "--from-end", "x.log"], "x.log: not found"),
        (["ingest", "haproxy", "--syslog", "s.sock", "--follow"], "--syslog reads a socket"),
    ],
)
def test_bad_arguments_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = run(tmp_path, *args)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert "Traceback" not in result.stderr


def test_the_shipped_examples_are_valid_configurations(tmp_path: Path) -> None:
    text = (
        (ROOT / "examples" / "nginx-eventtrail.conf").read_text().replace("/var/log/nginx/", f"{tmp_path}/")
    )
    (tmp_path / "snippet.conf").write_text(text)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{\n include {tmp_path}/snippet.conf;\n}}\n"
    )
    checked = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf")], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    checked = subprocess.run(
        [HAPROXY, "-c", "-f", str(ROOT / "examples" / "haproxy-eventtrail.cfg")],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert os.access(NGINX, os.X_OK)
