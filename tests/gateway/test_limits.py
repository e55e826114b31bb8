"""What one client may hold of a running gateway: the size of a request head,
the time to send it, and connections. The gateway is a real process
(``eventtrail gateway``), measured from outside through /proc."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.gateway.conftest import GatewayFactory, read_answer
from tests.servers import free_port, wait_for_port

pytestmark = pytest.mark.slow

MIB = 1024 * 1024


@dataclass(frozen=True)
class GatewayProcess:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss(self) -> int:
        """Resident memory, in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS line")


@contextmanager
def gateway_process(tmp_path: Path, upstream_url: str, server: str) -> Iterator[GatewayProcess]:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f'[[routes]]\nprefix = "/echo"\nservice = "Echo"\nupstream = "{upstream_url}"\n\n[server]\n{server}\n'
    )
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("EVENTTRAIL_")}
    process = subprocess.Popen(
        [
            *(sys.executable, "-m", "eventtrail", "gateway", "--config", str(config), "--port", str(port)),
            *("--no-record", "--data-dir", str(tmp_path / "data")),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port)
        yield GatewayProcess(process.pid, port)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        assert process.stderr is not None
        process.stderr.close()


Started = Callable[[str], GatewayProcess]


@pytest.fixture
def started(tmp_path: Path, upstream_url: str) -> Iterator[Started]:
    """Start a gateway process with these ``[server]`` settings (stopped at
    the end of the test)."""
    with ExitStack() as stack:
        yield lambda server: stack.enter_context(gateway_process(tmp_path, upstream_url, server))


def test_huge_headers_get_431_and_memory_stays_bounded(started: Started) -> None:
    gateway = started("max_header_bytes = 16384")
    for _ in range(20):
        assert httpx.get(f"{gateway.url}/echo/warm", headers={"X-Fine": "v" * 8000}).status_code == 200
    before = gateway.rss()
    peak = before
    answers: list[bytes] = []
    sending = True

    def watch() -> None:
        nonlocal peak
        while sending:
            peak = max(peak, gateway.rss())
            time.sleep(0.01)

    def huge_header() -> None:
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
            with suppress(OSError):  # the gateway may stop reading once it answered
                sock.sendall(b"GET /echo/x HTTP/1.1\r\nHost: gw\r\nX-Big: ")
                block = b"a" * MIB
                for _ in range(24):
                    sock.sendall(block)
                sock.sendall(b"\r\n\r\n")
            answers.append(read_answer(sock, 5))

    watcher = threading.Thread(target=watch)
    watcher.start()
    clients = [threading.Thread(target=huge_header) for _ in range(3)]
    for client in clients:
        client.start()
    for client in clients:
        client.join(60)
    sending = False
    watcher.join()
    assert peak - before < 50 * MIB, f"RSS grew by {(peak - before) / MIB:.1f} MiB"
    assert [answer.split(b"\r\n", 1)[0] for answer in answers] == [
        b"HTTP/1.1 431 Request Header Fields Too Large"
    ] * 3
    # A long target counts as head too, and the gateway serves the next client.
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"GET /echo/" + b"x" * 20000 + b" HTTP/1.1\r\nHost: gw\r\n\r\n")
        assert read_answer(sock, 5).startswith(b"HTTP/1.1 431 ")
    assert httpx.get(f"{gateway.url}/echo/after").status_code == 200


def test_a_flood_of_pipelined_requests_is_parsed_only_a_little_ahead(started: Started) -> None:
    """Each parsed request holds memory until it is answered: a client that
    pipelines megabytes of tiny requests behind a slow one must not make the
    gateway parse them all (it did: about 5 MiB per connection)."""
    gateway = started("")
    for _ in range(5):
        assert httpx.get(f"{gateway.url}/echo/warm").status_code == 200
    before = gateway.rss()
    flood = b"GET /echo/x HTTP/1.1\r\nHost: gw\r\n\r\n" * 50_000
    clients = []
    try:
        for _ in range(20):
            sock = socket.create_connection(("127.0.0.1", gateway.port))
            clients.append(sock)
            sock.sendall(b"GET /echo/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
            sock.setblocking(False)
            with suppress(BlockingIOError):
                sock.send(flood)  # as much as the kernel's buffers take
        time.sleep(1.0)
        grown = gateway.rss() - before
    finally:
        for sock in clients:
            sock.close()
    assert grown < 20 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
    assert httpx.get(f"{gateway.url}/echo/after").status_code == 200


def test_a_slow_head_is_cut_after_the_header_timeout(started: Started) -> None:
    gateway = started("header_timeout = 1.0")
    trickling = socket.create_connection(("127.0.0.1", gateway.port))
    silent = socket.create_connection(("127.0.0.1", gateway.port))
    with trickling, silent:
        began = time.monotonic()
        trickling.sendall(b"GET /echo/x HTTP/1.1\r\nHost: gw\r\n")
        answer = b""
        # One header line every 0.2 s, as a slowloris client does, until cut.
        while time.monotonic() - began < 6:
            readable, _, _ = select.select([trickling], [], [], 0.2)
            if readable:
                answer = read_answer(trickling, 2)
                break
            with suppress(OSError):
                trickling.sendall(b"X-Slow: 1\r\n")
            # Others are served all along.
            assert httpx.get(f"{gateway.url}/echo/meanwhile").status_code == 200
        cut_after = time.monotonic() - began
        assert answer.startswith(b"HTTP/1.1 408 Request Timeout")
        assert 0.9 <= cut_after < 4.0
        # A connection that never sends a byte is closed as well, silently.
        assert read_answer(silent, 5) == b""
        assert time.monotonic() - began < 5.0


def test_past_the_connection_limit_a_prompt_503_then_service_again(started: Started) -> None:
    gateway = started("max_connections = 20\nheader_timeout = 3.0")
    idle = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(40)]
    try:
        time.sleep(0.3)
        asked = time.monotonic()
        refused = httpx.get(f"{gateway.url}/echo/x", timeout=5)
        assert refused.status_code == 503
        # Answered at once, not after the idle connections were cut.
        assert time.monotonic() - asked < 2.0
        readable, _, _ = select.select(idle, [], [], 0)
        assert readable == []
        # The idle connections leave by the header timeout...
        for sock in idle:
            assert read_answer(sock, 8) == b""
        assert time.monotonic() - asked < 8.0
        # ...and the gateway serves normally again.
        assert httpx.get(f"{gateway.url}/echo/x", timeout=5).status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_an_oversized_pipelined_head_never_cuts_into_the_previous_answer(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(
            b"GET /echo/first HTTP/1.1\r\nHost: gw\r\n\r\n"
            b"GET /echo/second HTTP/1.1\r\nHost: gw\r\nX-Big: " + b"b" * 40_000 + b"\r\n\r\n"
        )
        answer = read_answer(sock, 5)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    assert b'"path":"/first"' in rest[:length]
    # Then either the refusal of the second, or the connection closed: nothing else.
    assert rest[length:] == b"" or rest[length:].startswith(b"HTTP/1.1 431 ")


def test_a_body_read_after_its_answer_is_not_counted_as_the_next_head(
    make_gateway: GatewayFactory,
) -> None:
    gateway = make_gateway()
    body = b"x" * 200_000
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        # The 404 goes out before the body is read; the body then still comes.
        sock.sendall(b"POST /nowhere HTTP/1.1\r\nHost: gw\r\nContent-Length: %d\r\n\r\n" % len(body))
        time.sleep(0.2)
        sock.sendall(body)
        sock.sendall(b"GET /echo/next HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        answer = read_answer(sock, 5)
    assert answer.startswith(b"HTTP/1.1 404 ")
    assert answer.count(b"HTTP/1.1 ") == 2
    assert b"HTTP/1.1 200 " in answer
