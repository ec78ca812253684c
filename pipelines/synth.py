"""``gbmmet synth``: write synthetic multi-site cohorts, one Ray task per patient.

Output folder (``--out``)::

    cohort.json                 preset, seed, difficulty, version: what made this folder
    <site>/manifest.csv, <site>/reads.csv, <site>/images/..., <site>/truth/... (see writer)
    preview.png                 with --preview

Re-running with the same preset, seed, difficulty and generator version into the same folder
writes only the patients that are missing (an interrupted run picks up where it stopped). A folder
made with other settings is refused unless ``--overwrite``, which replaces it; ``--overwrite``
only ever deletes a folder that gbmmet synth made (it has ``cohort.json``), never an arbitrary
non-empty folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from gbmmet import __version__
from gbmmet import constants as C
from gbmmet.errors import ConfigError, OutputExistsError
from gbmmet.synth import GENERATOR_VERSION

COHORT_FILE = "cohort.json"
PREVIEW_FILE = "preview.png"


@dataclass(frozen=True)
class SynthConfig:
    preset: str = "demo"
    out: Path = Path("data/demo")
    seed: int = 0
    difficulty: float = 0.5
    truth: bool = False

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


def _synth_one(spec, preset, difficulty: float, site_dir: str, truth: bool) -> dict:
    from gbmmet.synth.render import synthesize_patient
    from gbmmet.synth.writer import write_patient
    from pipelines.ray_runtime import match_threads_to_task

    match_threads_to_task()

    return write_patient(synthesize_patient(spec, preset, difficulty), Path(site_dir), truth=truth)


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
        OutputExistsError: ``out`` is not empty and cannot be resumed or overwritten.
    """
    from gbmmet.synth.render import patient_reads
    from gbmmet.synth.writer import manifest_row, patient_complete, write_table

    if workers is not None and workers < 0:
        raise ConfigError(f"The 'workers' parameter must be >= 0. Got {workers!r} instead.")
    preset, specs, resume = _validate(cfg, overwrite)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / COHORT_FILE).write_text(json.dumps(cfg.record(), indent=1, sort_keys=True))

    # Temporary folders of patients a killed run was writing: never seen as patients, removed.
    for stale in out.glob("*/*/.*.tmp"):
        shutil.rmtree(stale, ignore_errors=True)
    todo, reused = [], 0
    for spec in specs:
        site_dir = out / spec.site
        if resume and patient_complete(site_dir, spec.patient_id, cfg.truth):
            reused += 1
            continue
        todo.append((spec.patient_id, (spec, preset, cfg.difficulty, str(site_dir.resolve()), cfg.truth)))

    use_ray = workers != 0 and len(todo) > 0
    if use_ray:
        from pipelines.ray_runtime import init_ray

        init_ray(address=address, num_cpus=workers)
    from pipelines.ray_runtime import run_batch

    report = run_batch(todo, _synth_one, description=f"synth {cfg.preset}", use_ray=use_ray,
                       show_progress=show_progress)
    failed = {o.key: o.error for o in report.failed}

    manifests = []
    for site in sorted({s.site for s in specs}):
        site_specs = [s for s in specs if s.site == site and s.patient_id not in failed]
        site_specs.sort(key=lambda s: s.patient_id)
        site_dir = out / site
        site_dir.mkdir(parents=True, exist_ok=True)
        write_table([manifest_row(s) for s in site_specs], C.MANIFEST_COLUMNS, site_dir / C.MANIFEST_FILE)
        reads = [r for s in site_specs for r in patient_reads(s, cfg.difficulty)]
        write_table(reads, C.READS_COLUMNS, site_dir / C.READS_FILE)
        manifests.append(site_dir / C.MANIFEST_FILE)

    preview_path = None
    if preview:
        from gbmmet.synth.preview import write_preview

        preview_path = write_preview(out, out / PREVIEW_FILE)
    return SynthResult(
        out=out,
        n_written=len(report.ok),
        n_reused=reused,
        failed=failed,
        seconds=report.seconds,
        manifests=manifests,
        preview=preview_path,
    )
