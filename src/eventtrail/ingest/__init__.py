"""Producers for the gateways people already run: their access logs become
call events (``eventtrail ingest nginx|haproxy``)."""

from __future__ import annotations

from eventtrail.ingest.accesslog import Attempt, BadLine, LogFormat, ProxiedRequest, call_events
from eventtrail.ingest.haproxy import HAProxyFormat
from eventtrail.ingest.ingestor import IngestCounts, Ingestor
from eventtrail.ingest.nginx import NginxFormat
from eventtrail.ingest.tail import Line, Position, Tail

__all__ = [
    "FORMATS",
    "Attempt",
    "BadLine",
    "HAProxyFormat",
    "IngestCounts",
    "Ingestor",
    "Line",
    "LogFormat",
    "NginxFormat",
    "Position",
    "ProxiedRequest",
    "Tail",
    "call_events",
]

#: The formats ``eventtrail ingest`` reads, by name.
FORMATS: dict[str, LogFormat] = {"nginx": NginxFormat(), "haproxy": HAProxyFormat()}
