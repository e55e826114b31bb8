"""The HTTP API and web UI over a store and a queue.

from eventtrail.web import BackgroundServer, build_app

with BackgroundServer(build_app(store, queue), port=0) as server:
    print(server.url)
"""

from eventtrail.web.app import build_app
from eventtrail.web.server import (
    BackgroundServer,
    PortUnavailable,
    TokenRequired,
    bind,
    check_binding,
    check_token,
    is_loopback,
    serve,
)

__all__ = [
    "BackgroundServer",
    "PortUnavailable",
    "TokenRequired",
    "bind",
    "build_app",
    "check_binding",
    "check_token",
    "is_loopback",
    "serve",
]
