"""The embedded backend: a queue and a store, each in a SQLite file.

It needs nothing but Python: the default for one machine.
"""

from eventtrail.embedded.queue import SQLiteQueue
from eventtrail.embedded.store import SQLiteStore

__all__ = ["SQLiteQueue", "SQLiteStore"]
