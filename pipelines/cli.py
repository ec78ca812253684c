"""The ``gbmmet`` command: the front door of every job.

Heavy imports (SimpleITK, Ray, torch) happen inside the commands, so ``gbmmet --help`` is instant.
Every command is callable from tests as ``main([...])``, which returns the exit code.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    name="gbmmet",
    help="Glioblastoma vs solitary brain metastasis on CE-T1 and T2 MR: synthetic cohorts, "
    "preprocessing on Ray, the 5-fold ResNet ensemble, evaluation against radiologists.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Exit code of a user error (bad option value, unusable input): nothing was done.
EXIT_USAGE = 2
#: Exit code of a run stopped by Ctrl-C (SIGINT), as shells report it (128 + 2).
EXIT_INTERRUPTED = 130
RESUME_HINT = "re-run the same command to resume"

# Options of every command that starts Ray, declared once.
AddressOpt = Annotated[str | None, typer.Option(help="Ray cluster address (default: RAY_ADDRESS, else a local Ray).")]
VerboseOpt = Annotated[bool, typer.Option("--verbose", help="Show Ray's own logs (its workers', Ray Train's) here; "
                                                             "by default they go to Ray's log folder, named at the end.")]

# Options shared by `features` and `evaluate`, declared once.
GpusOpt = Annotated[float, typer.Option(help="GPUs per model copy: one Ray Data actor per that many GPUs of the "
                                             "cluster (0: CPU actors, one per CPU).")]
# Options shared by `evaluate` and `run`, declared once.
ResamplesOpt = Annotated[int, typer.Option(help="Resamples per confidence interval (the paper: 1000).")]
CiOpt = Annotated[str, typer.Option(help="CI shown in the printed table: bootstrap_bca (default: stratified "
                                         "patient-level bootstrap), bootstrap_percentile, or paper_subsample90 "
                                         "(the paper's scheme, a reproduction: it under-covers). AUC: DeLong.")]
PrimaryOpt = Annotated[str, typer.Option(help="The primary comparison, reported unadjusted beside its Holm-adjusted "
                                              "p: A,B,METRIC with A and B raters (model@<cutoff kind>, reader1, "
                                              "reader1+assisted) and METRIC accuracy, recall, specificity or auc.")]
MarginOpt = Annotated[float, typer.Option(help="Non-inferiority margin of the paired differences (0.10 = 10 "
                                               "percentage points): a comparison is non-inferior where its 95 % CI's "
                                               "lower bound is above -margin (the Summary page, gbmmet report). "
                                               "Recorded with the evaluation.")]
CommitPatientsOpt = Annotated[int, typer.Option("--commit-every", help="Commit finished patients to the lake every N "
                                               "patients (or --commit-seconds, whichever first, and at the end).")]
CommitSecondsOpt = Annotated[float, typer.Option("--commit-seconds", help="Commit finished patients at least this "
                                                 "often (seconds).")]
DEFAULT_PRIMARY = "model@val_youden_ensemble,reader1,accuracy"
DEFAULT_MARGIN = 0.10  # gbmmet.evaluation.DEFAULT_MARGIN (a test holds them equal): not imported, for a fast --help


def _batch(patients: int, seconds: float):
    """The ``BatchSettings`` of --commit-every / --commit-seconds (ConfigError if impossible)."""
    from gbmmet.errors import ConfigError
    from pipelines.preprocess import BatchSettings

    try:
        return BatchSettings(patients=patients, seconds=seconds)
    except ValueError as exc:
        raise ConfigError(f"--commit-every / --commit-seconds: {exc}") from None


def _settings(resamples: int, seed: int, primary: str, margin: float | None = None):
    """The evaluation's settings from the command line (a clear error for a bad value)."""
    from gbmmet.errors import ConfigError
    from gbmmet.evaluation import EvaluationSettings, PrimaryComparison

    parts = [x.strip() for x in primary.split(",")]
    if len(parts) != 3:
        raise ConfigError(f"--primary must be A,B,METRIC (e.g. {DEFAULT_PRIMARY}); got {primary!r}")
    try:
        extra = {} if margin is None else {"margin": margin}
        return EvaluationSettings(n_resamples=resamples, seed=seed, primary=PrimaryComparison(*parts), **extra)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _user_errors(fn):
    """Print gbmmet's own errors as one clear line (no traceback) and exit with code 2; a job that
    failed after its retries exits with 1, one stopped by Ctrl-C with 130 (saying what finished).

    For the commands that start Ray (those with ``--verbose``) it also applies ``--verbose`` and,
    where this command started Ray quietly, names Ray's log folder in the closing line."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from gbmmet.errors import GbmmetError, RunFailed
        from pipelines import ray_runtime
        from pipelines.ray_runtime import Interrupted

        if "verbose" in kwargs:
            ray_runtime.set_verbose(kwargs["verbose"])
        try:
            return fn(*args, **kwargs)
        except Interrupted as exc:
            typer.secho(f"interrupted: {exc}; {RESUME_HINT}", err=True, fg="red")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except KeyboardInterrupt:  # outside a batch of tasks: nothing was half done
            typer.secho(f"interrupted (Ctrl-C); {RESUME_HINT}", err=True, fg="red")
            raise typer.Exit(EXIT_INTERRUPTED) from None
        except RunFailed as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(1) from None
        except GbmmetError as exc:
            typer.secho(f"error: {exc}", err=True, fg="red")
            raise typer.Exit(EXIT_USAGE) from None
        finally:
            if "verbose" in kwargs and not kwargs["verbose"] and ray_runtime.log_dir():
                typer.echo(f"Ray's own logs: {ray_runtime.log_dir()} (--verbose shows them here)")

    return wrapper


@app.command()
@_user_errors
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the cohort into.")] = Path("data/demo"),
    preset: Annotated[str, typer.Option(help="tiny (tests), demo, or paper (598 + 143 patients).")] = "demo",
    seed: Annotated[int, typer.Option(help="Same seed, same bytes.")] = 0,
    difficulty: Annotated[float, typer.Option(help="0 = twice the published class separation, 0.5 = published, 1 = indistinguishable.")] = 0.5,
    truth: Annotated[bool, typer.Option("--truth", help="Also write label maps, the true misalignment and lesion parameters.")] = False,
    preview: Annotated[bool, typer.Option("--preview", help="Write preview.png: a few GBM and MET patients per site.")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a cohort folder made with other settings.")] = False,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all); 0 runs in this process without Ray.")] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    ood: Annotated[str, typer.Option(help="Also write out-of-distribution patients in OUT/ood/<kind>/, kinds "
                                          "comma-separated: meningioma, no_lesion (ROI on normal brain), swapped "
                                          "(CE-T1 and T2 files exchanged). Adds to an existing cohort.")] = "",
    ood_count: Annotated[int, typer.Option("--ood-count", help="Patients of each --ood kind.")] = 10,
) -> None:
    """Write synthetic multi-site cohorts: NIfTI per patient, ROI masks, manifests, reader reads."""
    from gbmmet.synth.ood import parse_kinds
    from pipelines.synth import SynthConfig, run_synth

    cfg = SynthConfig(preset=preset, out=out, seed=seed, difficulty=difficulty, truth=truth,
                      ood=parse_kinds(ood), ood_count=ood_count)
    result = run_synth(cfg, overwrite=overwrite, preview=preview, workers=workers, address=address)
    n = result.n_written + result.n_reused
    typer.echo(
        f"synth {preset}: {n} patients in {result.out} ({result.n_written} written, "
        f"{result.n_reused} reused) in {result.seconds:.1f} s"
    )
    for manifest in result.manifests:
        typer.echo(f"  manifest: {manifest}")
    if result.preview:
        typer.echo(f"  preview:  {result.preview}")
    if result.ood_manifests:
        typer.echo(f"  ood: {result.ood_written} written, {result.ood_reused} reused")
    for kind, manifest in result.ood_manifests.items():
        typer.echo(f"  ood {kind}: {manifest}")
    if result.ood_preview:
        typer.echo(f"  ood preview: {result.ood_preview}")
    if result.failed:
        for pid, err in sorted(result.failed.items()):
            typer.secho(f"  failed {pid}: {err}", err=True, fg="red")
        raise typer.Exit(1)


@app.command()
@_user_errors
def preprocess(
    manifest: Annotated[list[Path], typer.Option("--manifest", help="A site's manifest.csv (repeat for several sites).")],
    lake: Annotated[str, typer.Option(help="Lake folder or URI (s3://...).")] = "lake",
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all); 0 runs in this process.")] = None,
    keep_going: Annotated[bool, typer.Option("--keep-going", help="Missing files fail only their own patient instead of stopping the run.")] = False,
    pin_sites: Annotated[bool, typer.Option("--pin-sites", help="Run each site's patients only on nodes with the Ray resource site:<site> (ray start --resources '{\"site:siteA\": 1}').")] = False,
    n4: Annotated[str, typer.Option(help="N4 backend: sitk (default) or ants.")] = "sitk",
    commit_every: CommitPatientsOpt = 32,
    commit_seconds: CommitSecondsOpt = 30.0,
) -> None:
    """Preprocess site cohorts into the lake: N4, 1 mm, CE-T1 onto T2, WhiteStripe, ROI slices."""
    from dataclasses import replace

    from gbmmet.preprocess.params import N4Params, PreprocessParams
    from pipelines.preprocess import run_preprocess

    params = PreprocessParams(n4=replace(N4Params(), backend=n4))
    s = run_preprocess(manifest, lake, params=params, address=address, workers=workers, keep_going=keep_going,
                       pin_sites=pin_sites, batch=_batch(commit_every, commit_seconds))
    typer.echo(
        f"preprocess: {len(s.ok)} ok, {len(s.skipped)} skipped (already in the lake), {len(s.failed)} failed; "
        f"{s.slices_written} slices written; "
        + (f"{s.seconds_per_patient:.1f} s per patient; " if s.ok else "")
        + f"{s.wall_seconds:.0f} s in all; {s.commits} lake commit(s) in {s.batches} batch(es) of at most "
        f"{s.batch.patients} patients / {s.batch.seconds:g} s"
        + (f"; compacted {', '.join(s.compacted)}" if s.compacted else "")
    )
    for pid, reason in sorted(s.failed.items()):
        typer.secho(f"  failed {pid}: {reason}", err=True, fg="red")
    if s.warnings:
        from collections import Counter

        kinds = Counter(w["kind"] for found in s.warnings.values() for w in found)
        typer.secho(f"  {len(s.warnings)} patient(s) with warnings ("
                    + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items()))
                    + "; recorded in preprocess_runs.warnings):", err=True, fg="yellow")
        for pid, found in sorted(s.warnings.items()):
            typer.secho(f"  warning {pid}: " + "; ".join(f"{w['kind']}: {w['message']}" for w in found),
                        err=True, fg="yellow")
    if s.suspect:
        typer.secho(f"  registration suspect (flagged, kept; check the overlays): {', '.join(sorted(s.suspect))}",
                    err=True, fg="yellow")
    if s.qc_pending:
        typer.echo(f"  registration QC not applied yet to {len(s.qc_pending)} patient(s): too few patients in "
                   "the lake to compare with (judged on a later run)")
    typer.echo(f"  lake: {s.lake}" + (f"  catalog: {s.catalog}" if s.catalog else ""))
    if s.failed:
        raise typer.Exit(1)


@app.command()
@_user_errors
def features(
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    backbone: Annotated[str, typer.Option(help="auto (ResNet-50 if its weights are here, else EfficientNet-Lite0), resnet50-imagenet, efficientnet-lite0-imagenet, resnet18-random (tests).")] = "auto",
    weights: Annotated[str | None, typer.Option(help="ResNet-50 (or Lite0) weight file; checked, sha256 recorded.")] = None,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all); 0 runs in this process.")] = None,
    gpus: GpusOpt = 0.0,
    batch_size: Annotated[int, typer.Option(help="Slices per forward pass.")] = 64,
    commit_every: CommitPatientsOpt = 32,
    commit_seconds: CommitSecondsOpt = 30.0,
) -> None:
    """Compute frozen-backbone features of every slice once, cached in the lake."""
    from pipelines.features import run_features

    s = run_features(lake, backbone=backbone, weights=weights, address=address, workers=workers, gpus=gpus,
                     batch_size=batch_size, batch=_batch(commit_every, commit_seconds))
    typer.echo(f"backbone {s.backbone_id}: {s.reason}")
    typer.echo(f"features: {len(s.computed)} patients computed ({s.slices} slices, "
               f"{s.slices_per_second:.1f} slices/s), {len(s.skipped)} skipped, {len(s.failed)} failed; "
               f"{s.commits} lake commit(s)")
    for pid, err in sorted(s.failed.items()):
        typer.secho(f"  failed {pid}: {err}", err=True, fg="red")
    if s.failed:
        raise typer.Exit(1)


@app.command()
@_user_errors
def train(
    run: Annotated[str, typer.Option(help="Run name: a folder under <lake>/runs and the key of the run's rows in the lake.")],
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    folds: Annotated[int, typer.Option(help="Cross-validation folds over the training split (by patient).")] = 5,
    epochs: Annotated[int, typer.Option(help="Epochs per fold (the paper: 100).")] = 100,
    workers: Annotated[int, typer.Option(help="Ray Train workers per fold (DDP when > 1).")] = 1,
    cpus_per_worker: Annotated[float, typer.Option(help="CPUs per worker (torch threads).")] = 1.0,
    gpus_per_worker: Annotated[float, typer.Option(help="GPUs per worker (0 on CPU machines).")] = 0.0,
    mode: Annotated[str, typer.Option(help="frozen (the paper: head on cached features) or finetune (last backbone stage too, from the slices, augmented).")] = "frozen",
    backbone: Annotated[str | None, typer.Option(help="frozen: which cached features (id or name; default: the lake's). finetune: auto, resnet50-imagenet, efficientnet-lite0-imagenet, resnet18-random.")] = None,
    weights: Annotated[str | None, typer.Option(help="finetune: backbone weight file.")] = None,
    hidden: Annotated[int, typer.Option(help="Width of the head's hidden layer.")] = 256,
    class_weights: Annotated[bool, typer.Option("--class-weights", help="Weight the loss against the 2:1 GBM:MET imbalance.")] = False,
    checkpoint_every: Annotated[int, typer.Option(help="Epochs between checkpoints (and at the end), at most one per --checkpoint-min-s seconds.")] = 10,
    checkpoint_min_s: Annotated[float, typer.Option(help="Seconds at least between checkpoints before the last (a frozen head's 100 epochs then report once).")] = 30.0,
    seed: Annotated[int, typer.Option(help="Seed of folds, head initialisation, shuffles and dropout.")] = 0,
    max_failures: Annotated[int, typer.Option(help="Worker failures a fold survives (resuming from its checkpoint).")] = 2,
    storage_path: Annotated[str | None, typer.Option(help="Ray Train storage (default <lake>/runs; any URI).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace a run of this name trained with other settings.")] = False,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Train the 5-fold ensemble with Ray Train, one TorchTrainer per fold."""
    from gbmmet.model.train import HeadConfig
    from pipelines.train import run_train

    head = HeadConfig(hidden=hidden, epochs=epochs, class_weights=class_weights, seed=seed,
                      checkpoint_every=checkpoint_every, checkpoint_min_s=checkpoint_min_s)
    s = run_train(lake, run, folds=folds, epochs=epochs, workers=workers, cpus_per_worker=cpus_per_worker,
                  gpus_per_worker=gpus_per_worker, mode=mode, backbone=backbone, weights=weights, head=head,
                  max_failures=max_failures, storage_path=storage_path, overwrite=overwrite, address=address,
                  echo=typer.echo)
    typer.echo(f"run {s.run_id}: {s.folds} folds, {s.seconds:.0f} s; checkpoints under {s.storage}")


@app.command()
@_user_errors
def evaluate(
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    run: Annotated[str | None, typer.Option(help="Training run (default: the lake's latest).")] = None,
    resamples: ResamplesOpt = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the resampling.")] = 0,
    ci: CiOpt = "bootstrap_bca",
    primary: PrimaryOpt = DEFAULT_PRIMARY,
    margin: MarginOpt = DEFAULT_MARGIN,
    force: Annotated[bool, typer.Option("--force", help="Evaluate again even where an evaluation of the same inputs exists.")] = False,
    cams: Annotated[bool, typer.Option("--cams/--no-cams", help="Grad-CAM of every test and external slice into the lake.")] = True,
    gpus: GpusOpt = 0.0,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
) -> None:
    """Score val / test / external with the fold ensemble; predictive index, cutoffs, metrics with
    CIs, readers, paired differences, calibration and patient flow into the lake; print the table."""
    from pipelines.evaluate import run_evaluate

    settings = _settings(resamples, seed, primary, margin)
    s = run_evaluate(lake, run, settings=settings, address=address, force=force, cams=cams, gpus=gpus,
                     echo=typer.echo)
    typer.echo(f"evaluate {s.run_id}: {s.patients} patients, {s.slices} slices scored; cutoffs "
               + ", ".join(f"{k} {v:.3f}" for k, v in s.cutoffs.items())
               + f"; {s.metrics_rows} metric rows, {s.differences_rows} paired differences; {s.seconds:.0f} s")
    _print_report(lake, s.run_id, ci)


def _print_report(lake: str, run: str, ci: str) -> None:
    """The headline table, the paired differences and the patient flow of run ``run``."""
    from rich.console import Console

    from pipelines.report import difference_table, flow_table, headline_table, trust_table
    from storage import catalog
    from storage.lake import Lake

    con = catalog.connect(Lake(lake))
    try:
        console = Console(width=200)
        for part in (headline_table(con, run, ci), difference_table(con, run), trust_table(con, run),
                     flow_table(con, run)):
            for item in part:
                console.print(item)
    finally:
        con.close()


@app.command("run")
@_user_errors
def run_cmd(
    preset: Annotated[str, typer.Option(help="Synthetic cohorts: demo (default), tiny, or paper.")] = "demo",
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    data: Annotated[Path | None, typer.Option(help="Where the cohorts are written (default data/<preset>).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs per fold (the paper: 100).")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of cohorts, folds and training.")] = 0,
    backbone: Annotated[str, typer.Option(help="auto, resnet50-imagenet or efficientnet-lite0-imagenet.")] = "auto",
    weights: Annotated[str | None, typer.Option(help="Backbone weight file.")] = None,
    resamples: ResamplesOpt = 1000,
    ci: CiOpt = "bootstrap_bca",
    primary: PrimaryOpt = DEFAULT_PRIMARY,
    margin: MarginOpt = DEFAULT_MARGIN,
    address: AddressOpt = None,
    verbose: VerboseOpt = False,
    workers: Annotated[int | None, typer.Option(help="CPUs of the local Ray (default: all).")] = None,
) -> None:
    """The main job: synth -> preprocess -> features -> train -> readers -> evaluate, then the
    paper's table. Re-running reuses what is done."""
    from pipelines.run import run_all

    settings = _settings(resamples, seed, primary, margin)
    s = run_all(preset, lake=lake, data=data, epochs=epochs, seed=seed, backbone=backbone, weights=weights,
                settings=settings, address=address, workers=workers, echo=typer.echo)
    typer.echo("")
    _print_report(lake, s.run_id, ci)
    typer.echo("time per stage: " + ", ".join(f"{k} {v:.0f} s" for k, v in s.seconds.items())
               + f"; {sum(s.seconds.values()):.0f} s in all")
    typer.echo(f"lake: {s.lake}  (gbmmet query --lake {s.lake} \"select * from metrics limit 5\")")


@app.command()
@_user_errors
def predict(
    t1c: Annotated[Path, typer.Option("--t1c", help="Contrast-enhanced T1 (NIfTI or a DICOM series folder).")],
    t2: Annotated[Path, typer.Option("--t2", help="T2 (NIfTI or a DICOM series folder).")],
    roi: Annotated[Path, typer.Option("--roi", help="ROI mask on the T2 grid (any non-zero voxel is ROI).")],
    lake: Annotated[str, typer.Option(help="Lake with the trained (and evaluated) run.")] = "lake",
    run: Annotated[str | None, typer.Option(help="Training run (default: the lake's latest).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the class activation map PNGs.")] = Path("predict-out"),
    cam: Annotated[bool, typer.Option("--cam/--no-cam", help="Write Grad-CAM overlays.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (for scripts) instead of text.")] = False,
) -> None:
    """Score one new patient with a run's ensemble: the call, whether to trust it (calibrated
    probability, conformal set, uncertainty, out-of-distribution flag), per-slice probabilities."""
    from gbmmet import constants as C
    from pipelines.predict import run_predict

    p = run_predict(str(t1c), str(t2), str(roi), lake_root=lake, run=run, out=out, cam=cam)
    if as_json:
        typer.echo(json.dumps(p.to_dict(), indent=2))
        return
    typer.echo(f"run {p.run_id} ({p.backbone_id}), {p.slice_probs.shape[0]} fold models, {p.n_slices} ROI slices")
    if p.registration_qc is not None:
        qc = p.registration_qc
        typer.secho(qc.describe(), fg="yellow" if qc.suspect else None)
    _echo_trust(p.trust)
    typer.echo(f"predictive index (share of slices the ensemble calls GBM): {p.predictive_index:.3f}; "
               f"mean P(GBM) {p.soft_index:.3f}")
    if not p.cutoffs:
        typer.echo("  no evaluation of this run yet (gbmmet evaluate): no cutoff to call at")
    for kind, cut in p.cutoffs.items():
        typer.echo(f"  call at the {kind} cutoff {cut:.3f}: {p.calls[kind]}")
    typer.echo("slice  " + "  ".join(f"fold{k}" for k in range(p.slice_probs.shape[0])) + "  vote")
    for i, s in enumerate(p.slice_index):
        vote = C.GBM if p.slice_vote[i] else C.MET
        typer.echo(f"{s:5d}  " + "  ".join(f"{v:5.3f}" for v in p.slice_probs[:, i]) + f"  {vote}")
    if p.overlays:
        typer.echo(f"class activation maps: {len(p.overlays)} PNGs in {out}")
    typer.echo("time: " + ", ".join(f"{k} {v:.1f} s" for k, v in p.seconds.items()))


def _echo_trust(t) -> None:
    """``gbmmet predict``'s lines on whether to trust the call (``pipelines.predict.Trust``)."""
    if t is None:
        return
    u = t.uncertainty
    typer.secho(f"call: {t.call or 'none (no evaluation of this run)'}"
                + (f" at the {t.cutoff_kind} cutoff" if t.cutoff_kind else "")
                + (f"; calibrated P(GBM) {t.prob_gbm:.2f}" if t.prob_gbm is not None else ""), bold=True)
    if t.sets:
        typer.echo("conformal sets: " + ", ".join(f"{round(k * 100)} % {{{v.replace('|', ', ') or 'empty'}}}"
                                                   for k, v in sorted(t.sets.items())))
    typer.echo(f"uncertainty: fold models' indices sd {u.index_fold_sd:.3f}; entropy {u.entropy_total:.3f} bits "
               f"= aleatoric {u.entropy_aleatoric:.3f} + epistemic (mutual information) {u.mutual_information:.3f}")
    if t.ood is not None:
        check = ("sequence check off for this run" if t.sequence_contrast is None else
                 f"T2 - CE-T1 contrast around the ROI {t.sequence_contrast:.3g} WhiteStripe units, below 0 "
                 "when the sequences may be swapped")
        typer.echo(f"out of distribution: {'YES' if t.ood else 'no'} (score {t.ood_score:.3f}, threshold "
                   f"{t.ood_threshold:.3f}: feature distance {t.ood_distance:.3f}; {check})")
    typer.secho(t.line, fg="yellow" if t.deferred else "green")


@app.command()
@_user_errors
def dashboard(
    lake: Annotated[str, typer.Option(help="Lake folder to show.")] = "lake",
    port: Annotated[int, typer.Option(help="Port to serve on.")] = 8501,
    host: Annotated[str, typer.Option(help="Address to bind. 127.0.0.1 (default): this machine only. "
                                           "Another (0.0.0.0: every network) needs sign-in configured in the "
                                           "secrets file, or --no-sign-in.")] = "127.0.0.1",
    run: Annotated[str | None, typer.Option(help="Run shown first (default: the lake's latest).")] = None,
    secrets: Annotated[str | None, typer.Option(
        envvar="GBMMET_SECRETS", help="secrets.toml with the sign-in ([auth]) and the allow-list "
        "([gbmmet.access]); default: Streamlit's own places (.streamlit/secrets.toml).")] = None,
    no_sign_in: Annotated[bool, typer.Option(
        "--no-sign-in", help="Serve on a --host beyond this machine without sign-in: only behind an "
        "authenticating proxy of your own (whoever reaches it sees every site).")] = False,
) -> None:
    """Serve the dashboard (Streamlit): model vs readers, ROC, subgroups, patients, training."""
    from pipelines.dashboard import serve

    serve(lake, host=host, port=port, run=run, secrets=secrets, no_sign_in=no_sign_in, echo=typer.echo)


readers_app = typer.Typer(help="Radiologists' reads.", no_args_is_help=True)
app.add_typer(readers_app, name="readers")


def _register_lake_commands() -> None:
    from pipelines.lake_cmd import lake_app  # imports pipelines.cli: registered once both exist

    app.add_typer(lake_app, name="lake")


@readers_app.command("import")
@_user_errors
def readers_import(
    reads: Annotated[Path, typer.Argument(help="CSV: reader_id, patient_id, assisted, call[, confidence].")],
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    replace: Annotated[bool, typer.Option("--replace", help="Where the lake holds a read of the same reader, patient "
                                          "and assisted flag from another file (or simulated), keep this file's and "
                                          "remove the older one.")] = False,
) -> None:
    """Import reader reads (validated; with any problem nothing is written). Reads that conflict
    with reads from another file are refused unless --replace; identical ones are skipped."""
    from pipelines.readers import import_reads

    s = import_reads(reads, lake, replace=replace)
    typer.echo(f"readers: {s.rows} reads by {', '.join(s.readers) or 'nobody'} imported into {lake} ({s.source})")
    notes = ((f"{len(s.replaced)} older read(s) replaced by this file's:", s.replaced),
             (f"{len(s.skipped)} read(s) skipped, identical to reads already in the lake (--replace moves them "
              "to this file):", s.skipped))
    for title, clashes in notes:
        if clashes:
            typer.echo(title)
            for c in clashes:
                typer.echo(f"  {c}")


@readers_app.command("simulate-assisted")
@_user_errors
def readers_simulate_assisted(
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    run: Annotated[str | None, typer.Option(help="Training run whose model the readers consult (default: the lake's latest).")] = None,
    cutoff: Annotated[str, typer.Option(help="The cutoff of the model's call shown to the readers.")] = "val_youden_ensemble",
    seed: Annotated[int, typer.Option(help="Seed of the simulated readers' choices.")] = 0,
) -> None:
    """Synthetic cohorts only: simulated readers read again with the model's call (they follow it
    where unsure, so they adopt its errors too); written as reads of source simulated:<run>."""
    from pipelines.evaluate import train_run_record
    from pipelines.readers import simulate_assisted
    from storage.lake import Lake

    run_id = train_run_record(Lake(lake), run)["run_id"]
    s = simulate_assisted(lake, run_id, cutoff_kind=cutoff, seed=seed)
    typer.echo(f"readers: {s.rows} assisted reads by {', '.join(s.readers)} simulated with run {run_id} ({s.source})")


@app.command()
@_user_errors
def query(
    sql: Annotated[str, typer.Argument(help="SQL over the lake's views (patients, slices, preprocess_runs, ...).")],
    lake: Annotated[str, typer.Option(help="Lake folder.")] = "lake",
    param: Annotated[list[str] | None, typer.Option("--param", "-p", help="A value for the next ? in the SQL (repeatable).")] = None,
    format: Annotated[str, typer.Option("--format", help="table (default), csv or parquet.")] = "table",
    out: Annotated[Path | None, typer.Option(help="File to write csv / parquet to (default: stdout for csv).")] = None,
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 50,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Answer from the tables as the run RUN read them "
                                                "(RUN, or RUN/KIND for one of its jobs: train, evaluate, score; "
                                                "default its latest job).")] = None,
    version: Annotated[list[str] | None, typer.Option("--version", help="Answer from TABLE as of Delta version V "
                                                        "(TABLE=V, repeatable; after --as-of, overrides it).")] = None,
) -> None:
    """Query the lake with DuckDB; values go in as parameters (-p), never pasted into the SQL."""
    from pipelines.query import run_query

    run_query(sql, lake, params=param or [], fmt=format, out=out, limit=limit, as_of=as_of, versions=version or [])


@app.command()
def version() -> None:
    """Print gbmmet's version."""
    from gbmmet import __version__

    typer.echo(__version__)


@app.command()
@_user_errors
def report(
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    run: Annotated[str | None, typer.Option(help="Evaluated run (default: the lake's latest evaluated run).")] = None,
    out: Annotated[Path, typer.Option("--out", help="PDF file to write.")] = Path("report.pdf"),
    ci: CiOpt = "bootstrap_bca",
) -> None:
    """Write the run's printable report (PDF): summary with verdicts, headline table, ROC,
    calibration, patient flow, run record and versions; the Summary page's download is the same.
    Reads the lake only."""
    from storage.report import write_report

    run_id, path, pages = write_report(lake, run, out, ci)
    typer.echo(f"report {run_id}: {path} ({pages} pages)")


_register_lake_commands()
__import__("pipelines.qc_cmd").qc_cmd.register(app)  # gbmmet qc (pipelines/qc_cmd.py)
__import__("pipelines.manifest_cmd").manifest_cmd.register(app)  # gbmmet manifest (pipelines/manifest_cmd.py)


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: sys.argv[1:]); return the exit code."""
    try:
        app(args=argv if argv is not None else sys.argv[1:], prog_name="gbmmet", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
