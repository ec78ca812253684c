"""``gbmmet qc``: the preprocessing QC report as one static HTML page.

One page: a section per site (every site of the lake, or only ``--site`` ones), each patient's
QC panels (PNG inlined as base64, so the file stands alone) and flags with their rules, worst
first within each site (``storage.qc_report``). Reads the lake only. Registered in
``pipelines.cli`` by ``register(app)``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Annotated

import typer


def _user_errors(fn):
    """``pipelines.cli``'s handling of gbmmet's errors, imported when the command runs."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from pipelines.cli import _user_errors as handle

        return handle(fn)(*args, **kwargs)

    return wrapper


def write_qc_report(lake: str, out: Path, sites: list[str] | None = None):
    """Write the QC page of ``lake`` (``sites``: those only) to ``out``; return the ``QCReport``.

    Raises:
        ConfigError: a site named that has no patient in the lake.
        LakeError: the lake holds no QC panels of the chosen sites.
    """
    from gbmmet import constants as C
    from gbmmet.errors import ConfigError, LakeError
    from storage.lake import Lake
    from storage.qc_report import load_qc, render_html

    lk = Lake(lake)
    if sites:
        have = {r[C.COL_SITE] for r in lk.read(C.TABLE_PATIENTS, columns=[C.COL_SITE]).to_pylist()}
        unknown = sorted(set(sites) - have)
        if unknown:
            raise ConfigError(f"--site {', '.join(unknown)}: no patient of that site in the lake {lake} "
                              f"(its sites: {', '.join(sorted(have)) or 'none'})")
    report = load_qc(lk, sites or None)
    if not report.patients:
        raise LakeError(f"the lake {lake} holds no QC panels{' of ' + ', '.join(sites) if sites else ''}: "
                        "preprocess with QC on (the default) to draw them")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report, lake), encoding="utf-8")
    return report


@_user_errors
def qc(
    lake: Annotated[str, typer.Option(help="Lake folder or URI.")] = "lake",
    site: Annotated[list[str] | None, typer.Option("--site", help="Only this site (repeatable; default: every "
                                                                  "site, a section each).")] = None,
    out: Annotated[Path, typer.Option("--out", help="HTML file to write.")] = Path("qc.html"),
) -> None:
    """Write the preprocessing QC page (HTML): every patient's panels (registration before and after,
    N4 fields, WhiteStripe histograms, ROI slices) and flags, worst first within each site."""
    report = write_qc_report(lake, out, site)
    flagged = sum(1 for p in report.patients if p.badness[0])
    size = out.stat().st_size / 1e6
    typer.echo(f"qc: {len(report.patients)} patient(s) of {len(report.sites)} site(s), {flagged} with flags raised: "
               f"{out} ({size:.1f} MB)")
    for p in report.patients:
        for f in p.raised:
            typer.echo(f"  {p.site} {p.patient_id}: {f.name}: {f.detail}")


def register(app: typer.Typer) -> None:
    """Add ``gbmmet qc`` to ``app``."""
    app.command("qc")(qc)
