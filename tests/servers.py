"""Real servers for the tests, on free loopback ports: moto's AWS server and
dynalite. Each start function returns once the server answers, and the
returned handle stops it."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DYNALITE = ROOT / "node_modules" / ".bin" / "dynalite"

#: Credentials and region for local endpoints (never real ones).
LOCAL_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


@dataclass(frozen=True)
class Endpoint:
    url: str


@contextmanager
def moto_server() -> Iterator[Endpoint]:
    """moto's server in this process (threaded), all services on one port."""
    from moto.server import ThreadedMotoServer

    # verbose=False does not reach werkzeug's own line per request.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_for_port(port)
        yield Endpoint(f"http://127.0.0.1:{port}")
    finally:
        server.stop()


@contextmanager
def dynalite_server(data_dir: Path | None = None) -> Iterator[Endpoint]:
    """dynalite (npm) as a child process; in memory unless ``data_dir``."""
    if not DYNALITE.exists():
        raise FileNotFoundError(f"{DYNALITE} is missing: run `make setup` (npm ci)")
    if shutil.which("node") is None:
        raise FileNotFoundError("node is not on PATH")
    port = free_port()
    command = [
        str(DYNALITE),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--createTableMs",
        "0",
        "--deleteTableMs",
        "0",
        "--updateTableMs",
        "0",
    ]
    if data_dir is not None:
        command += ["--path", str(data_dir)]
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=os.environ.copy()
    )
    try:
        wait_for_port(port)
        yield Endpoint(f"http://127.0.0.1:{port}")
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
