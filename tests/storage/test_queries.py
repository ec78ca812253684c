"""``storage.queries.run_versions``: the table versions a run recorded as read, on a real Delta lake."""

from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from gbmmet import constants as C
from gbmmet.errors import ConfigError
from storage import catalog
from storage.lake import Lake
from storage.queries import run_versions
from storage.schemas import SCHEMAS


def _fold(run: str, pid: str) -> pa.Table:
    return pa.Table.from_pylist([{"run_id": run, C.COL_PATIENT_ID: pid, "fold": 0}], schema=SCHEMAS[C.TABLE_FOLDS])


def _record(lake: Lake, run: str, kind: str, versions: dict | None, minute: int) -> None:
    lake.append(C.TABLE_RUNS, pa.Table.from_pylist([{
        "run_id": run, "kind": kind, "status": "ok",
        "finished_at": dt.datetime(2026, 1, 1, 12, minute, tzinfo=dt.UTC),
        "lake_versions": None if versions is None else json.dumps(versions, sort_keys=True)}],
        schema=SCHEMAS[C.TABLE_RUNS]))


@pytest.fixture
def lake(tmp_path) -> Lake:
    """Run r1 trained on folds at version 0 and evaluated at version 1; a third commit follows."""
    lake = Lake(tmp_path / "lake")
    lake.append(C.TABLE_FOLDS, _fold("r1", "p1"))
    _record(lake, "r1", "train", lake.pinned().versions(), 0)
    lake.append(C.TABLE_FOLDS, _fold("r1", "p2"))
    _record(lake, "r1", "evaluate", lake.pinned().versions(), 5)
    lake.append(C.TABLE_FOLDS, _fold("r1", "p3"))
    return lake


def test_the_versions_a_job_recorded_are_read_back_by_kind(lake):
    assert run_versions(lake, "r1", "train")[C.TABLE_FOLDS] == 0
    assert run_versions(lake, "r1", "evaluate")[C.TABLE_FOLDS] == 1
    assert run_versions(lake, "r1", "train")[C.TABLE_METRICS] is None  # no commit yet then


def test_without_a_kind_the_latest_job_is_used(lake):
    assert run_versions(lake, "r1") == run_versions(lake, "r1", "evaluate")


def test_a_query_at_the_recorded_versions_answers_from_that_state(lake):
    sql = "select patient_id from folds order by patient_id"
    assert catalog.query(lake, sql).column(0).to_pylist() == ["p1", "p2", "p3"]
    pinned = catalog.query(lake, sql, versions=run_versions(lake, "r1", "train"))
    assert pinned.column(0).to_pylist() == ["p1"]


def test_an_unknown_run_is_refused_listing_the_lakes_runs(lake):
    with pytest.raises(ConfigError, match=r"no run 'r9' .* runs there: \['r1'\]"):
        run_versions(lake, "r9")


def test_an_unknown_job_of_a_run_is_refused_listing_its_jobs(lake):
    with pytest.raises(ConfigError, match=r"run 'r1' has no 'score' job .* its jobs: \['evaluate', 'train'\]"):
        run_versions(lake, "r1", "score")


def test_a_record_without_versions_says_to_run_the_job_again(lake):
    _record(lake, "old", "train", None, 0)
    with pytest.raises(ConfigError, match="before runs recorded the table versions they read: run the job again"):
        run_versions(lake, "old")
