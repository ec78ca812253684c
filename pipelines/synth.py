"""``gbmmet synth``: write synthetic multi-site cohorts, one Ray task per patient.

Output folder (``--out``)::

    cohort.json                 preset, seed, difficulty, version: what made this folder
    <site>/manifest.csv, <site>/reads.csv, <site>/images/..., <site>/truth/... (see writer)
    preview.png                 with --preview
    ood/<kind>/ood.json, manifest.csv, images/..., truth/...   with --ood (gbmmet.synth.ood)
    ood/preview.png             with --ood and --preview: one patient of each OOD kind

Re-running with the same preset, seed, difficulty and generator version into the same folder
writes only the patients that are missing (an interrupted run picks up where it stopped). A folder
made with other settings is refused unless ``--overwrite``, which replaces it; ``--overwrite``
only ever deletes a folder that gbmmet synth made (it has ``cohort.json``), never an arbitrary
non-empty folder.

Out-of-distribution patients (``--ood meningioma,no_lesion,swapped``, ``--ood-count`` of each)
are written in ``ood/<kind>/``, each kind with its own ``ood.json`` record: asking for them never
changes the cohort (nor its ``cohort.json``), so they can be added to an existing cohort, which
resumes (nothing of it redrawn). An OOD folder made with other settings is refused unless
``--overwrite``, which redraws that kind only.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import __version__
from gbmmet import constants as C
from gbmmet.errors import ConfigError, OutputExistsError
from gbmmet.synth import GENERATOR_VERSION

COHORT_FILE = "cohort.json"
OOD_FILE = "ood.json"
PREVIEW_FILE = "preview.png"


@dataclass(frozen=True)
class SynthConfig:
    preset: str = "demo"
    out: Path = Path("data/demo")
    seed: int = 0
    difficulty: float = 0.5
    truth: bool = False
    ood: tuple[str, ...] = ()  # OOD kinds (gbmmet.synth.ood.OOD_KINDS); not part of the record
    ood_count: int = 10  # patients of each OOD kind

    def record(self) -> dict:
        return {
            "preset": self.preset,
            "seed": self.seed,
            "difficulty": self.difficulty,
            "generator_version": GENERATOR_VERSION,
            "gbmmet_version": __version__,
        }


@dataclass
class SynthResult:
    out: Path
    n_written: int
    n_reused: int
    failed: dict[str, str]
    seconds: float
    manifests: list[Path]
    preview: Path | None = None
    ood_manifests: dict[str, Path] = field(default_factory=dict)  # kind -> manifest.csv
    ood_written: int = 0
    ood_reused: int = 0
    ood_preview: Path | None = None


def _validate(cfg: SynthConfig, overwrite: bool):
    from gbmmet.synth.cohort import build_cohort, get_preset

    preset = get_preset(cfg.preset)
    if not 0.0 <= cfg.difficulty <= 1.0:
        raise ConfigError(
            f"The 'difficulty' parameter of synth must be a number in [0, 1]. Got {cfg.difficulty!r} instead."
        )
    specs = build_cohort(preset, cfg.seed)  # raises on a negative seed or a bad preset
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"--out {out} exists and is not a folder")
    resume = False
    if out.is_dir() and any(out.iterdir()):
        marker = out / COHORT_FILE
        previous = json.loads(marker.read_text()) if marker.is_file() else None
        if previous == cfg.record():
            resume = True  # same settings: pick up where it stopped, even with --overwrite
        elif overwrite and previous is not None:
            shutil.rmtree(out)
        elif overwrite:
            raise OutputExistsError(
                f"--out {out} is not empty and was not made by gbmmet synth (no {COHORT_FILE}); "
                "refusing to delete it: choose an empty or new folder"
            )
        else:
            raise OutputExistsError(
                f"--out {out} is not empty and holds a cohort made with other settings "
                f"({previous}); pass --overwrite to replace it, or choose another folder"
                if previous is not None
                else f"--out {out} is not empty; choose an empty or new folder (or --overwrite for a "
                "folder made by gbmmet synth)"
            )
    return preset, specs, resume


def _ood_specs(cfg: SynthConfig) -> list:
    """The OOD patients asked for (none without ``cfg.ood``); checks the settings, writes nothing."""
    from gbmmet.synth.ood import build_ood, parse_kinds

    kinds = parse_kinds(cfg.ood)
    return build_ood(cfg.preset, cfg.seed, kinds, cfg.ood_count) if kinds else []


def _validate_ood(cfg: SynthConfig, ospecs: list, overwrite: bool) -> set[str]:
    """The OOD kinds whose existing folder is kept (resumed); refuses one made otherwise."""
    from gbmmet.synth.ood import OOD_DIR, ood_record

    keep = set()
    for kind in sorted({o.kind for o in ospecs}):
        folder = Path(cfg.out) / OOD_DIR / kind
        if not folder.is_dir() or not any(folder.iterdir()):
            continue
        marker = folder / OOD_FILE
        previous = json.loads(marker.read_text()) if marker.is_file() else None
        if previous == ood_record(kind, cfg.preset, cfg.seed, cfg.ood_count, cfg.difficulty):
            keep.add(kind)
        elif not (overwrite and previous is not None):
            raise OutputExistsError(
                f"{folder} holds OOD patients made with other settings ({previous}); pass --overwrite to "
                "redraw them, or choose another folder"
            )
    return keep


def _synth_ood_one(ospec, preset, difficulty: float, kind_dir: str, truth: bool) -> dict:
    from gbmmet.synth.ood import synthesize_ood
    from gbmmet.synth.writer import write_patient
    from pipelines.ray_runtime import match_threads_to_task

    match_threads_to_task()
    row = write_patient(synthesize_ood(ospec, preset, difficulty), Path(kind_dir), truth=truth)
    return {**row, **ospec.manifest_extra()}


def _ood_todo(cfg: SynthConfig, preset, ospecs: list, keep: set[str]) -> tuple[list, int]:
    """Prepare the OOD folders (records written, stale ones cleared); the patients left to draw."""
    from gbmmet.synth.ood import OOD_DIR, ood_record
    from gbmmet.synth.writer import patient_complete

    out = Path(cfg.out)
    todo, reused = [], 0
    for kind in sorted({o.kind for o in ospecs}):
        folder = out / OOD_DIR / kind
        if kind not in keep and folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        record = ood_record(kind, cfg.preset, cfg.seed, cfg.ood_count, cfg.difficulty)
        (folder / OOD_FILE).write_text(json.dumps(record, indent=1, sort_keys=True))
        for stale in folder.glob("*/.*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)
    for o in ospecs:
        folder = out / OOD_DIR / o.kind
        if o.kind in keep and patient_complete(folder, o.patient.patient_id, cfg.truth):
            reused += 1
            continue
        todo.append((f"{OOD_DIR}/{o.kind}/{o.patient.patient_id}",
                     (o, preset, cfg.difficulty, str(folder.resolve()), cfg.truth)))
    return todo, reused


def _write_ood_manifests(out: Path, ospecs: list, failed: dict[str, str]) -> dict[str, Path]:
    from gbmmet.synth.ood import OOD_DIR, OOD_MANIFEST_COLUMNS
    from gbmmet.synth.writer import manifest_row, write_table

    manifests = {}
    for kind in sorted({o.kind for o in ospecs}):
        folder = out / OOD_DIR / kind
        done = [o for o in ospecs if o.kind == kind and f"{OOD_DIR}/{kind}/{o.patient.patient_id}" not in failed]
        rows = [{**manifest_row(o.patient), **o.manifest_extra()}
                for o in sorted(done, key=lambda o: o.patient.patient_id)]
        write_table(rows, OOD_MANIFEST_COLUMNS, folder / C.MANIFEST_FILE)
        manifests[kind] = folder / C.MANIFEST_FILE
    return manifests


def _synth_one(spec, preset, difficulty: float, site_dir: str, truth: bool) -> dict:
    from gbmmet.synth.render import synthesize_patient
    from gbmmet.synth.writer import write_patient
    from pipelines.ray_runtime import match_threads_to_task

    match_threads_to_task()

    return write_patient(synthesize_patient(spec, preset, difficulty), Path(site_dir), truth=truth)


def _cohort_todo(cfg: SynthConfig, out: Path, preset, specs, resume: bool) -> tuple[list, int]:
    """The cohort patients still to write (Ray items) and how many are reused; the temporary
    folders of patients a killed run was writing (never seen as patients) are removed."""
    from gbmmet.synth.writer import patient_complete

    for stale in out.glob("*/*/.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    todo, reused = [], 0
    for spec in specs:
        site_dir = out / spec.site
        if resume and patient_complete(site_dir, spec.patient_id, cfg.truth):
            reused += 1
            continue
        todo.append((spec.patient_id, (spec, preset, cfg.difficulty, str(site_dir.resolve()), cfg.truth)))
    return todo, reused


def _write_site_tables(out: Path, specs, failed: dict, difficulty: float) -> list[Path]:
    """Each site's manifest and reads (patients that failed left out); the manifests' paths."""
    from gbmmet.synth.render import patient_reads
    from gbmmet.synth.writer import manifest_row, write_table

    manifests = []
    for site in sorted({s.site for s in specs}):
        site_specs = sorted((s for s in specs if s.site == site and s.patient_id not in failed),
                            key=lambda s: s.patient_id)
        site_dir = out / site
        site_dir.mkdir(parents=True, exist_ok=True)
        write_table([manifest_row(s) for s in site_specs], C.MANIFEST_COLUMNS, site_dir / C.MANIFEST_FILE)
        reads = [r for s in site_specs for r in patient_reads(s, difficulty)]
        write_table(reads, C.READS_COLUMNS, site_dir / C.READS_FILE)
        manifests.append(site_dir / C.MANIFEST_FILE)
    return manifests


def run_synth(
    cfg: SynthConfig,
    *,
    overwrite: bool = False,
    preview: bool = False,
    workers: int | None = None,
    address: str | None = None,
    show_progress: bool = True,
) -> SynthResult:
    """Write the cohort of ``cfg``; see the module doc for resuming and overwriting.

    ``workers=0`` runs in this process without Ray; otherwise one Ray task per patient on the
    local Ray (``workers`` CPUs, default all) or on the cluster at ``address``.

    Raises:
        ConfigError: unknown preset, difficulty outside [0, 1], negative seed (nothing written).
        ConfigError: also an unknown OOD kind, ``ood_count`` < 1, or more swapped patients than
            the test cohorts hold.
        OutputExistsError: ``out`` (or an OOD kind's folder) is not empty and cannot be resumed or
            overwritten.
    """
    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    ospecs = _ood_specs(cfg)
    preset, specs, resume = _validate(cfg, overwrite)
    keep = _validate_ood(cfg, ospecs, overwrite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / COHORT_FILE).write_text(json.dumps(cfg.record(), indent=1, sort_keys=True))

    todo, reused = _cohort_todo(cfg, out, preset, specs, resume)

    ood_todo, ood_reused = _ood_todo(cfg, preset, ospecs, keep)
    use_ray = workers != 0 and len(todo) + len(ood_todo) > 0
    if use_ray:
        from pipelines.ray_runtime import init_ray

        init_ray(address=address, num_cpus=workers, shared=(cfg.out,))
    from pipelines.ray_runtime import run_batch

    report = run_batch(todo, _synth_one, description=f"synth {cfg.preset}", use_ray=use_ray,
                       show_progress=show_progress)
    failed = {o.key: o.error for o in report.failed}
    ood_written, seconds = 0, report.seconds
    if ood_todo:
        ood_report = run_batch(ood_todo, _synth_ood_one, description=f"synth {cfg.preset} ood",
                               use_ray=use_ray, show_progress=show_progress)
        failed.update({o.key: o.error for o in ood_report.failed})
        ood_written, seconds = len(ood_report.ok), seconds + ood_report.seconds

    manifests = _write_site_tables(out, specs, failed, cfg.difficulty)
    ood_manifests = _write_ood_manifests(out, ospecs, failed) if ospecs else {}

    preview_path = ood_preview = None
    if preview:
        from gbmmet.synth.ood import OOD_DIR
        from gbmmet.synth.preview import write_ood_preview, write_preview

        preview_path = write_preview(out, out / PREVIEW_FILE)
        if ood_manifests:
            ood_preview = write_ood_preview(list(ood_manifests.values()), out / OOD_DIR / PREVIEW_FILE)
    return SynthResult(
        out=out,
        n_written=len(report.ok),
        n_reused=reused,
        failed=failed,
        seconds=seconds,
        manifests=manifests,
        preview=preview_path,
        ood_manifests=ood_manifests,
        ood_written=ood_written,
        ood_reused=ood_reused,
        ood_preview=ood_preview,
    )
