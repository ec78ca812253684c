"""The dashboard's pool of DuckDB connections (``dashboards.data.Pool``): the first made by the
first query, the others in the background right after (no query waits for one being made), never
more than its size at once, each answering on its own, back in the pool after a query that failed;
and what its query log records. Waits are bounded by events, never by time."""

from __future__ import annotations

import json
import threading

import duckdb
import pytest

from dashboards import data

WAIT_S = 30  # a bound on every wait below, reached only where the pool is broken


def filled(pool: data.Pool) -> None:
    with pool._free:
        assert pool._free.wait_for(lambda: not pool._filling, WAIT_S)


def test_the_first_query_makes_one_the_others_follow(tmp_path):
    pool = data.Pool(str(tmp_path), 3)
    assert pool._made == 0  # nothing made before a query
    with pool.connection() as a:
        assert a.execute("select count(*) from patients").fetchone() == (0,)  # the lake's views, empty here
    filled(pool)
    assert pool._made == 3 and len(pool._idle) == 3
    with pool.connection() as a, pool.connection() as b, pool.connection() as c:
        assert len({id(a), id(b), id(c)}) == 3
        assert all(x.execute("select count(*) from slices").fetchone() == (0,) for x in (a, b, c))
    one = data.Pool(str(tmp_path), 1)
    with one.connection() as a:
        pass
    with one.connection() as b:
        assert b is a and one._made == 1 and not one._filling


def test_no_more_than_size_queries_at_once_and_the_others_wait(tmp_path):
    pool, size, users = data.Pool(str(tmp_path), 2), 2, 5
    active, most, seen = 0, 0, set()
    changed, release = threading.Condition(), threading.Event()

    def user():
        nonlocal active, most
        with pool.connection() as con:
            with changed:
                active += 1
                most = max(most, active)
                seen.add(id(con))
                changed.notify_all()
            assert release.wait(WAIT_S)
            con.execute("select 1").fetchone()
            with changed:
                active -= 1

    threads = [threading.Thread(target=user) for _ in range(users)]
    for t in threads:
        t.start()
    with changed:
        assert changed.wait_for(lambda: active == size, WAIT_S)  # the pool's size hold a connection ...
    assert sum(t.is_alive() for t in threads) == users and pool._made == size  # ... the others wait for one
    release.set()
    for t in threads:
        t.join(WAIT_S)
    assert not any(t.is_alive() for t in threads)
    assert most == size and len(seen) == size and active == 0


def test_a_failed_query_gives_its_connection_back(tmp_path):
    pool = data.Pool(str(tmp_path), 1)
    with pytest.raises(duckdb.Error):
        with pool.connection() as con:
            con.execute("select * from no_such_table")
    with pool.connection() as again:  # size 1: it would wait for ever had the failure kept it
        assert again is con and again.execute("select 1").fetchone() == (1,)


def test_the_connections_read_only_the_lake(tmp_path):
    """Each pooled connection is ``catalog.memory_connection``: no file access, configuration locked."""
    pool = data.Pool(str(tmp_path), 2)
    with pool.connection() as a, pool.connection() as b:
        for con in (a, b):
            with pytest.raises(duckdb.Error):
                con.execute(f"copy (select 1) to '{tmp_path / 'out.csv'}'")
            with pytest.raises(duckdb.Error):
                con.execute("set enable_external_access = true")
    assert not (tmp_path / "out.csv").exists()


def test_the_number_of_connections_from_the_environment(monkeypatch):
    monkeypatch.delenv(data.CONNECTIONS_ENV, raising=False)
    assert data.connections() == data.DEFAULT_CONNECTIONS
    monkeypatch.setenv(data.CONNECTIONS_ENV, "1")
    assert data.connections() == 1
    for bad in ("0", "-2", "four"):
        monkeypatch.setenv(data.CONNECTIONS_ENV, bad)
        with pytest.raises(ValueError, match=data.CONNECTIONS_ENV):
            data.connections()


def test_a_query_takes_a_connection_given_back_rather_than_wait_for_one_being_made(tmp_path, monkeypatch):
    """Making a connection lists every table (1-2 s under load): while the pool fills, a query
    takes the first connection given back."""
    real, go_on, making = data.catalog.memory_connection, threading.Event(), threading.Event()
    calls = []

    def slow(lake):
        calls.append(lake)
        if len(calls) > 1:  # the pool's others: held until the test lets them go
            making.set()
            assert go_on.wait(WAIT_S)
        return real(lake)

    monkeypatch.setattr(data.catalog, "memory_connection", slow)
    pool, got, held = data.Pool(str(tmp_path), 2), [], []

    def take():
        held.append(pool.connection())
        got.append(held[0].__enter__())

    with pool.connection() as first:
        assert making.wait(WAIT_S)  # the second is being made
        waiter = threading.Thread(target=take)
        waiter.start()
    waiter.join(WAIT_S)  # the one given back serves first
    assert not waiter.is_alive() and got == [first]
    go_on.set()
    filled(pool)
    assert pool._made == 2 and len(pool._idle) == 1  # the new one, idle; ``first`` still out
    held[0].__exit__(None, None, None)
    assert len(pool._idle) == 2 and len(calls) == 2


def test_a_lake_that_cannot_be_read_fails_each_query_and_blocks_none(tmp_path):
    root = tmp_path / "lake"
    root.write_text("a file, not a lake")
    pool = data.Pool(str(root), 2)
    for _ in range(2):
        with pytest.raises(Exception, match="lake"):
            with pool.connection():
                pass
    assert pool._made == 0


def test_the_query_log(tmp_path, monkeypatch):
    log = tmp_path / "queries.jsonl"
    monkeypatch.setenv(data.QUERY_LOG_ENV, str(log))
    pool = data.Pool(str(tmp_path / "lake"), 1)
    for _ in range(2):
        with pool.connection("patients []") as con:
            con.execute("select 1").fetchone()
    made, *queries = [json.loads(line) for line in log.read_text().splitlines()]
    assert made["made"] and made["make_s"] > 0 and made["what"] == "connection for patients []"
    assert [r["what"] for r in queries] == ["patients []"] * 2
    assert all(r["wait_s"] >= 0 and r["hold_s"] >= 0 and r["size"] == 1 and "made" not in r for r in queries)
