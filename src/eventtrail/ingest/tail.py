"""Reading a log file's complete lines, and following it across rotation.

A :class:`Tail` hands out the lines written since its last call and keeps
where it stands as a :class:`Position` (device, inode, byte offset, line
number of each file it reads), which the caller saves once the lines are
safely sent: a restart resumes there, so nothing is read twice or skipped.

Rotation, as logrotate does it:

- rename and a new file (nginx and HAProxy reopen on a signal): the renamed
  file is read to its end, and kept open until it has been quiet for
  :data:`QUIET_SECONDS` (the gateway may still write to it until it
  reopens), while the new file is read from its start;
- ``copytruncate``: the file shrinks below the offset; it is read again from
  its start (what was written between the copy and the truncation is lost:
  that is ``copytruncate``'s own gap);
- a restart that finds another file under the name: the file of the saved
  inode is looked for beside it (``access.log.1``) and read to its end first.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["MAX_LINE_BYTES", "QUIET_SECONDS", "Line", "Position", "Tail"]

#: A longer line is skipped (and reported), so that memory stays bounded.
MAX_LINE_BYTES = 1024 * 1024

#: How long a rotated file is still read after its last write.
QUIET_SECONDS = 5.0

_READ_BYTES = 256 * 1024


@dataclass(frozen=True, slots=True)
class Line:
    """One line: its text (``None`` when it was not UTF-8 or too long, with
    ``problem`` saying which), its number in its file, and the file."""

    text: str | None
    number: int
    path: str
    problem: str = ""


@dataclass(slots=True)
class _Cursor:
    dev: int
    inode: int
    offset: int
    line: int

    def to_document(self) -> dict[str, int]:
        return {"dev": self.dev, "inode": self.inode, "offset": self.offset, "line": self.line}


@dataclass(frozen=True, slots=True)
class Position:
    """Where a :class:`Tail` stands: the current file and the rotated ones
    still read. JSON-able through :meth:`to_document`."""

    current: dict[str, int] | None
    rotated: list[dict[str, int]]

    def to_document(self) -> dict[str, Any]:
        return {"current": self.current, "rotated": self.rotated}

    @classmethod
    def from_document(cls, document: Any) -> Position | None:
        try:
            current = document["current"]
            rotated = list(document["rotated"])
            for cursor in [current, *rotated] if current else rotated:
                if not all(isinstance(cursor[key], int) for key in ("dev", "inode", "offset", "line")):
                    return None
        except (KeyError, TypeError):
            return None
        return cls(current, rotated)


class _Reader:
    """One open file (one inode) and the part of a line read past its last newline."""

    def __init__(self, file: BinaryIO, cursor: _Cursor, name: str, clock: Callable[[], float]) -> None:
        self.file = file
        self.cursor = cursor
        self.name = name
        self.pending = b""
        self.skipping = False
        self._clock = clock
        self.last_data = clock()

    def read(self, lines: list[Line], budget: int) -> int:
        """Append the complete lines available now; return the bytes read."""
        chunk = self.file.read(min(budget, _READ_BYTES))
        if not chunk:
            return 0
        self.last_data = self._clock()
        data = self.pending + chunk
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            self._line(data[start:end], lines)
            self.cursor.offset += end + 1 - start
            start = end + 1
        self.pending = data[start:]
        if len(self.pending) > MAX_LINE_BYTES:
            # Account for the bytes now; the rest of the line is skipped.
            if not self.skipping:
                self.cursor.line += 1
                lines.append(Line(None, self.cursor.line, self.name, f"longer than {MAX_LINE_BYTES:,} bytes"))
            self.cursor.offset += len(self.pending)
            self.pending = b""
            self.skipping = True
        return len(chunk)

    def _line(self, raw: bytes, lines: list[Line]) -> None:
        if self.skipping:
            self.skipping = False
            return
        self.cursor.line += 1
        if raw.endswith(b"\r"):
            raw = raw[:-1]
        if not raw.strip():
            return
        if len(raw) > MAX_LINE_BYTES:
            lines.append(Line(None, self.cursor.line, self.name, f"longer than {MAX_LINE_BYTES:,} bytes"))
            return
        try:
            lines.append(Line(raw.decode("utf-8"), self.cursor.line, self.name))
        except UnicodeDecodeError as error:
            lines.append(
                Line(None, self.cursor.line, self.name, f"not UTF-8 ({error.reason} at byte {error.start})")
            )

    def finish(self, lines: list[Line]) -> None:
        """The last line of a file that does not end with a newline."""
        if self.pending and not self.skipping:
            self._line(self.pending, lines)
            self.cursor.offset += len(self.pending)
            self.pending = b""

    def close(self) -> None:
        self.file.close()


class Tail:
    """The lines of ``path``, from ``position`` on (its start when ``None``,
    or its end with ``from_end``)."""

    def __init__(
        self,
        path: Path,
        position: Position | None = None,
        *,
        from_end: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self._clock = clock
        self._current: _Reader | None = None
        self._rotated: list[_Reader] = []
        #: Whether the last :meth:`poll` reached the end of the current file.
        self.at_end = False
        saved = position.current if position else None
        for cursor in position.rotated if position else []:
            self._resume_rotated(cursor)
        self._open_current(saved, from_end=from_end)

    # -- opening ---------------------------------------------------------------

    def _open(self, path: Path) -> tuple[BinaryIO, os.stat_result] | None:
        try:
            file = path.open("rb")
        except FileNotFoundError:
            return None
        return file, os.fstat(file.fileno())

    def _open_current(self, saved: dict[str, int] | None, *, from_end: bool = False) -> None:
        opened = self._open(self.path)
        if opened is None:
            if saved:
                self._resume_rotated(saved)
            return
        file, stat = opened
        cursor = _Cursor(stat.st_dev, stat.st_ino, 0, 0)
        if saved and (saved["dev"], saved["inode"]) == (stat.st_dev, stat.st_ino):
            if stat.st_size >= saved["offset"]:
                cursor = _Cursor(**saved)
        elif saved:
            # Another file under the name: the saved one was rotated while we were away.
            self._resume_rotated(saved)
        elif from_end:
            cursor.offset = stat.st_size
        file.seek(cursor.offset)
        self._current = _Reader(file, cursor, str(self.path), self._clock)

    def _resume_rotated(self, saved: dict[str, int]) -> None:
        for candidate in sorted(self.path.parent.glob(self.path.name + "*")):
            try:
                stat = candidate.stat()
            except OSError:
                continue
            if (stat.st_dev, stat.st_ino) == (saved["dev"], saved["inode"]) and candidate != self.path:
                file = candidate.open("rb")
                offset = saved["offset"] if stat.st_size >= saved["offset"] else 0
                file.seek(offset)
                cursor = _Cursor(stat.st_dev, stat.st_ino, offset, saved["line"] if offset else 0)
                self._rotated.append(_Reader(file, cursor, str(candidate), self._clock))
                return

    # -- reading ---------------------------------------------------------------

    def poll(self, budget: int = 4 * 1024 * 1024) -> list[Line]:
        """The complete lines written since the last call (up to about
        ``budget`` bytes), rotation handled."""
        lines: list[Line] = []
        for reader in list(self._rotated):
            while budget > 0 and (read := reader.read(lines, budget)):
                budget -= read
            if budget > 0 and self._clock() - reader.last_data > QUIET_SECONDS:
                reader.finish(lines)
                reader.close()
                self._rotated.remove(reader)
        self.at_end = False
        if self._current is None:
            self._open_current(None)
        # Twice at most: after a rotation, the new file is read at once.
        for _ in range(2):
            current = self._current
            if current is None:
                self.at_end = not self._rotated
                return lines
            while budget > 0 and (read := current.read(lines, budget)):
                budget -= read
            if budget <= 0:
                return lines
            self.at_end = True
            if not self._rotated_away(current):
                break
        return lines

    def _rotated_away(self, current: _Reader) -> bool:
        """Handle a rotation of the current file; whether another file took its name."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return False  # renamed, the new file not created yet: keep reading the old one
        if (stat.st_dev, stat.st_ino) != (current.cursor.dev, current.cursor.inode):
            self._rotated.append(current)
            self._current = None
            self._open_current(None)
            return True
        if stat.st_size < current.cursor.offset:
            current.file.seek(0)
            current.cursor.offset = 0
            current.cursor.line = 0
            current.pending = b""
            current.skipping = False
        return False

    def finish(self) -> list[Line]:
        """At the end of a one-off read: the last lines, including one
        without a final newline."""
        lines = self.poll(budget=1 << 62)
        for reader in [*self._rotated, *([self._current] if self._current else [])]:
            reader.finish(lines)
        return lines

    @property
    def position(self) -> Position:
        """Where the lines handed out so far end."""
        current = self._current.cursor.to_document() if self._current else None
        return Position(current, [reader.cursor.to_document() for reader in self._rotated])

    def close(self) -> None:
        for reader in [*self._rotated, *([self._current] if self._current else [])]:
            reader.close()
        self._rotated.clear()
        self._current = None
