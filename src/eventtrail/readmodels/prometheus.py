"""The rollups in the Prometheus text exposition format (0.0.4), for
``/metrics`` on ``eventtrail serve``: per caller and service, calls and
failures as counters and latency as a histogram, all since the first stored
call, so that Grafana and Alertmanager work on them (``rate()``,
``histogram_quantile()``).

Read from the all-time rollup rows (one per caller and service): a scrape
costs the services, never the events nor the time the read models were
kept. Written by hand like the gateway's metrics: a few families need no
registry.
"""

from __future__ import annotations

from collections.abc import Iterable

from eventtrail.readmodels.model import FAILURE_KINDS
from eventtrail.readmodels.port import ReadModels
from eventtrail.readmodels.sketch import LatencySketch, value_of

__all__ = ["CONTENT_TYPE", "LATENCY_BOUNDS_SECONDS", "render_metrics"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: The histogram's upper bounds (``le``), in seconds.
LATENCY_BOUNDS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**labels: str) -> str:
    return "{" + ",".join(f'{name}="{_label(value)}"' for name, value in labels.items()) + "}"


def _number(value: float) -> str:
    return repr(float(value)) if isinstance(value, float) else str(value)


def _histogram(name: str, labels: dict[str, str], sketch: LatencySketch) -> Iterable[str]:
    """Cumulative counts per bound, from the sketch's buckets (each bucket's
    representative value is within the sketch's accuracy of its values)."""
    ordered = sorted((value_of(key) / 1000, count) for key, count in sketch.counts.items())
    total = sum(count for _, count in ordered)
    seen = 0
    position = 0
    for bound in LATENCY_BOUNDS_SECONDS:
        while position < len(ordered) and ordered[position][0] <= bound:
            seen += ordered[position][1]
            position += 1
        yield f"{name}_bucket{_labels(**labels, le=_number(bound))} {seen}"
    yield f"{name}_bucket{_labels(**labels, le='+Inf')} {total}"
    yield f"{name}_sum{_labels(**labels)} {_number(sum(value * count for value, count in ordered))}"
    yield f"{name}_count{_labels(**labels)} {total}"


def render_metrics(models: ReadModels) -> bytes:
    """Every (caller, service) edge's counters and histogram, as text."""
    totals = models.all_time()
    edges = sorted((edge, rollup) for edge, rollup in totals.items() if rollup.calls > 0)
    lines = [
        "# HELP eventtrail_service_calls_total Calls to a service that ended (a response or an error).",
        "# TYPE eventtrail_service_calls_total counter",
    ]
    lines += [
        f"eventtrail_service_calls_total{_labels(caller=caller, service=service)} {rollup.calls}"
        for (caller, service, _), rollup in edges
    ]
    lines += [
        "# HELP eventtrail_service_call_failures_total Failed calls, by kind"
        " (5xx, timeout, refused, reset, error).",
        "# TYPE eventtrail_service_call_failures_total counter",
    ]
    for (caller, service, _), rollup in edges:
        for kind, count in zip(FAILURE_KINDS, rollup.failures, strict=True):
            labels = _labels(caller=caller, service=service, kind=kind)
            lines.append(f"eventtrail_service_call_failures_total{labels} {count}")
    lines += [
        "# HELP eventtrail_service_calls_abandoned_total Calls whose client left before they were"
        " answered (counted in the calls, not in the failures).",
        "# TYPE eventtrail_service_calls_abandoned_total counter",
    ]
    for (caller, service, _), rollup in edges:
        labels = _labels(caller=caller, service=service)
        lines.append(f"eventtrail_service_calls_abandoned_total{labels} {rollup.abandoned}")
    name = "eventtrail_service_call_duration_seconds"
    lines += [
        f"# HELP {name} Latency of calls that reported one, from the rollups' sketches.",
        f"# TYPE {name} histogram",
    ]
    for (caller, service, _), rollup in edges:
        lines += _histogram(name, {"caller": caller, "service": service}, rollup.sketch)
    return ("\n".join(lines) + "\n").encode()
