"""The HTTP API and web UI over a store and a queue.

from eventtrail.web import BackgroundServer, build_app

with BackgroundServer(build_app(store, queue), port=0) as server:
    print(server.url)
"""

from eventtrail.web.app import build_app
from eventtrail.web.server import BackgroundServer, TokenRequired, check_binding, is_loopback, serve

__all__ = ["BackgroundServer", "TokenRequired", "build_app", "check_binding", "is_loopback", "serve"]
