"""The gateway: a reverse proxy that records every call it makes as events,
and the hooks that let other Python gateways and services record the same.

Programmatic use::

    from eventtrail.gateway import GatewayServer, build_app, load_gateway_config, open_publisher

    config = load_gateway_config(Path("gateway.toml"))
    publisher = open_publisher(config, settings)       # started, with its spill file
    with GatewayServer(build_app(config, publisher), "127.0.0.1", 8080, publisher=publisher):
        ...                                            # stop() flushes the publisher
"""

from eventtrail.gateway.config import (
    GatewayConfig,
    Recording,
    Route,
    load_gateway_config,
    parse_gateway_config,
)
from eventtrail.gateway.proxy import GatewayApp, build_app
from eventtrail.gateway.publisher import Publisher, PublisherCounts
from eventtrail.gateway.serve import GatewayServer, open_publisher

__all__ = [
    "GatewayApp",
    "GatewayConfig",
    "GatewayServer",
    "Publisher",
    "PublisherCounts",
    "Recording",
    "Route",
    "build_app",
    "load_gateway_config",
    "open_publisher",
    "parse_gateway_config",
]
