"""``ray_runtime.run_batch`` on a real local Ray: a bounded window of tasks in flight."""

from __future__ import annotations

import time

import pytest

from pipelines.ray_runtime import MIN_WINDOW, WINDOW_PER_CPU, run_batch, task_window


def _nap(i: int) -> int:
    time.sleep(0.1)
    if i == 3:
        raise ValueError(f"item {i} is bad")
    return i


def test_a_batch_never_has_more_tasks_in_flight_than_its_window(ray_local):
    report = run_batch([(f"k{i}", (i,)) for i in range(7)], _nap, description="nap", use_ray=True,
                       show_progress=False, window=2)
    assert report.window == 2 and report.max_in_flight == 2
    assert sorted(o.key for o in report.ok) == ["k0", "k1", "k2", "k4", "k5", "k6"]
    (bad,) = report.failed  # a failed task frees its place like any other
    assert bad.key == "k3" and bad.error == "ValueError: item 3 is bad" and bad.error_type == "ValueError"


def test_the_default_window_is_two_tasks_per_cpu_of_the_cluster(ray_local):
    cpus = int(ray_local.cluster_resources()["CPU"])
    assert task_window() == max(MIN_WINDOW, WINDOW_PER_CPU * cpus) == 4  # the tests' Ray has 2 CPUs
    report = run_batch([(f"k{i}", (i,)) for i in range(6)], _nap, description="nap", use_ray=True,
                       show_progress=False)
    assert report.window == 4 and report.max_in_flight == 4 and len(report.ok) == 5


def test_a_window_below_one_is_refused():
    with pytest.raises(ValueError, match="window must be >= 1"):
        task_window(0)
