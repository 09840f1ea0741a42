"""Releasing the per-greenlet database connections Asok opened (bridge.dbrelease), on a real SQLite engine."""

from __future__ import annotations

import sqlite3

import pytest
from asok.orm.engines import SQLiteEngine

from asok_green.bridge.dbrelease import holds_connection, release_db_connections

pytestmark = pytest.mark.quick


class CountingEngine(SQLiteEngine):
    """Asok's SQLite engine, counting how often it is asked to close its connections."""

    closes = 0

    def close_connections(self) -> None:
        self.closes += 1
        super().close_connections()


@pytest.fixture
def engine(tmp_path):
    return CountingEngine(str(tmp_path / "db.sqlite3"))


def test_an_open_connection_is_closed(engine):
    conn = engine.get_connection()
    conn.execute("select 1")
    assert holds_connection(engine)
    release_db_connections({"db": engine})
    assert engine.closes == 1 and not holds_connection(engine)
    with pytest.raises(sqlite3.ProgrammingError):
        conn.execute("select 1")


def test_nothing_open_means_nothing_to_close(engine):
    release_db_connections({"db": engine})
    engine.get_connection()
    release_db_connections({"db": engine})
    release_db_connections({"db": engine})
    assert engine.closes == 1


def test_an_engine_without_asoks_local_is_always_released():
    class Other:
        closes = 0

        def close_connections(self):
            self.closes += 1

    other = Other()
    release_db_connections({"x": other})
    assert other.closes == 1
