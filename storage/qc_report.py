"""The preprocessing QC report: every patient's QC panels and flags, read from the lake.

``load_qc`` gathers, per patient with panels (``qc_panels``) whose ``patients`` row is of the same
parameters, its panels, what the task measured, its ``preprocess_runs`` numbers (the attempt the
panels belong to) and its flags (``gbmmet.preprocess.qc_flags.patient_flags``, judged against the
other patients of the same parameters, site first); patients come worst first within their site
(``qc_flags.badness``: warnings raised, then the largest z). ``render_html`` writes them as one
static HTML page, a section per site, the PNGs inlined (``gbmmet qc``); the dashboard's QC page
shows the same.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow.dataset as ds

from gbmmet import constants as C
from gbmmet.preprocess import qc_flags, qc_panels

RUN_COLUMNS = ["attempt_id", "registration_metric", "registration_suspect", "ws_t1c_mean", "ws_t1c_sd",
               "ws_t2_mean", "ws_t2_sd", "n_slices"]


@dataclass
class PatientQC:
    patient_id: str
    site: str
    split: str
    attempt_id: str
    measures: dict
    numbers: dict  # the row the flags were judged on (run numbers and measures)
    flags: list[qc_flags.Flag]
    panels: dict[str, bytes] = field(default_factory=dict)  # panel name -> PNG, in PANELS' order

    @property
    def raised(self) -> list[qc_flags.Flag]:
        return [f for f in self.flags if f.raised]

    @property
    def badness(self) -> tuple[int, float]:
        return qc_flags.badness(self.flags)


@dataclass
class QCReport:
    patients: list[PatientQC]  # by site, worst first within each
    without_panels: list[str]  # current patients of the chosen sites with no panels (preprocessed with qc off)

    @property
    def sites(self) -> list[str]:
        return sorted({p.site for p in self.patients})


def load_qc(lake, sites: Sequence[str] | None = None, *, with_panels: bool = True) -> QCReport:
    """The QC report of the lake's patients at ``sites`` (None: every site); see the module
    docstring. ``with_panels`` False leaves the PNGs out (flags only)."""
    current = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    meta_cols = [C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, "attempt_id", "params_hash", "measures"]
    meta = {}
    for r in lake.read(C.TABLE_QC_PANELS, columns=meta_cols).to_pylist():
        cur = current.get(r[C.COL_PATIENT_ID])
        if cur is not None and cur["params_hash"] == r["params_hash"]:
            meta[r[C.COL_PATIENT_ID]] = r
    attempts = sorted({r["attempt_id"] for r in meta.values()})
    runs = {r["attempt_id"]: r for r in lake.read(
        C.TABLE_PREPROCESS_RUNS, columns=RUN_COLUMNS, filter=ds.field("attempt_id").isin(attempts)).to_pylist()} \
        if attempts else {}
    rows, measures, cohorts = {}, {}, {}
    for pid, m in meta.items():
        run = runs.get(m["attempt_id"], {})
        measures[pid] = json.loads(m["measures"] or "{}")
        rows[pid] = {C.COL_PATIENT_ID: pid, C.COL_SITE: m[C.COL_SITE], "params_hash": m["params_hash"],
                     **{k: run.get(k) for k in RUN_COLUMNS}, **measures[pid]}
        cohorts.setdefault(m["params_hash"], []).append(rows[pid])  # patients preprocessed alike
    chosen = set(sites) if sites is not None else None
    out = []
    for pid, row in rows.items():
        if chosen is not None and row[C.COL_SITE] not in chosen:
            continue
        m = meta[pid]
        out.append(PatientQC(pid, m[C.COL_SITE], m[C.COL_SPLIT], m["attempt_id"], measures[pid], row,
                             qc_flags.patient_flags(row, cohorts[row["params_hash"]])))
    out.sort(key=lambda p: p.patient_id)
    out.sort(key=lambda p: p.badness, reverse=True)
    out.sort(key=lambda p: p.site)
    if with_panels and out:
        attach_panels(lake, out)
    missing = sorted(pid for pid, r in current.items() if pid not in meta and (chosen is None or r[C.COL_SITE] in chosen))
    return QCReport(out, missing)


def attach_panels(lake, patients: list[PatientQC]) -> None:
    """Read the PNG panels of ``patients`` (in place: ``PatientQC.panels``, in display order)."""
    by_attempt = {p.attempt_id: p for p in patients}
    table = lake.read(C.TABLE_QC_PANELS, columns=["attempt_id", "panel", "png"],
                      filter=ds.field("attempt_id").isin(sorted(by_attempt)))
    for r in table.to_pylist():
        by_attempt[r["attempt_id"]].panels[r["panel"]] = r["png"]
    for p in patients:
        p.panels = {name: p.panels[name] for name in qc_panels.PANELS if name in p.panels}


def flag_text(f: qc_flags.Flag) -> str:
    """A flag in words: its verdict, its numbers, its rule."""
    verdict = "not judged" if f.raised is None else ("RAISED" if f.raised else "ok")
    if f.severity == qc_flags.INFO and f.raised:
        verdict = "note"
    return f"{f.name}: {verdict} - {f.detail} [rule: {f.rule}]"


_CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }
.patient { border-top: 1px solid #bbb; padding: 0.6em 0; }
.patient.bad h3 { color: #a33a00; }
ul.flags { margin: 0.3em 0; font-size: 0.85em; }
li.raised { color: #a33a00; font-weight: 600; }
li.note { color: #00579c; }
li.unknown { color: #777; }
.panels { display: flex; flex-wrap: wrap; gap: 8px; align-items: flex-start; }
figure { margin: 0; }
figcaption { font-size: 0.7em; max-width: 260px; color: #555; }
img { image-rendering: pixelated; border: 1px solid #ddd; }
"""


def _flag_class(f: qc_flags.Flag) -> str:
    if f.raised is None:
        return "unknown"
    if f.raised:
        return "note" if f.severity == qc_flags.INFO else "raised"
    return "ok"


def _patient_html(p: PatientQC) -> str:
    n_bad = p.badness[0]
    head = (f'<div class="patient{" bad" if n_bad else ""}" id="{html.escape(p.patient_id)}">'
            f"<h3>{html.escape(p.patient_id)} <small>({html.escape(p.split or '')}, attempt "
            f"{html.escape(p.attempt_id)}) &middot; {n_bad} flag(s) raised</small></h3>")
    flags = "".join(f'<li class="{_flag_class(f)}">{html.escape(flag_text(f))}</li>' for f in p.flags)
    figs = "".join(
        f'<figure><img alt="{html.escape(name)}" title="{html.escape(qc_panels.CAPTIONS[name])}" '
        f'src="data:image/png;base64,{base64.b64encode(png).decode()}">'
        f"<figcaption>{html.escape(qc_panels.CAPTIONS[name])}</figcaption></figure>"
        for name, png in p.panels.items())
    return f'{head}<ul class="flags">{flags}</ul><div class="panels">{figs}</div></div>'


def render_html(report: QCReport, lake_name: str) -> str:
    """The report as one static HTML page: a section per site, patients worst first."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>gbmmet preprocessing QC</title>"
             f"<style>{_CSS}</style></head><body><h1>Preprocessing QC</h1>"
             f"<p>Lake <code>{html.escape(lake_name)}</code>: {len(report.patients)} patient(s) with QC panels, "
             "worst first within each site (flags raised, then the largest robust z). Flags against the cohort "
             "compare a patient with the other patients of its site preprocessed with the same parameters "
             f"(every site where its site has fewer than {qc_flags.MIN_COHORT}).</p>"]
    if report.without_panels:
        parts.append(f"<p>{len(report.without_panels)} patient(s) have no QC panels (preprocessed with QC off, "
                     f"or before QC panels existed): {html.escape(', '.join(report.without_panels))}.</p>")
    for site in report.sites:
        pats = [p for p in report.patients if p.site == site]
        flagged = sum(1 for p in pats if p.badness[0])
        parts.append(f"<h2>Site {html.escape(site)}: {len(pats)} patient(s), {flagged} with flags raised</h2>")
        parts.extend(_patient_html(p) for p in pats)
    parts.append("</body></html>")
    return "\n".join(parts)
