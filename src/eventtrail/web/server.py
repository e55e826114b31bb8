"""Running the API and UI: in the foreground (``eventtrail serve``) or on a
background thread of another program (the demo, tests)."""

from __future__ import annotations

import ipaddress
import threading
import time

import uvicorn
from starlette.types import ASGIApp

__all__ = ["BackgroundServer", "TokenRequired", "check_binding", "is_loopback", "serve"]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


class TokenRequired(ValueError):
    """Binding beyond loopback without a token would expose every event."""


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: str | None) -> None:
    """Raise :class:`TokenRequired` if ``host`` is not loopback and there is no token."""
    if not is_loopback(host) and not token:
        raise TokenRequired(
            f"binding to {host} exposes the API beyond this machine: give a token"
            " (--token or EVENTTRAIL_API_TOKEN)"
        )


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off", access_log=False)


def serve(app: ASGIApp, host: str = "127.0.0.1", port: int = 8765) -> None:
    """Serve ``app`` until Ctrl-C or SIGTERM."""
    uvicorn.Server(_config(app, host, port)).run()


class BackgroundServer:
    """``app`` served by uvicorn on a thread of this process.

    ``port=0`` picks a free port; :attr:`url` tells which once started::

        with BackgroundServer(build_app(store, queue)) as server:
            print(server.url)
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._server = uvicorn.Server(_config(app, host, port))
        self._thread = threading.Thread(target=self._server.run, name="eventtrail-web", daemon=True)
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; return the URL once the socket listens."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web server could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the web server did not start within {timeout:g} s")
            time.sleep(0.01)
        sockets = [socket for server in self._server.servers for socket in server.sockets]
        self.port = int(sockets[0].getsockname()[1])
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish requests in flight, and join the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
