"""Settings, and the backend they choose.

Each setting comes from, in increasing precedence: its default, the config
file (``EVENTTRAIL_CONFIG``, else ``./eventtrail.toml`` when it exists), the
environment (``EVENTTRAIL_<NAME>``), then command-line flags. The backend is
chosen here, never by editing code.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args, get_origin, get_type_hints

import msgspec

from eventtrail.event import DEFAULT_MAX_BODY_BYTES
from eventtrail.queue import Queue
from eventtrail.store import Store

if TYPE_CHECKING:
    from eventtrail.embedded.follower import FollowerProcess

__all__ = ["ConfigError", "Settings", "load_settings", "open_queue", "open_store", "start_follower"]

DEFAULT_CONFIG_FILE = "eventtrail.toml"
ENV_PREFIX = "EVENTTRAIL_"

_Positive = Annotated[int, msgspec.Meta(ge=1)]
_Seconds = Annotated[float, msgspec.Meta(gt=0)]


class ConfigError(Exception):
    """A setting is missing, unknown or has a value that cannot work."""


class Settings(msgspec.Struct, kw_only=True, forbid_unknown_fields=True, frozen=True):
    """Everything a command needs to find and use its backend."""

    backend: Literal["local", "aws"] = "local"
    """``local``: SQLite files in ``data_dir``; ``aws``: SQS and DynamoDB."""
    data_dir: str = ".eventtrail"
    """Where the embedded backend keeps ``queue.db`` and ``events.db``."""
    busy_timeout: Annotated[float, msgspec.Meta(gt=0, le=3600)] = 10.0
    """Seconds a call of the local backend waits for another process's lock
    on a SQLite file before failing (the worker then retries with backoff)."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1, le=DEFAULT_MAX_BODY_BYTES)] = DEFAULT_MAX_BODY_BYTES
    """Largest accepted message body (SQS's maximum is also the default)."""
    max_receives: _Positive = 5
    """Receives before a message that keeps failing moves to the dead letters."""
    visibility_timeout: _Seconds = 30.0
    """Seconds a received message stays hidden from other workers."""
    batch_size: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1000
    """Messages a worker takes per receive (SQS caps one receive at 10)."""
    retention_days: Annotated[float, msgspec.Meta(gt=0, le=3_650_000)] | None = None
    """Keep events this long (``None``: forever)."""
    queue_name: str = "event-queue"
    dlq_name: str = "event-queue-dlq"
    table_name: Annotated[str, msgspec.Meta(min_length=3, max_length=243, pattern=r"^[A-Za-z0-9_.-]+$")] = (
        "event"
    )
    """DynamoDB's rules for a table name, leaving room for the read models'
    table (``<table_name>-read-models``) within its 255 characters."""
    index_shards: Annotated[int, msgspec.Meta(ge=1, le=100)] = 16
    """Write shards of the DynamoDB Type and Source indexes (invariant 4): 16
    keep one busy type under 1,000 writes/s per index partition up to about
    14,000 events/s (docs/benchmarks.md)."""

    @property
    def queue_path(self) -> Path:
        return Path(self.data_dir) / "queue.db"

    @property
    def store_path(self) -> Path:
        return Path(self.data_dir) / "events.db"


_FIELDS = set(Settings.__struct_fields__)
_CHOICES = {
    name: [str(choice) for choice in get_args(hint)]
    for name, hint in get_type_hints(Settings).items()
    if get_origin(hint) is Literal
}


def _from_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            values = tomllib.load(file)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from None
    unknown = sorted(set(values) - _FIELDS)
    if unknown:
        raise ConfigError(
            f"{path}: unknown setting {', '.join(unknown)} (known: {', '.join(sorted(_FIELDS))})"
        )
    return values


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Merge defaults, config file, environment and ``overrides`` (flags;
    ``None`` values mean "not given")."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    origin: dict[str, str] = {}
    if config_file is None and environ.get(f"{ENV_PREFIX}CONFIG"):
        config_file = Path(environ[f"{ENV_PREFIX}CONFIG"])
    if config_file is None and Path(DEFAULT_CONFIG_FILE).is_file():
        config_file = Path(DEFAULT_CONFIG_FILE)
    if config_file is not None:
        for name, value in _from_file(config_file).items():
            values[name] = value
            origin[name] = f"{config_file}: {name}"
    for name in _FIELDS:
        variable = ENV_PREFIX + name.upper()
        if variable in environ:
            values[name] = environ[variable]
            origin[name] = variable
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = value
            origin[name] = "--" + name.replace("_", "-")
    # An empty variable means "unset" for the optional settings.
    if values.get("retention_days") == "":
        values["retention_days"] = None
    try:
        return msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as error:
        message = str(error)
        field = message.rpartition("$.")[2].rstrip("`") if "$." in message else ""
        where = origin.get(field, field)
        reason = message.split(" - at ")[0]
        if field in _CHOICES:
            reason = f"{reason}; expected one of {', '.join(_CHOICES[field])}"
        raise ConfigError(f"{where}: {reason[0].lower()}{reason[1:]}") from None


def _check_data_folder(settings: Settings, *, read_only: bool) -> None:
    """Fail with a :class:`ConfigError` (one line, exit 2) when the data
    folder cannot be used; create it (``0700``) for a command that writes.

    A command that only reads never creates it: a missing folder means
    nothing was recorded there, which is worth saying rather than showing an
    empty answer for a mistyped ``--data-dir``.
    """
    from eventtrail.embedded.sqlite import ensure_data_folder

    folder = Path(settings.data_dir)
    if folder.is_dir():
        return
    blocking = next((part for part in (folder, *folder.parents) if part.exists() and not part.is_dir()), None)
    if blocking is not None:
        where = "is a file" if blocking == folder else f"is under {blocking}, which is a file"
        raise ConfigError(
            f"the data folder {folder} {where}; give a folder with --data-dir or EVENTTRAIL_DATA_DIR"
        )
    if read_only:
        raise ConfigError(
            f"the data folder {folder} does not exist (nothing was recorded there yet:"
            " send events with `eventtrail send` or run `eventtrail demo` first, or give --data-dir)"
        )
    try:
        ensure_data_folder(folder)
    except OSError as error:
        raise ConfigError(f"cannot create the data folder {folder}: {error.strerror or error}") from None


def open_queue(settings: Settings, *, read_only: bool = False) -> Queue:
    """The queue of the configured backend.

    ``read_only``: for commands that only look (``status``, ``dlq list``):
    the local backend then never creates a file or folder and never takes
    the write lock; a missing data folder is a :class:`ConfigError`.
    """
    if settings.backend == "aws":
        from eventtrail.aws.backend import open_sqs_queue

        return open_sqs_queue(settings)
    from eventtrail.embedded.queue import SQLiteQueue

    _check_data_folder(settings, read_only=read_only)
    return SQLiteQueue(
        settings.queue_path,
        max_receives=settings.max_receives,
        read_only=read_only,
        busy_timeout_ms=round(settings.busy_timeout * 1000),
    )


def start_follower(settings: Settings) -> FollowerProcess | None:
    """The read-model follower a consumer runs beside its store, started
    (``None`` on AWS, where storing an event folds it)."""
    if settings.backend == "aws":
        return None
    from eventtrail.embedded.follower import FollowerProcess

    return FollowerProcess(settings.store_path, busy_timeout_ms=round(settings.busy_timeout * 1000)).start()


def open_store(settings: Settings, *, read_only: bool = False, project: bool = True) -> Store:
    """The store of the configured backend (``read_only`` as for :func:`open_queue`).

    ``project=False``: the embedded store leaves its read models to a
    follower (:func:`start_follower`) instead of folding each batch before
    ``append`` returns; DynamoDB folds as it stores either way."""
    if settings.backend == "aws":
        from eventtrail.aws.backend import open_dynamodb_store

        return open_dynamodb_store(settings)
    from eventtrail.embedded.store import SQLiteStore

    _check_data_folder(settings, read_only=read_only)
    return SQLiteStore(
        settings.store_path,
        read_only=read_only,
        project=project,
        busy_timeout_ms=round(settings.busy_timeout * 1000),
    )
