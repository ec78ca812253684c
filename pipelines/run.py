"""``gbmmet run``: the whole job on one machine or cluster, stage after stage, each reusing what
is done: synth -> preprocess -> features -> train -> readers import -> the model's calls -> the
simulated readers read again with the model -> evaluate; then the report and where the lake is.

Every stage resumes by itself (synth keeps identical patients, preprocess and features skip what
is in the lake, train reuses a finished run with the same settings, evaluate reuses an evaluation
of the same run, reads and settings), so a second ``gbmmet run`` costs seconds.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class RunSummary:
    lake: str
    run_id: str
    data: Path
    seconds: dict[str, float] = field(default_factory=dict)  # wall seconds per stage
    # CPU seconds per stage used by the whole machine (the driver, Ray's workers and anything else
    # running): a stage's cost where the machine is otherwise idle, as the benchmarks run it.
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    driver_cpu_seconds: dict[str, float] = field(default_factory=dict)  # this process's share of it


def machine_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent working since boot (user, nice, system and
    interrupts, every core; not idle or I/O wait)."""
    import psutil

    t = psutil.cpu_times()
    return sum(getattr(t, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


@contextmanager
def _stage(out: RunSummary, name: str, title: str, echo):
    """Print the stage's heading; record its wall, machine CPU and driver CPU seconds under ``name``."""
    echo(f"\n== {title} ==")
    import psutil

    me = psutil.Process()
    wall, cpu, driver = time.perf_counter(), machine_cpu_seconds(), sum(me.cpu_times()[:2])
    yield
    out.seconds[name] = time.perf_counter() - wall
    out.cpu_seconds[name] = machine_cpu_seconds() - cpu
    out.driver_cpu_seconds[name] = sum(me.cpu_times()[:2]) - driver


def run_all(preset: str = "demo", *, lake: str = "lake", data: str | Path | None = None, epochs: int = 100,
            folds: int = 5, seed: int = 0, backbone: str = "auto", weights: str | None = None,
            settings=None, address: str | None = None, workers: int | None = None,
            echo=print) -> RunSummary:
    from gbmmet.errors import RunFailed
    from gbmmet.evaluation import EvaluationSettings
    from gbmmet.model.train import HeadConfig
    from pipelines.features import run_features
    from pipelines.preprocess import run_preprocess
    from pipelines.readers import import_reads
    from pipelines.synth import SynthConfig, run_synth
    from pipelines.train import run_train

    data = Path(data) if data is not None else Path("data") / preset
    run_id = preset if seed == 0 else f"{preset}-seed{seed}"
    out = RunSummary(lake, run_id, data)

    with _stage(out, "synth", f"synth: the {preset} cohorts into {data}", echo):
        s = run_synth(SynthConfig(preset=preset, out=data, seed=seed), overwrite=True, preview=True,
                      workers=workers, address=address)
        if s.failed:
            raise RunFailed(f"synth failed for {len(s.failed)} patient(s): {sorted(s.failed)[:5]}")
        echo(f"{s.n_written} written, {s.n_reused} reused" + (f"; preview: {s.preview}" if s.preview else ""))

    with _stage(out, "preprocess", "preprocess: N4, 1 mm, CE-T1 onto T2, WhiteStripe, ROI slices", echo):
        p = run_preprocess(list(s.manifests), lake, address=address, workers=workers)
        echo(f"{len(p.ok)} done, {len(p.skipped)} already in the lake, {len(p.failed)} failed; "
             f"{p.slices_written} slices")
        for pid, reason in sorted(p.failed.items()):
            echo(f"  failed {pid}: {reason}")  # the batch goes on without them

    with _stage(out, "features", "features: the frozen backbone, once per slice", echo):
        f = run_features(lake, backbone=backbone, weights=weights, address=address, workers=workers)
        echo(f"backbone {f.backbone_id}: {f.reason}; {len(f.computed)} patients computed, {len(f.skipped)} reused")
        if f.failed:
            raise RunFailed(f"features failed for {len(f.failed)} patient(s)")

    with _stage(out, "train", f"train: {folds} folds x {epochs} epochs on Ray Train (run {run_id})", echo):
        run_train(lake, run_id, folds=folds, backbone=f.backbone_id, head=HeadConfig(epochs=epochs, seed=seed),
                  address=address, replace_if_changed=True, echo=echo)

    with _stage(out, "readers", "readers: the sites' reads", echo):
        for m in s.manifests:
            reads = Path(m).parent / "reads.csv"
            if reads.is_file():
                r = import_reads(reads, lake)
                echo(f"{r.rows} reads by {', '.join(r.readers)} from {reads}")

    with _stage(out, "evaluate", "evaluate: the model's calls; the simulated readers read again, seeing them; "
                "statistics", echo):
        e = evaluate_synthetic(lake, run_id, settings=settings or EvaluationSettings(seed=seed), address=address,
                               workers=workers, echo=echo)
        echo("cutoffs: " + ", ".join(f"{k} {v:.3f}" for k, v in e.cutoffs.items()))
    return out


def evaluate_synthetic(lake: str, run: str, *, settings=None, address: str | None = None, workers: int | None = None,
                       show_progress: bool = True, echo=print):
    """Evaluate a run on synthetic cohorts whose simulated readers also read with the model: the
    model's calls first, then the readers' assisted reads from those calls (``gbmmet readers
    simulate-assisted``), then the statistics. Returns the ``EvaluateSummary``."""
    import warnings

    from gbmmet import constants as C
    from pipelines.evaluate import run_evaluate
    from pipelines.readers import simulate_assisted

    seed = settings.seed if settings is not None else 0
    e = run_evaluate(lake, run, settings=settings, address=address, workers=workers, predictions_only=True,
                     show_progress=show_progress, echo=echo)
    cutoff = C.CUTOFF_VAL if C.CUTOFF_VAL in e.cutoffs else C.CUTOFF_PAPER
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        r = simulate_assisted(lake, run, cutoff_kind=cutoff, seed=seed)
    echo(f"{r.rows} assisted reads by {', '.join(r.readers)}, shown the model's call at {cutoff}")
    for note in sorted({str(w.message) for w in caught}):
        echo("  note: " + note)
    return run_evaluate(lake, run, settings=settings, address=address, workers=workers, show_progress=show_progress,
                        echo=echo)
