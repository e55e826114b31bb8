"""The read-model contract on the embedded store (a SQLite file)."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest

from eventtrail.embedded.store import SQLiteStore
from tests.contract.readmodels_contract import Opener, ReadModelsContract


class TestSQLiteReadModels(ReadModelsContract):
    @pytest.fixture
    def opener(self, tmp_path: Path) -> Opener:
        return functools.partial(SQLiteStore, tmp_path / "events.db")
