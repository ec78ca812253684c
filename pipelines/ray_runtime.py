"""Starting Ray, and running many small tasks with a progress bar.

Local runs start an embedded Ray on loopback (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` keeps every
Ray service on 127.0.0.1; see ../shared/stack/NOTES.md). ``address`` (or ``RAY_ADDRESS``) connects
to an existing cluster instead.

A local Ray started here fate-shares with its driver: killed outright (SIGKILL), the driver takes
the GCS and raylet with it at once, the task workers within about 3 s and the two agents
(dashboard, runtime env) within about 61 s (measured on 2 cores with Ray 2.60; the agents first
try to report the raylet's death to the dead GCS). Ctrl-C in ``run_batch`` cancels the outstanding
tasks and raises ``Interrupted``.

A batch keeps a bounded window of tasks in flight (``task_window``: ``WINDOW_PER_CPU`` x the
cluster's CPUs, at least ``MIN_WINDOW``) and submits the next as one finishes, rather than
submitting every task at once: Ray then holds a few task specs and their arguments, not the
whole batch's, and a Ctrl-C has only the window to cancel.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from gbmmet.errors import RunFailed


class Interrupted(RunFailed):
    """The driver was interrupted (SIGINT, Ctrl-C): outstanding tasks were cancelled; what
    finished is kept, and re-running the same command resumes. The command exits with code 130.

    ``done`` / ``failed``: keys of the items that finished (``fn`` returned / raised);
    ``not_finished``: cancelled while running or before they started; ``report``: the outcomes.
    """

    def __init__(self, message: str, *, done: list[str], failed: list[str], not_finished: list[str],
                 report: BatchReport | None = None):
        super().__init__(message)
        self.done, self.failed, self.not_finished = list(done), list(failed), list(not_finished)
        self.report = report or BatchReport()


#: Tasks a batch keeps in flight per CPU of the cluster: each CPU has a task running and one queued
#: behind it, so none idles while the driver collects a result and submits the next.
WINDOW_PER_CPU = 2
#: The smallest window (a cluster that reports no CPUs yet, e.g. one still scaling up, gets this).
MIN_WINDOW = 2

#: Set (to anything but "" or "0") by ``--verbose``: Ray's own log lines reach the terminal.
VERBOSE_ENV = "GBMMET_VERBOSE"
_session_dir: str | None = None


def verbose() -> bool:
    """Whether Ray's own logs (its INFO lines, every worker's and actor's output) are shown."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def set_verbose(on: bool) -> None:
    """Show Ray's own logs on the terminal (``--verbose``), or keep them in Ray's log folder."""
    os.environ[VERBOSE_ENV] = "1" if on else "0"


def log_dir() -> str | None:
    """Where Ray's logs of this job are (the session's ``logs`` folder, on the head node where a
    cluster was joined); None before ``init_ray``."""
    return None if _session_dir is None else os.path.join(_session_dir, "logs")


def init_ray(address: str | None = None, num_cpus: int | None = None, shared=()) -> None:
    """Connect to ``address`` / ``RAY_ADDRESS``, or start a local Ray with ``num_cpus`` CPUs;
    then refuse any local folder of ``shared`` (the lake, a cohort folder) that not every node of
    the cluster sees (``require_shared``).

    Quiet unless ``verbose()``: Ray's driver logs only warnings, and what tasks and actors print
    (Ray Train's controller and workers among them) stays in Ray's log folder (``log_dir()``).
    Errors still reach the user: a failed task's exception is raised in the driver, where the
    commands record and print it.
    """
    global _session_dir
    address = address or os.environ.get("RAY_ADDRESS") or None
    if not address:
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # A local Ray on loopback needs no token (it would be written to ~/.ray).
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        # Ray Train's spot-preemption watcher has no use on one machine (and logs an error here).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # Training submits every fold at once: a Ray Train controller and its workers per fold,
        # 10+ processes for 5 folds. The raylet warns on the driver's console once its processes
        # reach 4x its startup concurrency (the CPU count: 8 on 2 cores); at least 8 lets them
        # start together and keeps the warning for real excess (32 on this machine).
        os.environ.setdefault("RAY_worker_maximum_startup_concurrency", str(max(8, os.cpu_count() or 1)))
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray

    if ray.is_initialized():
        require_shared(*shared)
        return
    shown = {"log_to_driver": verbose(), "logging_level": logging.INFO if verbose() else logging.WARNING}
    if address:
        context = ray.init(address=address, **shown)
    else:
        # "local" always starts a fresh cluster, even where a killed one left its marker file.
        context = ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, **shown)
    _session_dir = (getattr(context, "address_info", None) or {}).get("session_dir")
    require_shared(*shared)


_seen_shared: set[tuple[str, frozenset]] = set()


def pool_size(gpus: float = 0.0) -> int:
    """Actors of a model pool (features, ensemble scoring): one per ``gpus`` GPUs of the cluster
    where ``gpus``, else one per CPU; at least one (where the cluster has no GPU yet, as where an
    autoscaler is to bring them, it waits for the first)."""
    import ray

    resources = ray.cluster_resources()
    room = int(resources.get("GPU", 0) // gpus) if gpus > 0 else int(resources.get("CPU", 1))
    return max(1, room)


def quiet_ray_data() -> None:
    """Ray Data's own console lines off unless ``verbose()``: its INFO logs (each dataset's plan,
    a progress report every 10 s where stdout is not a terminal) and the deprecation warning that
    ``map_batches(..., max_restarts=0)`` raises in Ray 2.60 (the only way to pass it there). Called
    after importing ``ray.data``, whose import sets its logger's level."""
    import warnings

    import ray.data

    if verbose():
        return
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # also its "progress bars disabled" warning
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")


def require_shared(*paths) -> None:
    """Raise ``ConfigError`` where a local folder of ``paths`` is not seen by every live node of
    the cluster: each node looks for a marker file the driver wrote there (a 0-CPU task pinned to
    it). URIs (``s3://`` ...) pass; so does everything on one node. A node that joins later is not
    checked. Without this, each worker would write its share of the lake to its own disk."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    nodes = frozenset(n["NodeID"] for n in ray.nodes() if n["Alive"])
    local = [os.path.abspath(str(p)[len("file://"):] if str(p).startswith("file://") else str(p))
             for p in paths if p is not None and ("://" not in str(p) or str(p).startswith("file://"))]
    for path in local:
        if len(nodes) < 2 or (path, nodes) in _seen_shared:
            continue
        os.makedirs(path, exist_ok=True)
        marker = os.path.join(path, f".gbmmet-shared-{uuid.uuid4().hex}")
        with open(marker, "w") as fh:
            fh.write("every node of the cluster should see this file\n")
        try:
            sees = ray.remote(num_cpus=0, max_retries=0)(os.path.exists)
            refs = [sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n, soft=False)).remote(marker)
                    for n in sorted(nodes)]
            blind = [n for n, seen in zip(sorted(nodes), ray.get(refs, timeout=120), strict=True) if not seen]
        finally:
            os.remove(marker)
        if blind:
            from gbmmet.errors import ConfigError

            raise ConfigError(
                f"{path} is a local folder that {len(blind)} of the cluster's {len(nodes)} nodes do not see "
                f"(node {blind[0][:12]}{' and others' if len(blind) > 1 else ''}): each would write to its own "
                "disk. On a cluster of several nodes use object storage (--lake s3://bucket/lake) or a folder on "
                "a mount every node shares.")
        _seen_shared.add((path, nodes))


def match_threads_to_task() -> None:
    """Inside a Ray task, let SimpleITK and torch use only the CPUs Ray gave the task.

    Both otherwise start a thread per core in every worker, so two workers on two cores fight
    over them and parallel speed-up collapses. Outside Ray nothing changes. torch is limited only
    where it is already imported (this never imports it).
    """
    import sys

    import ray

    if not ray.is_initialized():
        return
    try:
        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0)
    except Exception:  # not inside a task (driver)
        return
    threads = max(1, int(round(cpus)))
    import SimpleITK as sitk

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(threads)


@dataclass
class TaskOutcome:
    key: str
    ok: bool
    value: Any = None
    error: str = ""  # "Type: message" of the error that failed it
    error_type: str = ""  # that error's class name (a Ray task's own cause, not RayTaskError)


@dataclass
class BatchReport:
    outcomes: list[TaskOutcome] = field(default_factory=list)
    seconds: float = 0.0
    window: int = 0  # the most tasks the batch would keep in flight (0: it ran in this process)
    max_in_flight: int = 0  # the most it had submitted and not yet collected at any moment

    @property
    def failed(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if not o.ok]

    @property
    def ok(self) -> list[TaskOutcome]:
        return [o for o in self.outcomes if o.ok]


def task_window(window: int | None = None) -> int:
    """How many tasks a batch keeps in flight: ``window`` where given (it must be >= 1), else
    ``WINDOW_PER_CPU`` x the CPUs of the Ray cluster joined (``init_ray``), at least ``MIN_WINDOW``."""
    if window is not None:
        if window < 1:
            raise ValueError(f"a task window must be >= 1, got {window}")
        return window
    import ray

    return max(MIN_WINDOW, int(WINDOW_PER_CPU * ray.cluster_resources().get("CPU", 0)))


def submit_upto(todo: Iterator[tuple[str, tuple]], pending: dict, submit: Callable, report: BatchReport) -> None:
    """Submit ``submit(key, args)`` for the next (key, args) of ``todo`` until ``report.window``
    tasks are in ``pending`` (ref -> key) or ``todo`` is spent; record the most in flight."""
    for key, args in itertools.islice(todo, max(0, report.window - len(pending))):
        pending[submit(key, args)] = key
    report.max_in_flight = max(report.max_in_flight, len(pending))


def _progress(description: str, total: int):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("failed {task.fields[failed]}"),
        TextColumn("left {task.remaining:.0f}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        transient=False,
    )
    task = progress.add_task(description, total=total, failed=0)
    return progress, task


def run_batch(
    items: Iterable[tuple[str, tuple]],
    fn: Callable,
    *,
    description: str,
    use_ray: bool,
    num_cpus: float = 1,
    num_gpus: float = 0,
    max_retries: int = 2,
    show_progress: bool = True,
    names: dict[str, str] | None = None,
    resources: dict[str, dict[str, float]] | None = None,
    window: int | None = None,
) -> BatchReport:
    """Run ``fn(*args)`` for each (key, args): as Ray tasks, or in this process.

    A failing item is recorded with its error and the batch goes on. Ray retries a task whose
    worker died (``max_retries``); an exception raised by ``fn`` itself is not retried. ``names``
    gives Ray task names (shown in the worker's process title), e.g. pseudonyms rather than raw ids;
    ``resources`` custom Ray resources per key (e.g. a site's, to pin its tasks to its nodes).
    At most ``task_window(window)`` tasks are in flight: the next is submitted as one finishes
    (``BatchReport.max_in_flight`` says how many were at most).

    Raises:
        Interrupted: KeyboardInterrupt (Ctrl-C) while the batch ran; the outstanding Ray tasks are
            cancelled (their workers killed: every lake write is atomic, so none is half done),
            and the error says what finished.
    """
    items = list(items)
    report = BatchReport()
    pending: dict = {}
    try:
        _run_items(items, fn, report, pending, description=description, use_ray=use_ray, num_cpus=num_cpus,
                   num_gpus=num_gpus, max_retries=max_retries, show_progress=show_progress, names=names,
                   resources=resources, window=window)
    except KeyboardInterrupt:
        cancel_pending(pending)
        finished = {o.key for o in report.outcomes}
        done = [o.key for o in report.outcomes if o.ok]
        failed = [o.key for o in report.outcomes if not o.ok]
        rest = [key for key, _ in items if key not in finished]
        raise Interrupted(f"{description} interrupted: {len(done)} done, {len(failed)} failed, {len(rest)} not "
                          f"finished (cancelled) of {len(items)}", done=done, failed=failed, not_finished=rest,
                          report=report) from None
    return report


def _run_items(items, fn, report: BatchReport, pending: dict, *, description, use_ray, num_cpus, num_gpus,
               max_retries, show_progress, names, resources, window) -> None:
    """``run_batch``'s loop; ``pending`` holds the submitted Ray tasks not yet collected."""
    start = time.perf_counter()
    progress, task = _progress(description, len(items))

    def finished(outcome: TaskOutcome) -> None:
        report.outcomes.append(outcome)
        progress.update(task, advance=1, failed=len(report.failed))

    with progress if show_progress and items else nullcontext():
        if not use_ray:
            for key, args in items:
                try:
                    finished(TaskOutcome(key, True, fn(*args)))
                except Exception as exc:  # one bad item fails alone
                    finished(TaskOutcome(key, False, error=f"{type(exc).__name__}: {exc}",
                                         error_type=type(exc).__name__))
        else:
            import ray

            remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=max_retries)(fn)
            names, resources = names or {}, resources or {}

            def submit(key, args):
                opts = {"name": names[key]} if key in names else {}
                if key in resources:
                    opts["resources"] = resources[key]
                return remote.options(**opts).remote(*args)

            report.window = task_window(window)
            todo = iter(items)
            submit_upto(todo, pending, submit, report)
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1, timeout=5.0)
                for ref in done:
                    finished(ray_outcome(pending.pop(ref), ref))
                submit_upto(todo, pending, submit, report)
    report.seconds = time.perf_counter() - start


def ray_outcome(key: str, ref) -> TaskOutcome:
    """The ``TaskOutcome`` of a finished Ray task: its value, or the task's own error (the cause
    Ray wrapped) that failed it."""
    import ray

    try:
        return TaskOutcome(key, True, ray.get(ref))
    except Exception as exc:  # noqa: BLE001 - one bad item fails alone
        cause = getattr(exc, "cause", None) or exc
        return TaskOutcome(key, False, error=f"{type(cause).__name__}: {cause}", error_type=type(cause).__name__)


def cancel_pending(pending: dict) -> None:
    """Cancel the submitted Ray tasks not yet collected (keys of ``pending``; their workers killed)."""
    if pending:
        import ray

        for ref in list(pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001 - already finished or its worker gone: nothing to stop
                pass
