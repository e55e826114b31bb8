"""Running the API and UI: in the foreground (``eventtrail serve``) or on a
background thread of another program (the demo, tests)."""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
import time
from collections.abc import Sequence

import uvicorn
from starlette.types import ASGIApp

__all__ = [
    "BackgroundServer",
    "PortUnavailable",
    "TokenRequired",
    "bind",
    "check_binding",
    "check_token",
    "is_loopback",
    "port_unavailable",
    "serve",
    "trusted_hosts",
]

_LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}

#: Shorter tokens are guessable; whitespace and controls cannot travel in a header intact.
MIN_TOKEN_LENGTH = 16


class TokenRequired(ValueError):
    """Binding beyond loopback without a token would expose every event."""


class PortUnavailable(OSError):
    """The address could not be bound (taken, not local, not allowed)."""

    def __str__(self) -> str:
        return str(self.strerror)


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only."""
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> None:
    """Raise :class:`ValueError` unless ``token`` can protect the API: long
    enough not to be guessed, and only visible ASCII (it travels in a header)."""
    if not token.strip():
        raise ValueError("the API token is empty or blank")
    if any(not "!" <= char <= "~" for char in token):
        raise ValueError("the API token may hold only visible ASCII characters (no spaces or controls)")
    if len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(
            f"the API token must be at least {MIN_TOKEN_LENGTH} characters"
            " (e.g. python3 -c 'import secrets; print(secrets.token_urlsafe())')"
        )


def check_binding(host: str, token: str | None) -> None:
    """Raise :class:`TokenRequired` if ``host`` is not loopback and there is no
    token, :class:`ValueError` if the token given is unfit (:func:`check_token`)."""
    if token is not None:
        check_token(token)
    if not is_loopback(host) and not token:
        raise TokenRequired(
            f"binding to {host} exposes the API beyond this machine: give a token"
            " (--token or EVENTTRAIL_API_TOKEN)"
        )


def trusted_hosts(bind_host: str, extra: Sequence[str] = ()) -> list[str]:
    """The Host header values the server answers to.

    A server on loopback answers only to loopback names, so that a web page
    cannot reach it through a name that resolves to 127.0.0.1 (DNS
    rebinding). A server bound to one address also answers to that address;
    one bound to every address (``0.0.0.0``, ``::``) answers to any name
    unless ``extra`` lists them (it has a token: rebinding gains nothing
    without it). ``extra`` adds names, ``*.example.com`` patterns allowed.
    """
    host = bind_host.strip("[]").lower()
    if host in ("0.0.0.0", "::", "") and not extra:
        return ["*"]
    names = ["localhost", "127.0.0.1", "[::1]", *sorted(_LOOPBACK_NAMES - {"localhost"})]
    if host not in ("0.0.0.0", "::", ""):
        names.append(f"[{host}]" if ":" in host else host)
    names.extend(name.strip().lower() for name in extra if name.strip())
    return list(dict.fromkeys(names))


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` (port 0: any free port).

    Binding before the server starts lets a taken port be one clear error
    before anything claims to be listening.
    """
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    try:
        return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as error:
        raise port_unavailable(error, host, port) from None


def port_unavailable(error: OSError, host: str, port: int) -> PortUnavailable:
    """Why ``host:port`` could not be bound, in words a user can act on."""
    where = f"{host}:{port}"
    if error.errno == errno.EADDRINUSE:
        reason = f"port {port} on {host} is taken (another program listens there)"
    elif error.errno == errno.EADDRNOTAVAIL:
        reason = f"{host} is not an address of this machine"
    elif error.errno == errno.EACCES:
        reason = f"not allowed to listen on {where} (ports below 1024 need privileges)"
    elif isinstance(error, socket.gaierror):
        reason = f"cannot resolve {host!r}: {error.strerror}"
    else:
        reason = f"cannot listen on {where}: {error.strerror or error}"
    return PortUnavailable(error.errno or 0, reason)


def _config(app: ASGIApp) -> uvicorn.Config:
    return uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)


def serve(app: ASGIApp, listening: socket.socket) -> None:
    """Serve ``app`` on a socket from :func:`bind` until Ctrl-C or SIGTERM."""
    uvicorn.Server(_config(app)).run(sockets=[listening])


class BackgroundServer:
    """``app`` served by uvicorn on a thread of this process.

    ``port=0`` picks a free port; :attr:`url` tells which once started::

        with BackgroundServer(build_app(store, queue)) as server:
            print(server.url)
    """

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._server = uvicorn.Server(_config(app))
        self._socket: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="eventtrail-web", daemon=True)
        self.port = port

    def _run(self) -> None:
        assert self._socket is not None
        self._server.run(sockets=[self._socket])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> str:
        """Start serving; return the URL once the socket listens. Raises
        :class:`PortUnavailable` when the address cannot be bound."""
        self._socket = bind(self.host, self.port)
        self.port = int(self._socket.getsockname()[1])
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive():
                raise OSError(f"the web server could not start on {self.host}:{self.port}")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"the web server did not start within {timeout:g} s")
            time.sleep(0.01)
        return self.url

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, finish requests in flight, and join the thread."""
        self._server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._socket is not None:
            self._socket.close()

    def __enter__(self) -> BackgroundServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
