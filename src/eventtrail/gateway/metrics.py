"""The gateway's counters, in the Prometheus text exposition format (0.0.4).

Written out by hand rather than with ``prometheus_client``: a dozen counters
read from plain attributes need no registry, and the request path then pays
for an integer increment, not a lock.
"""

from __future__ import annotations

from collections import Counter

from eventtrail.gateway.publisher import Publisher

__all__ = ["CONTENT_TYPE", "GatewayMetrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class GatewayMetrics:
    """Requests by service and outcome, plus the publisher's counts."""

    def __init__(self) -> None:
        #: (service, outcome) -> requests; outcome is a status class (2xx...)
        #: or an upstream error kind (timeout, refused, reset, error).
        self.requests: Counter[tuple[str, str]] = Counter()
        self.unrouted = 0

    def count(self, service: str, outcome: str) -> None:
        self.requests[(service, outcome)] += 1

    def render(self, publisher: Publisher | None) -> bytes:
        lines = [
            "# HELP eventtrail_gateway_requests_total Requests proxied, by service and outcome.",
            "# TYPE eventtrail_gateway_requests_total counter",
        ]
        for (service, outcome), value in sorted(self.requests.items()):
            labels = f'service="{_label(service)}",outcome="{outcome}"'
            lines.append(f"eventtrail_gateway_requests_total{{{labels}}} {value}")
        lines += [
            "# HELP eventtrail_gateway_unrouted_requests_total Requests no route matched (404).",
            "# TYPE eventtrail_gateway_unrouted_requests_total counter",
            f"eventtrail_gateway_unrouted_requests_total {self.unrouted}",
        ]
        if publisher is not None:
            counts = publisher.counts()
            for name, kind, help_text, value in (
                ("events_published_total", "counter", "Events handed to the publisher.", counts.published),
                ("events_buffered", "gauge", "Events waiting in memory.", counts.buffered),
                ("events_sent_total", "counter", "Events the queue accepted.", counts.sent),
                ("events_spilled_total", "counter", "Events written to the spill file.", counts.spilled),
                ("events_spill_pending", "gauge", "Events waiting in the spill file.", counts.spill_pending),
                ("events_dropped_total", "counter", "Events neither sent nor kept.", counts.dropped),
                ("queue_errors_total", "counter", "Failed queue sends.", counts.queue_errors),
                ("spill_errors_total", "counter", "Failed spill file operations.", counts.spill_errors),
            ):
                lines += [
                    f"# HELP eventtrail_gateway_{name} {help_text}",
                    f"# TYPE eventtrail_gateway_{name} {kind}",
                    f"eventtrail_gateway_{name} {value}",
                ]
        return ("\n".join(lines) + "\n").encode()
