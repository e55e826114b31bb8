"""Hot index partitions: for a steady load of one event type from one source
(the gateway's ``MICROSERVICE_REQUEST`` from ``Gateway``), the highest write
rate any single index partition key receives, under the article's indexes
(``Type`` and ``Source`` as GSI partition keys) and under eventtrail's
write-sharded ones (``<type>#<shard>``, shard = crc32(id) mod shards).

A DynamoDB partition takes about 1,000 write units per second; an index
partition that receives more throttles the index, and index throttling
throttles the table's writes. Target: eventtrail stays under 1,000 writes/s
per index partition key at 10,000 events/s.

The simulation makes real event ids (UUIDv7, as the gateway does) at the
given rate for ``--seconds`` seconds of event time and counts the writes each
index partition key receives in every one-second window.

    .venv/bin/python benchmarks/partition_load.py [--rate 10000] [--seconds 10] [--shards 8 16 32]
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable

from eventtrail.aws.schema import shard_of
from eventtrail.ids import uuid7_str

#: The index partition key an event id is written under.
KeyOf = Callable[[str], str]

PARTITION_LIMIT = 1000
TYPE = "MICROSERVICE_REQUEST"
SOURCE = "Gateway"


def peak_per_key(rate: int, seconds: int, key_of: dict[str, KeyOf]) -> dict[str, int]:
    """For each index, the highest writes/s any one of its partition keys gets."""
    ids = [[uuid7_str() for _ in range(rate)] for _ in range(seconds)]
    peaks: dict[str, int] = {}
    for index, make_key in key_of.items():
        peak = 0
        for second in ids:
            counts = Counter(make_key(event_id) for event_id in second)
            peak = max(peak, max(counts.values()))
        peaks[index] = peak
    return peaks


def sharded(value: str, shards: int) -> KeyOf:
    """eventtrail's index key: the value and the event's write shard."""
    return lambda event_id: f"{value}#{shard_of(event_id, shards)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=int, default=10_000, help="events per second")
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--shards", type=int, nargs="+", default=[8, 16, 32])
    args = parser.parse_args()

    designs: list[tuple[str, dict[str, KeyOf]]] = [
        ("article (Type, Source)", {"Type-Index": lambda _: TYPE, "Source-Index": lambda _: SOURCE})
    ]
    for shards in args.shards:
        designs.append(
            (
                f"eventtrail, {shards} shards",
                {"Type-Index": sharded(TYPE, shards), "Source-Index": sharded(SOURCE, shards)},
            )
        )
    print(f"{args.rate:,} events/s of one type from one source, {args.seconds} s")
    header = f"{'peak writes/s, Type-Index':>26} {'peak writes/s, Source-Index':>28}"
    print(f"{'design':<26} {header}  vs {PARTITION_LIMIT:,}/s")
    article_peak = 0
    for label, key_of in designs:
        peaks = peak_per_key(args.rate, args.seconds, key_of)
        worst = max(peaks.values())
        if label.startswith("article"):
            article_peak = worst
        verdict = "under" if worst < PARTITION_LIMIT else "OVER"
        ratio = f", {article_peak / worst:.1f}x less than the article" if worst != article_peak else ""
        print(f"{label:<26} {peaks['Type-Index']:>26,} {peaks['Source-Index']:>28,}  {verdict}{ratio}")
    print(
        f"shards needed at {args.rate:,}/s: more than {args.rate / PARTITION_LIMIT:.0f}"
        " (the peak per key is about rate / shards, plus a few percent of hashing noise)"
    )


if __name__ == "__main__":
    main()
