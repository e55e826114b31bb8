"""The gateway's counters, in the Prometheus text exposition format (0.0.4).

Written out by hand rather than with ``prometheus_client``: a dozen counters
read from plain attributes need no registry, and the request path then pays
for an integer increment, not a lock.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from eventtrail.gateway.publisher import DROP_REASONS, Publisher

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
        #: Restarts of the worker child (``eventtrail up`` sets it; else not shown).
        self.worker_restarts: Callable[[], int] | None = None

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
        if self.worker_restarts is not None:
            lines += [
                "# HELP eventtrail_gateway_worker_restarts_total Times the worker child was restarted.",
                "# TYPE eventtrail_gateway_worker_restarts_total counter",
                f"eventtrail_gateway_worker_restarts_total {self.worker_restarts()}",
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
                ("journal_errors_total", "counter", "Failed journal writes.", counts.journal_errors),
                (
                    "events_inherited_total",
                    "counter",
                    "Events found at start in the spill file or a killed predecessor's journal.",
                    counts.inherited,
                ),
            ):
                lines += [
                    f"# HELP eventtrail_gateway_{name} {help_text}",
                    f"# TYPE eventtrail_gateway_{name} {kind}",
                    f"eventtrail_gateway_{name} {value}",
                ]
            lines += [
                "# HELP eventtrail_gateway_events_dropped_by_reason_total"
                " Events neither sent nor kept, by reason.",
                "# TYPE eventtrail_gateway_events_dropped_by_reason_total counter",
            ]
            for reason in DROP_REASONS:
                value = counts.dropped_by_reason.get(reason, 0)
                lines.append(
                    f'eventtrail_gateway_events_dropped_by_reason_total{{reason="{reason}"}} {value}'
                )
        return ("\n".join(lines) + "\n").encode()
