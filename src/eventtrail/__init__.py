"""eventtrail: every call an API gateway makes, recorded as an immutable event.

The public API: the event and its wire format, the queue and store ports, the
consumer core and the worker. Backends live in :mod:`eventtrail.embedded` and
:mod:`eventtrail.aws`.
"""

from eventtrail.config import Settings, load_settings, open_queue, open_store
from eventtrail.consumer import Consumer, Outcome, Record, Verdict
from eventtrail.event import Event, InvalidEvent, encode_event, parse_event
from eventtrail.queue import DeadLetter, Message, Queue, QueueStats
from eventtrail.store import AppendResult, AppendStatus, Page, Store
from eventtrail.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "AppendResult",
    "AppendStatus",
    "Consumer",
    "DeadLetter",
    "Event",
    "InvalidEvent",
    "Message",
    "Outcome",
    "Page",
    "Queue",
    "QueueStats",
    "Record",
    "Settings",
    "Store",
    "Verdict",
    "Worker",
    "encode_event",
    "load_settings",
    "open_queue",
    "open_store",
    "parse_event",
]
