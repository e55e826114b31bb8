"""Following a log file on a real filesystem: partial writes, rotation by
rename and by copytruncate, restarts from a saved position, and lines that
are too long or not UTF-8."""

from __future__ import annotations

import itertools
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventtrail.ingest.tail import MAX_LINE_BYTES, Position, Tail


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def texts(tail: Tail) -> list[str | None]:
    return [line.text for line in tail.poll()]


def append(path: Path, data: bytes) -> None:
    with path.open("ab") as file:
        file.write(data)


def test_only_complete_lines_are_read_and_the_rest_waits(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"one\ntw")
    tail = Tail(log)
    assert texts(tail) == ["one"]
    assert tail.position.current is not None and tail.position.current["offset"] == 4
    append(log, b"o\r\n\n  \nthree\n")
    lines = tail.poll()
    assert [(line.text, line.number) for line in lines] == [("two", 2), ("three", 5)]
    assert texts(tail) == []
    tail.close()


def test_rename_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    clock = Clock()
    log = tmp_path / "access.log"
    log.write_bytes(b"a1\n")
    tail = Tail(log, clock=clock)
    assert texts(tail) == ["a1"]
    log.rename(tmp_path / "access.log.1")
    # The gateway writes to its open file until it reopens.
    append(tmp_path / "access.log.1", b"a2\n")
    assert texts(tail) == ["a2"]
    log.write_bytes(b"b1\n")
    assert texts(tail) == ["b1"]
    append(tmp_path / "access.log.1", b"a3\n")
    append(log, b"b2\n")
    assert sorted(text or "" for text in texts(tail)) == ["a3", "b2"]
    assert len(tail.position.rotated) == 1
    clock.now += 60  # the old file stayed quiet: it is let go
    assert texts(tail) == []
    assert tail.position.rotated == []
    tail.close()


def test_copytruncate_starts_again_from_the_top(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a1\na2\n")
    tail = Tail(log)
    assert texts(tail) == ["a1", "a2"]
    (tmp_path / "access.log.1").write_bytes(log.read_bytes())
    log.write_bytes(b"")
    assert texts(tail) == []
    append(log, b"b1\n")
    lines = tail.poll()
    assert [(line.text, line.number) for line in lines] == [("b1", 1)]
    tail.close()


def test_a_restart_resumes_at_the_saved_position(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a1\na2\n")
    tail = Tail(log)
    assert texts(tail) == ["a1", "a2"]
    saved = Position.from_document(tail.position.to_document())
    tail.close()
    append(log, b"a3\n")
    again = Tail(log, saved)
    lines = again.poll()
    assert [(line.text, line.number) for line in lines] == [("a3", 3)]
    again.close()


def test_a_restart_after_a_rotation_reads_the_rest_of_the_rotated_file_first(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a1\n")
    tail = Tail(log)
    assert texts(tail) == ["a1"]
    saved = tail.position
    tail.close()
    # While nobody followed: more lines, a rotation, lines in the new file.
    append(log, b"a2\n")
    log.rename(tmp_path / "access.log.1")
    log.write_bytes(b"b1\n")
    again = Tail(log, saved)
    assert sorted(text or "" for text in texts(again)) == ["a2", "b1"]
    again.close()


def test_a_malformed_position_is_none() -> None:
    documents: list[object] = [
        None,
        {},
        {"current": 3, "rotated": []},
        {"current": {"dev": "x"}, "rotated": []},
        [],
    ]
    for document in documents:
        assert Position.from_document(document) is None


def test_long_and_undecodable_lines_are_reported_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"ok1\n" + b"x" * (MAX_LINE_BYTES + 10) + b"\n\xff\xfe bad\nok2\n")
    tail = Tail(log)
    lines = tail.poll(budget=1 << 30)
    assert [(line.text, line.number) for line in lines if line.text] == [("ok1", 1), ("ok2", 4)]
    problems = [(line.number, line.problem.split(" ")[0]) for line in lines if line.text is None]
    assert problems == [(2, "longer"), (3, "not")]
    tail.close()


def test_the_last_line_without_a_newline_is_read_when_finishing(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"one\ntwo")
    tail = Tail(log)
    assert [line.text for line in tail.finish()] == ["one", "two"]
    tail.close()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lines=st.lists(
        st.text(
            st.characters(blacklist_characters="\n\r", blacklist_categories=["Cs"]), min_size=1, max_size=30
        ).filter(str.strip),
        max_size=30,
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=2000), max_size=8),
    restart_at=st.integers(min_value=0, max_value=8),
)
def test_any_split_of_writes_reads_every_line_once(
    tmp_path_factory: object, lines: list[str], cuts: list[int], restart_at: int
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "access.log"
        data = "".join(line + "\n" for line in lines).encode()
        points = sorted({0, len(data), *(cut for cut in cuts if cut < len(data))})
        log.write_bytes(b"")
        tail = Tail(log)
        seen: list[str] = []
        for step, (start, end) in enumerate(itertools.pairwise(points)):
            append(log, data[start:end])
            seen += [line.text or "" for line in tail.poll()]
            if step == restart_at:
                saved = tail.position
                tail.close()
                tail = Tail(log, saved)
        seen += [line.text or "" for line in tail.poll()]
        tail.close()
        assert seen == lines
