"""The DynamoDB table's shape: the one source of truth for its names and keys.

Both the store adapter (:mod:`eventtrail.aws.dynamodb`), ``eventtrail aws
init`` and the CDK stack (``infra/``) read these names; nothing else spells
them. This module imports nothing from boto3 or the CDK, so both can use it.

- ``RequestId`` (partition key) and ``TimestampId`` (sort key,
  ``<normalised timestamp>#<id>``): a request's flow is one Query in time
  order, and two events never share a key (invariant 1) while a redelivered
  event lands on its own key again (invariant 2).
- ``Timestamp``, ``Id``, ``Type``, ``Source``, ``Data`` as in the article;
  ``Data`` is a typed map.
- The ``Type`` and ``Source`` indexes are write-sharded (invariant 4): their
  partition keys are ``<value>#<shard>`` with the shard derived from the
  event id, so one busy type spreads over ``index_shards`` index partitions.
  Readers query every shard and merge them by ``TimestampId``.
- ``ExpiresAt`` (epoch seconds) is the TTL attribute for retention.
- ``DataFloats`` (only on items that need it) keeps ``3.0`` a float.

The read models live in a second table beside it
(:func:`read_models_table_name`, shaped by :data:`READ_MODELS`): one generic
key (``Key``, ``Sort``) for rollup rows, request summaries and the version
record, and one index (``Requests-Index``) that lists request summaries by
start time. See :mod:`eventtrail.readmodels.dynamodb`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

__all__ = [
    "INDEX_SHARDS_TAG",
    "READ_MODELS",
    "TABLE",
    "IndexSchema",
    "ReadModelsSchema",
    "TableSchema",
    "read_models_table_name",
    "shard_of",
]

#: The table tag that records how many write shards the indexes use.
INDEX_SHARDS_TAG = "eventtrail:index-shards"


@dataclass(frozen=True, slots=True)
class IndexSchema:
    name: str
    """Index name."""
    partition_key: str
    """Attribute holding ``<value>#<shard>``."""
    attribute: str
    """The event attribute the index serves (``Type`` or ``Source``)."""


@dataclass(frozen=True, slots=True)
class TableSchema:
    partition_key: str = "RequestId"
    sort_key: str = "TimestampId"
    timestamp: str = "Timestamp"
    id: str = "Id"
    type: str = "Type"
    source: str = "Source"
    data: str = "Data"
    ttl: str = "ExpiresAt"
    float_paths: str = "DataFloats"
    """Where ``Data`` held integral floats such as ``3.0`` (JSON list of paths),
    so that they come back as floats; absent when there are none."""
    by_type: IndexSchema = IndexSchema("Type-Index", "TypeShard", "Type")
    by_source: IndexSchema = IndexSchema("Source-Index", "SourceShard", "Source")

    @property
    def indexes(self) -> tuple[IndexSchema, IndexSchema]:
        return (self.by_type, self.by_source)

    def sort_key_of(self, timestamp: str, event_id: str) -> str:
        return f"{timestamp}#{event_id}"

    def key_attributes(self) -> list[tuple[str, str]]:
        """(name, DynamoDB scalar type) of every key attribute of the table and indexes."""
        return [
            (self.partition_key, "S"),
            (self.sort_key, "S"),
            *((index.partition_key, "S") for index in self.indexes),
        ]


TABLE = TableSchema()


def shard_of(event_id: str, shards: int) -> int:
    """The index write shard of an event: stable (a redelivery lands on the
    same shard) and spread evenly whatever the id's format."""
    return zlib.crc32(event_id.encode()) % shards


@dataclass(frozen=True, slots=True)
class ReadModelsSchema:
    """The read-model table: every item has the generic key ``Key`` +
    ``Sort``; request summaries also carry ``RequestDay``
    (``<start day>#<shard>``) and ``RequestOrder`` (``<start>#<request id>``),
    the keys of :attr:`requests_index`; other items lack them, so the index
    holds summaries only."""

    partition_key: str = "Key"
    sort_key: str = "Sort"
    ttl: str = "ExpiresAt"
    requests_index: IndexSchema = IndexSchema("Requests-Index", "RequestDay", "RequestOrder")
    rollup_shards: int = 4
    """Partitions each day (minute rows) or month (hour rows) of rollups is
    spread over; readers query all of them."""
    request_shards: int = 4
    """Partitions each day of the request index is spread over."""

    def key_attributes(self) -> list[tuple[str, str]]:
        """(name, DynamoDB scalar type) of every key attribute of the table and its index."""
        return [
            (self.partition_key, "S"),
            (self.sort_key, "S"),
            (self.requests_index.partition_key, "S"),
            (self.requests_index.attribute, "S"),
        ]


READ_MODELS = ReadModelsSchema()

#: What the read-model table's name adds to the events table's name.
READ_MODELS_SUFFIX = "-read-models"


def read_models_table_name(table_name: str) -> str:
    """The read-model table kept beside the events table ``table_name``:
    derived, so that the store, ``eventtrail aws init`` and the stack agree
    without another setting."""
    return f"{table_name}{READ_MODELS_SUFFIX}"
