"""What the gateway costs: the same load against (a) a trivial upstream
alone, (b) the gateway in front of it with event recording off, (c) the
gateway recording every call into the embedded queue, and (n) nginx in front
of the same upstream writing a JSON access log, in one run.

Each server is its own process on a loopback port (the upstream on uvicorn;
the gateway as ``eventtrail gateway`` runs it, with its own HTTP protocol on
uvloop; nginx with one worker, no master); the
load generator is ``wrk`` (Debian: ``apt-get install wrk nginx``) with a
fixed number of connections. Rounds alternate a, b, c, n so that the
machine's noise falls on all of them alike; the figures are the medians of
the rounds, and the ratios are also given per round. Targets: (c) keeps at
least 90% of (b)'s throughput and adds under 0.5 ms to its p50 latency, and
(c) serves at least half of nginx's (n) throughput. "Server CPU" is the
serving processes' CPU time per request; the CPU of (c)'s queue process is
given apart.

A fifth setup, (p), is a peer rather than a product: the least a reverse
proxy written in Python on the same libraries can do (httptools callbacks on
uvloop, pooled keep-alive upstream connections, no task per request, and
none of the gateway's checks, limits, timeouts or recording). It says how
much of the gap between the gateway and nginx is the language and how much
is the gateway's own work per request (``--only a,b,c,n,p``).

    .venv/bin/python benchmarks/gateway.py [--seconds 10] [--rounds 3] [--connections 32]
        [--workers N] [--only a,b,c,n,p]

``--workers N`` runs both gateways with N processes sharing their port
(SO_REUSEPORT) and nginx with N worker processes.
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
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

THROUGHPUT_TARGET = 0.90
NGINX_TARGET = 0.5
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


def serve_minimal_proxy(port: int, upstream_port: int) -> None:
    """Setup (p): the minimal Python proxy of ``minimal_proxy.py``."""
    import uvloop

    sys.path.insert(0, str(Path(__file__).parent))
    import minimal_proxy

    uvloop.run(minimal_proxy.serve(port, upstream_port))


def serve_gateway(port: int, upstream_port: int, record: bool, data_dir: str, workers: int) -> None:
    from eventtrail.config import load_settings
    from eventtrail.gateway import parse_gateway_config
    from eventtrail.gateway.serve import serve_gateway as serve

    config = parse_gateway_config(
        {
            "routes": [
                {"prefix": "/a", "service": "Upstream", "upstream": f"http://127.0.0.1:{upstream_port}"}
            ],
            "recording": {"enabled": record},
        }
    )
    settings = load_settings({"backend": "local", "data_dir": data_dir}, environ={})
    # As `eventtrail gateway` runs it: its publisher, tune_gc(), and its workers.
    for counts in serve(config, settings if record else None, "127.0.0.1", port, workers=workers):
        print(
            f"gateway publisher: {counts.published} published, {counts.sent} sent,"
            f" {counts.spilled} spilled, {counts.dropped} dropped",
            file=sys.stderr,
        )


_NGINX_LOG_FORMAT = (
    '{"time_iso8601":"$time_iso8601","msec":"$msec","request_id":"$request_id",'
    '"request_method":"$request_method","uri":"$uri","status":"$status",'
    '"request_time":"$request_time","upstream_addr":"$upstream_addr",'
    '"upstream_status":"$upstream_status","upstream_response_time":"$upstream_response_time",'
    '"upstream_connect_time":"$upstream_connect_time","service":"$service"}'
)


def nginx_config(folder: Path, port: int, upstream_port: int, workers: int) -> Path:
    """nginx as users run it in front of a service: proxy_pass over a
    keep-alive pool, a buffered JSON access log with what a call event needs."""
    text = f"""
daemon off;
master_process {"on" if workers > 1 else "off"};
worker_processes {workers};
pid {folder}/nginx.pid;
error_log {folder}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    client_body_temp_path {folder}/body;
    proxy_temp_path {folder}/proxy;
    fastcgi_temp_path {folder}/fastcgi;
    uwsgi_temp_path {folder}/uwsgi;
    scgi_temp_path {folder}/scgi;
    log_format trail escape=json '{_NGINX_LOG_FORMAT}';
    upstream service_a {{
        server 127.0.0.1:{upstream_port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port}{" reuseport" if workers > 1 else ""};
        access_log {folder}/access.log trail buffer=64k flush=1s;
        location /a/ {{
            set $service "Upstream";
            proxy_pass http://service_a/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Request-Id $request_id;
        }}
    }}
}}
"""
    path = folder / "nginx.conf"
    path.write_text(text)
    return path


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
def process(
    *args: str, command: list[str] | None = None, stop: int = signal.SIGINT
) -> Iterator[subprocess.Popen[bytes]]:
    child = subprocess.Popen(command or [sys.executable, __file__, *args])
    try:
        yield child
    finally:
        child.send_signal(stop)
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
    helper_cpu_us_per_request: float = 0.0


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def serving_pids(pid: int, workers: int) -> list[int]:
    """The processes that serve requests: ``pid`` alone, or its worker
    children when it has several (their own children, the gateway's queue
    processes, are not counted)."""
    if workers == 1:
        return [pid]
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if int(_stat(int(entry.name))[1]) == pid:
                    children.append(int(entry.name))
    return [pid, *children]


def child_pids(parents: list[int]) -> list[int]:
    """The processes whose parent is one of ``parents`` (and not one of them):
    the gateway's queue processes (and multiprocessing's resource tracker)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in parents:
            with contextlib.suppress(OSError):
                if int(_stat(int(entry.name))[1]) in parents:
                    found.append(int(entry.name))
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes so far (Linux /proc)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def measured(url: str, seconds: int, connections: int, pids: list[int]) -> Load:
    """A wrk run, with the CPU time the serving processes spent per request,
    and apart from it their children's (the gateway's queue processes)."""
    helpers = child_pids(pids)
    before, helpers_before = cpu_seconds(pids), cpu_seconds(helpers)
    load = wrk(url, seconds, connections)
    requests = max(load.requests, 1)
    load.cpu_us_per_request = (cpu_seconds(pids) - before) / requests * 1e6
    load.helper_cpu_us_per_request = (cpu_seconds(helpers) - helpers_before) / requests * 1e6
    return load


def events_waiting(port: int) -> int:
    """Events a gateway's publisher holds in memory (its ``/metrics``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    found = re.search(r"^eventtrail_gateway_events_buffered (\d+)", text, re.MULTILINE)
    if found is None:
        raise RuntimeError("the gateway's metrics say nothing of buffered events")
    return int(found[1])


def drained(port: int, workers: int, timeout: float = 120.0) -> tuple[int, float]:
    """Wait until the gateway on ``port`` holds no event in memory; return how
    many it held when called and the seconds it took. With several workers
    each answer comes from one of them: all are asked until ``workers``
    answers in a row say none."""
    started = time.monotonic()
    waiting = events_waiting(port)
    quiet = 0
    while quiet < workers:
        if time.monotonic() - started > timeout:
            raise TimeoutError(f"the gateway still holds events after {timeout:.0f}s")
        if events_waiting(port) == 0:
            quiet += 1
        else:
            quiet = 0
            time.sleep(0.1)
    return waiting, time.monotonic() - started


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


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


SETUPS = {
    "a": "(a) upstream alone",
    "b": "(b) gateway, recording off",
    "c": "(c) gateway, recording events",
    "n": "(n) nginx, JSON access log",
    "p": "(p) minimal Python proxy",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="processes per gateway, workers of nginx")
    parser.add_argument("--only", default="a,b,c,n", help="the setups to load, of a,b,c,n")
    parser.add_argument("--serve", nargs="+", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.serve:
        role, *args = options.serve
        # Stopped with SIGINT by the parent: uvicorn shuts down, then re-raises it.
        with contextlib.suppress(KeyboardInterrupt):
            if role == "upstream":
                serve_upstream(int(args[0]))
            elif role == "minimal":
                serve_minimal_proxy(int(args[0]), int(args[1]))
            else:
                serve_gateway(int(args[0]), int(args[1]), args[2] == "record", args[3], int(args[4]))
        return
    chosen = [name for name in options.only.split(",") if name]
    if unknown := set(chosen) - set(SETUPS):
        sys.exit(f"--only: unknown setups {sorted(unknown)}")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed (Debian: apt-get install wrk)")
    if "n" in chosen and not Path(nginx).exists():
        sys.exit("nginx is not installed (Debian: apt-get install nginx), or leave it out: --only a,b,c")
    workers = options.workers
    data_dir = Path(tempfile.mkdtemp(prefix="eventtrail-bench-"))
    ports = {name: free_port() for name in SETUPS}
    up = ports["a"]
    results: dict[str, list[Load]] = {name: [] for name in chosen}
    backlogs: list[tuple[int, float]] = []
    loads: list[str] = [load_average()]
    with contextlib.ExitStack() as running:
        servers = {
            "a": lambda: process("--serve", "upstream", str(up)),
            "b": lambda: process(
                "--serve", "gateway", str(ports["b"]), str(up), "off", str(data_dir / "off"), str(workers)
            ),
            "c": lambda: process(
                "--serve", "gateway", str(ports["c"]), str(up), "record", str(data_dir / "on"), str(workers)
            ),
            "p": lambda: process("--serve", "minimal", str(ports["p"]), str(up)),
            "n": lambda: process(
                command=[
                    nginx,
                    "-p",
                    str(data_dir),
                    "-e",
                    str(data_dir / "error.log"),
                    "-c",
                    str(nginx_config(data_dir, ports["n"], up, workers)),
                ],
                stop=signal.SIGQUIT,
            ),
        }
        pids = {name: running.enter_context(servers[name]()).pid for name in {"a", *chosen}}
        for name in pids:
            wait_for(ports[name])
        paths = {"a": "/orders/42"}
        urls = {name: f"http://127.0.0.1:{ports[name]}{paths.get(name, '/a/orders/42')}" for name in chosen}
        time.sleep(1.0)  # every worker of a gateway is up
        for url in urls.values():  # warm up connections and code paths
            wrk(url, 1, options.connections)
        for _ in range(options.rounds):
            for name, url in urls.items():
                serving = serving_pids(pids[name], 1 if name == "a" else workers)
                results[name].append(measured(url, options.seconds, options.connections, serving))
                if name == "c":
                    # What the queue process has not sent yet is work of this
                    # round: done before the next round, it is not taken
                    # from another setup's.
                    backlogs.append(drained(ports["c"], workers))
            loads.append(load_average())
        time.sleep(0.5)  # the last batch leaves the buffer within flush_interval
    events = queued_messages(data_dir / "on") if "c" in chosen else 0
    nginx_lines = 0
    if "n" in chosen and (data_dir / "access.log").exists():
        nginx_lines = len((data_dir / "access.log").read_bytes().splitlines())
    shutil.rmtree(data_dir, ignore_errors=True)

    def median(name: str, field: str) -> float:
        return float(statistics.median(getattr(load, field) for load in results[name]))

    def ratio(top: str, bottom: str) -> str:
        per_round = [
            high.requests_per_second / low.requests_per_second
            for high, low in zip(results[top], results[bottom], strict=True)
        ]
        overall = median(top, "requests_per_second") / median(bottom, "requests_per_second")
        return f"{overall:.2f}x (per round: {', '.join(f'{value:.2f}' for value in per_round)})"

    print(
        f"wrk -t1 -c{options.connections}, {options.rounds} rounds of {options.seconds}s,"
        f" {workers} worker process(es) per server, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}"
    )
    print(f"load average (1, 5, 15 min) at start and after each round: {' | '.join(loads)}")
    for name in chosen:
        errors = sum(load.errors for load in results[name])
        print(
            f"{SETUPS[name]:32} {median(name, 'requests_per_second'):>9,.0f} req/s"
            f"  p50 {median(name, 'p50_ms'):.2f} ms  p99 {median(name, 'p99_ms'):.2f} ms"
            f"  server CPU {median(name, 'cpu_us_per_request'):.0f} us/request  errors {errors}"
        )
    if backlogs:
        print(
            "(c) events not yet sent at the end of each round: "
            + ", ".join(f"{waiting:,} (sent {seconds:.1f}s later)" for waiting, seconds in backlogs)
        )
    if "c" in chosen:
        queue_cpu = median("c", "helper_cpu_us_per_request")
        print(f"(c) queue process CPU: {queue_cpu:.0f} us/request (not in its server CPU)")
    verdicts = []
    if {"b", "c"} <= set(chosen):
        c_over_b = median("c", "requests_per_second") / median("b", "requests_per_second")
        added_p50 = median("c", "p50_ms") - median("b", "p50_ms")
        print(f"(c)/(b) throughput: {ratio('c', 'b')} (target >= {THROUGHPUT_TARGET:.2f}x)")
        print(f"(c) - (b) p50 latency: {added_p50:+.2f} ms (target < {ADDED_P50_TARGET_MS} ms)")
        verdicts += [c_over_b >= THROUGHPUT_TARGET, added_p50 < ADDED_P50_TARGET_MS]
    if {"c", "n"} <= set(chosen):
        c_over_n = median("c", "requests_per_second") / median("n", "requests_per_second")
        print(f"(c)/(n) throughput: {ratio('c', 'n')} (target >= {NGINX_TARGET:.2f}x)")
        verdicts.append(c_over_n >= NGINX_TARGET)
    if {"b", "n"} <= set(chosen):
        print(f"(b)/(n) throughput: {ratio('b', 'n')} (the proxy alone against nginx)")
    if {"a", "b"} <= set(chosen):
        print(f"(b)/(a) throughput: {ratio('b', 'a')} (the proxy's own cost)")
    if {"a", "n"} <= set(chosen):
        print(f"(n)/(a) throughput: {ratio('n', 'a')} (nginx's own cost)")
    if {"p", "n"} <= set(chosen):
        print(f"(p)/(n) throughput: {ratio('p', 'n')} (the least a Python proxy costs, against nginx)")
    if {"b", "p"} <= set(chosen):
        print(f"(b)/(p) throughput: {ratio('b', 'p')} (the gateway's own work per request)")
    if "n" in chosen:
        print(f"lines in nginx's access log: {nginx_lines:,} (one per request)")
    if "c" in chosen:
        print(f"events in the queue after (c): {events:,} (two per request)")
    if verdicts:
        print(f"targets: {'met' if all(verdicts) else 'NOT met'}")


if __name__ == "__main__":
    main()
