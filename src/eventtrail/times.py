"""Reading the moments and durations that people type."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

__all__ = ["format_duration", "parse_duration", "parse_moment"]

_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d+)?)\s*(?P<unit>ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``"90s"``, ``"15m"``, ``"1h30m"``, ``"7d"``... as a timedelta."""
    compact = text.strip().lower()
    position = 0
    seconds = 0.0
    for match in _DURATION.finditer(compact):
        if match.start() != position:
            break
        seconds += float(match["amount"]) * _UNITS[match["unit"]]
        position = match.end()
    if not compact or position != len(compact):
        raise ValueError(f"{text!r} is not a duration; use e.g. 90s, 15m, 2h, 7d or 1h30m")
    if seconds <= 0:
        raise ValueError(f"{text!r} is not a positive duration")
    return timedelta(seconds=seconds)


def parse_moment(text: str, *, now: datetime | None = None) -> datetime:
    """An ISO 8601 timestamp (UTC if it has no offset), ``now``, or a duration
    meaning that long ago (``15m``)."""
    now = now or datetime.now(UTC)
    stripped = text.strip()
    if stripped.lower() == "now":
        return now
    try:
        moment = datetime.fromisoformat(stripped)
    except ValueError:
        try:
            return now - parse_duration(stripped)
        except ValueError:
            raise ValueError(
                f"{text!r} is neither a timestamp (2020-05-01T20:00:00Z) nor a time ago (15m, 2h)"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def format_duration(seconds: float) -> str:
    """A short human form: ``850 ms``, ``3.2 s``, ``4 min``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
