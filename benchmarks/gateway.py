"""What the gateway costs: the same load against (a) a trivial upstream
alone, (b) the gateway in front of it with event recording off, and (c) the
gateway recording every call into the embedded queue, in one run.

Each server is its own process on a loopback port (uvicorn; the gateway with
uvloop and httptools when installed); the load generator is ``wrk`` (Debian:
``apt-get install wrk``) with a fixed number of connections. Rounds
alternate a, b, c so that the machine's noise falls on all three alike;
the figures are the medians of the rounds. Targets: (c) keeps at least 90%
of (b)'s throughput and adds under 0.5 ms to its p50 latency.

    .venv/bin/python benchmarks/gateway.py [--seconds 10] [--rounds 3] [--connections 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THROUGHPUT_TARGET = 0.90
ADDED_P50_TARGET_MS = 0.5
UPSTREAM_BODY = b'{"ok":true}'


async def upstream_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The trivial upstream: a fixed small JSON answer, plain ASGI."""
    if scope["type"] != "http":
        return
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"11")],
        }
    )
    await send({"type": "http.response.body", "body": UPSTREAM_BODY})


def serve_upstream(port: int) -> None:
    import uvicorn

    uvicorn.run(upstream_app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def serve_gateway(port: int, upstream_port: int, record: bool, data_dir: str) -> None:
    import uvicorn

    from eventtrail.config import load_settings
    from eventtrail.gateway import build_app, open_publisher, parse_gateway_config
    from eventtrail.gateway.serve import server_config, tune_gc

    config = parse_gateway_config(
        {
            "routes": [
                {"prefix": "/a", "service": "Upstream", "upstream": f"http://127.0.0.1:{upstream_port}"}
            ],
            "recording": {"enabled": record},
        }
    )
    settings = load_settings({"backend": "local", "data_dir": data_dir}, environ={})
    publisher = open_publisher(config, settings) if record else None
    server = uvicorn.Server(server_config(build_app(config, publisher), "127.0.0.1", port))
    tune_gc()  # as `eventtrail gateway` does
    try:
        server.run()
    finally:
        if publisher is not None:
            counts = publisher.close()
            print(
                f"gateway publisher: {counts.published} published, {counts.sent} sent,"
                f" {counts.spilled} spilled, {counts.dropped} dropped",
                file=sys.stderr,
            )


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(port: int, timeout: float = 20.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


@contextmanager
def process(*args: str) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen([sys.executable, __file__, *args])
    try:
        yield child
    finally:
        child.send_signal(signal.SIGINT)
        try:
            child.wait(30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@dataclass
class Load:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int = 0
    cpu_us_per_request: float = 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(url: str, seconds: int, connections: int, pid: int) -> Load:
    """A wrk run, with the CPU time the server process spent per request."""
    before = cpu_seconds(pid)
    load = wrk(url, seconds, connections)
    load.cpu_us_per_request = (cpu_seconds(pid) - before) / max(load.requests, 1) * 1e6
    return load


_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match[1]) * _UNIT_MS[match[2]]


def wrk(url: str, seconds: int, connections: int) -> Load:
    output = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", output)[1])  # type: ignore[index]
    requests = int(re.search(r"(\d+) requests in", output)[1])  # type: ignore[index]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", output)[1])  # type: ignore[index]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", output)[1])  # type: ignore[index]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", output))
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors += int(found[1])
    return Load(rate, p50, p99, errors, requests)


def queued_messages(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "queue.db") as db:
        return int(db.execute("SELECT count(*) FROM messages").fetchone()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        role, *args = options.serve
        # Stopped with SIGINT by the parent: uvicorn shuts down, then re-raises it.
        with contextlib.suppress(KeyboardInterrupt):
            if role == "upstream":
                serve_upstream(int(args[0]))
            else:
                serve_gateway(int(args[0]), int(args[1]), args[2] == "record", args[3])
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    data_dir = Path(tempfile.mkdtemp(prefix="eventtrail-bench-"))
    up, plain, recording = free_port(), free_port(), free_port()
    results: dict[str, list[Load]] = {"a": [], "b": [], "c": []}
    with (
        process("--serve", "upstream", str(up)) as upstream_process,
        process("--serve", "gateway", str(plain), str(up), "off", str(data_dir / "off")) as plain_process,
        process(
            "--serve", "gateway", str(recording), str(up), "record", str(data_dir / "on")
        ) as recording_process,
    ):
        pids = {"a": upstream_process.pid, "b": plain_process.pid, "c": recording_process.pid}
        for port in (up, plain, recording):
            wait_for(port)
        urls = {
            "a": f"http://127.0.0.1:{up}/orders/42",
            "b": f"http://127.0.0.1:{plain}/a/orders/42",
            "c": f"http://127.0.0.1:{recording}/a/orders/42",
        }
        for url in urls.values():  # warm up connections and code paths
            wrk(url, 1, options.connections)
        for _ in range(options.rounds):
            for name, url in urls.items():
                results[name].append(measured(url, options.seconds, options.connections, pids[name]))
        time.sleep(0.5)  # the last batch leaves the buffer within flush_interval
    events = queued_messages(data_dir / "on")
    shutil.rmtree(data_dir, ignore_errors=True)

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(load, field) for load in results[name]))

    print(
        f"wrk -t1 -c{options.connections}, {options.rounds} rounds of {options.seconds}s,"
        f" {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    labels = {
        "a": "(a) upstream alone",
        "b": "(b) gateway, recording off",
        "c": "(c) gateway, recording events",
    }
    for name, label in labels.items():
        errors = sum(load.errors for load in results[name])
        print(
            f"{label:32} {median(name, 'requests_per_second'):>9,.0f} req/s"
            f"  p50 {median(name, 'p50_ms'):.2f} ms  p99 {median(name, 'p99_ms'):.2f} ms"
            f"  server CPU {median(name, 'cpu_us_per_request'):.0f} us/request  errors {errors}"
        )
    c_over_b = median("c", "requests_per_second") / median("b", "requests_per_second")
    b_over_a = median("b", "requests_per_second") / median("a", "requests_per_second")
    added_p50 = median("c", "p50_ms") - median("b", "p50_ms")
    print(f"(c)/(b) throughput: {c_over_b:.0%} (target >= {THROUGHPUT_TARGET:.0%})")
    print(f"(c) - (b) p50 latency: {added_p50:+.2f} ms (target < {ADDED_P50_TARGET_MS} ms)")
    print(f"(b)/(a) throughput: {b_over_a:.0%} (the proxy's own cost)")
    print(f"events in the queue after (c): {events:,} (two per request)")
    meets = c_over_b >= THROUGHPUT_TARGET and added_p50 < ADDED_P50_TARGET_MS
    print(f"targets: {'met' if meets else 'NOT met'}")


if __name__ == "__main__":
    main()
