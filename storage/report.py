"""The printable report of an evaluated run, as one PDF: ``gbmmet report`` and the Summary page's
download button both call ``build_report``, so they make the same file.

Pages: the summary (per cohort the sentence, the model and readers with their CIs, the paired
differences with their verdicts against the margin), the headline table, the ROC with the
operating points, calibration (reliability and decision curves), the patient flow, and the run's
record with its versions.

Rendered on the server with no browser and no network: the figures are drawn with matplotlib
(SVG, so they stay sharp in print) and the document is typeset by Typst (the ``typst`` wheel, its
bundled fonts only) from a fixed template and a JSON file of the numbers, in a temporary folder.
The template never sees a value as markup: every string reaches the page as text.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gbmmet import constants as C
from gbmmet.summary import (
    COHORT_NAMES,
    METRIC_NAMES,
    CohortSummary,
    Estimate,
    Flow,
    flows,
    recorded_settings,
    summarise,
)

HEADINGS = {"accuracy": "accuracy", "recall": "sensitivity", "specificity": "specificity", "precision": "PPV",
            "f1": "F1", "auc": "AUC"}
FALLBACK_NOTE = ("\u2020 another interval than the one chosen: the percentile interval of the same resamples "
                 "where BCa was undefined, or Wilson's where the bootstrap interval had zero width (e.g. every GBM "
                 "called GBM).")
VERDICT_NOTE = ("Verdicts read the difference's {level} % CI against the margin m: superior where its lower bound "
                "is above 0; non-inferior where the lower bound is above -m; inferior where the upper bound is "
                "below -m; inconclusive otherwise. Never 'equivalent', and never from a p value.")
CI_NOTE = ("Sensitivity and specificity: {ci}; AUC: DeLong; readers' AUC from their binary calls. Differences "
           "(a - b on the patients both rated): Newcombe's paired score interval for proportions, DeLong for "
           "AUC, the paired BCa bootstrap where the paper's cutoff is re-chosen.")
# Okabe-Ito: told apart with the common colour-vision deficiencies
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]


@dataclass
class ReportData:
    """Everything the report shows, read from the lake (``collect``)."""

    run: str
    ci: str
    margin: float
    margin_recorded: bool
    level: float
    summaries: list[CohortSummary]
    headline: list[dict]
    points: list[dict]  # metric rows: recall, specificity and AUC of every rater (both cutoffs)
    index: list[dict]  # per patient: cohort, label, predictive index
    calibration: list[dict]
    calibration_summary: list[dict]
    flows: list[Flow]
    records: dict[str, dict]
    made_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"))


def collect(con, run: str, ci: str = C.CI_DEFAULT) -> ReportData:
    """What the report of run ``run`` shows, through ``storage.queries`` on connection ``con``;
    the margin and level are the evaluation's recorded settings (the defaults where it recorded none)."""
    from storage import queries as Q

    records = Q.run_records(con, run)
    config = (records.get("evaluate") or {}).get("config")
    settings, recorded = recorded_settings(config if isinstance(config, dict) else None)
    points = Q.metric_rows(con, run, ci_method=ci, metrics=("recall", "specificity", "auc"))
    summaries = summarise(points, Q.difference_rows(con, run), margin=settings.margin, level=settings.level)
    return ReportData(run=run, ci=ci, margin=settings.margin, margin_recorded=recorded, level=settings.level,
                      summaries=summaries, headline=Q.paper_table(con, run, ci), points=points,
                      index=Q.patient_index(con, run), calibration=Q.calibration_points(con, run),
                      calibration_summary=Q.calibration_summary(con, run), flows=flows(Q.flow_rows(con, run)),
                      records=records)


def build_report(con, run: str, ci: str = C.CI_DEFAULT) -> bytes:
    """The report of run ``run`` as PDF bytes (``render(collect(con, run, ci))``)."""
    return render(collect(con, run, ci))


def write_report(lake: str, run: str | None, out: Path, ci: str = C.CI_DEFAULT) -> tuple[str, Path, int]:
    """``gbmmet report``: the report of run ``run`` (default: the lake's latest evaluated run) into
    ``out``. Reads the lake without writing to it. Returns the run, the file and its page count.

    Raises:
        ConfigError: no such lake, no evaluated run, or ``run`` not evaluated.
    """
    from gbmmet.errors import ConfigError
    from storage import catalog
    from storage.lake import Lake

    lk = Lake(lake)
    if lk.local_root is not None and not lk.local_root.is_dir():
        raise ConfigError(f"no lake at {lake}")
    if ci not in C.CI_METHODS:
        raise ConfigError(f"--ci must be one of {list(C.CI_METHODS)}; got {ci!r}")
    con = catalog.memory_connection(lk)
    try:
        evaluated = [r for r, in con.execute(
            "select run_id from runs where kind = 'evaluate' and status = 'ok' order by finished_at desc").fetchall()]
        if run is None:
            if not evaluated:
                raise ConfigError(f"no evaluated run in {lake}: run `gbmmet evaluate --lake {lake}` first")
            run = evaluated[0]
        elif run not in evaluated:
            raise ConfigError(f"run {run!r} has no evaluation in {lake} (`gbmmet evaluate --lake {lake} --run {run}`); "
                              f"evaluated runs: {sorted(set(evaluated))}")
        pdf = build_report(con, run, ci)
    finally:
        con.close()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pdf)
    return run, out, page_count(pdf)


def page_count(pdf: bytes) -> int:
    """Pages of a PDF Typst wrote (its page tree's /Count)."""
    import re

    counts = [int(m) for m in re.findall(rb"/Type\s*/Pages\b[^>]*?/Count\s+(\d+)", pdf)]
    counts += [int(m) for m in re.findall(rb"/Count\s+(\d+)[^>]*?/Type\s*/Pages\b", pdf)]
    return max(counts) if counts else 0


# ---------------------------------------------------------------------------------------------
# figures (matplotlib, no pyplot: safe in the dashboard's threads)
# ---------------------------------------------------------------------------------------------
def _figure(ncols: int, nrows: int = 1, size: float = 3.2):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size * ncols + 0.4, size * nrows + 0.9), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _square(ax, xlabel: str, ylabel: str, title: str, ylim=(0, 1)) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(*ylim)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel(ylabel, fontsize=8)
    ax.set_title(title, fontsize=8.5)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.25, linewidth=0.5)


def _cohort_name(cohort: str) -> str:
    return COHORT_NAMES.get(cohort, cohort)


def roc_line(y, score) -> tuple:
    """The ROC's vertices (fpr, tpr) at every threshold, to be joined by straight lines: where
    GBM and MET patients tie on the score, the segment between two vertices is diagonal (the
    ROC of the tied group), not a step; collinear vertices are kept (``drop_intermediate=False``)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(y, score, drop_intermediate=False)
    return fpr, tpr


def roc_figure(data: ReportData, path: Path) -> bool:
    """The predictive index's ROC per cohort with the model's operating points at both cutoffs and
    each reader's alone and with the model; False where no cohort has both diagnoses. Ties in the
    index are drawn as diagonal segments: every threshold (``drop_intermediate=False``) joined by
    straight lines, not steps."""
    import numpy as np

    cohorts = [c for c in C.TEST_COHORTS if any(r["cohort"] == c for r in data.index)]
    panels = []
    for cohort in cohorts:
        rows = [r for r in data.index if r["cohort"] == cohort]
        y = np.array([r["label"] == C.GBM for r in rows], int)
        if 0 < y.sum() < len(y):
            panels.append((cohort, y, np.array([r["predictive_index"] for r in rows], float)))
    if not panels:
        return False
    # always two panels wide: one cohort leaves the second place to the legend
    fig, axes = _figure(2)
    legend_ax = None
    if len(panels) == 1:
        legend_ax = axes[0][1]
        legend_ax.axis("off")
    readers = sorted({r["rater"] for r in data.points if r["rater"] != C.MODEL_RATER})
    colour = {r: PALETTE[(k + 1) % len(PALETTE)] for k, r in enumerate(readers)}
    for ax, (cohort, y, score) in zip(axes[0][:len(panels)], panels, strict=True):
        fpr, tpr = roc_line(y, score)
        auc = next((r for r in data.points if r["cohort"] == cohort and r["rater"] == C.MODEL_RATER
                    and r["metric"] == "auc"), None)
        title = _cohort_name(cohort) + (f": AUC {_est(auc['value'], auc['ci_low'], auc['ci_high'])}" if auc else "")
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8)
        ax.plot(fpr, tpr, color="#222222", lw=1.4, label="model (predictive index)")
        ops: dict[tuple, dict] = {}
        for r in data.points:
            if r["cohort"] == cohort and r["metric"] in ("recall", "specificity"):
                ops.setdefault((r["rater"], bool(r["assisted"]), r["cutoff_kind"]), {"who": r["who"]})[r["metric"]] = r["value"]
        for (rater, assisted, kind), p in sorted(ops.items(), key=lambda kv: (kv[0][0] != C.MODEL_RATER, kv[0])):
            if p.get("recall") is None or p.get("specificity") is None:
                continue
            x, yv = 1 - p["specificity"], p["recall"]
            if rater == C.MODEL_RATER:
                filled = kind == C.CUTOFF_VAL
                ax.plot(x, yv, marker="D", ms=7, ls="none", mec="#000000", mfc="#000000" if filled else "white",
                        mew=1.2, label=p["who"], zorder=3)
            else:
                ax.plot(x, yv, marker="s" if assisted else "o", ms=7, ls="none", color=colour[rater],
                        mfc=colour[rater] if not assisted else "white", mew=1.5, label=p["who"], zorder=3)
        _square(ax, "1 - specificity", "sensitivity (GBM)", title, ylim=(-0.02, 1.02))
        ax.set_xlim(-0.02, 1.02)
        ax.set_aspect("equal")
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax in axes[0][1:len(panels)]:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if legend_ax is not None:
        legend_ax.legend(handles, labels, loc="center left", fontsize=7.5, frameon=False)
    else:
        fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=7, frameon=False)
    fig.savefig(path, format="svg")
    return True


def calibration_figure(data: ReportData, path: Path) -> bool:
    """Per cohort, the reliability curve (top) and the decision curve (bottom) from ``calibration``;
    False where the run has none."""
    cohorts = [c for c in C.TEST_COHORTS if any(r["cohort"] == c for r in data.calibration)]
    if not cohorts:
        return False
    fig, axes = _figure(len(cohorts), 2, size=3.0)
    for k, cohort in enumerate(cohorts):
        rel = [r for r in data.calibration if r["cohort"] == cohort and r["curve"] == "reliability"]
        dec = [r for r in data.calibration if r["cohort"] == cohort and r["curve"] == "decision"]
        name = _cohort_name(cohort)
        ax = axes[0][k]
        ax.plot([0, 1], [0, 1], ls="--", color="#999999", lw=0.8)
        ax.plot([r["x"] for r in rel], [r["y"] for r in rel], color="#222222", lw=1)
        sizes = [12 + 10 * (r["n"] or 0) for r in rel]
        ax.scatter([r["x"] for r in rel], [r["y"] for r in rel], s=sizes, color=PALETTE[0], zorder=3)
        _square(ax, "predicted P(GBM), bin mean", "observed share of GBM", f"{name}: reliability (size: patients)")
        ax.set_aspect("equal")
        ax = axes[1][k]
        xs = [r["x"] for r in dec]
        model = [r["y"] for r in dec]
        every = [r["treat_all"] for r in dec]
        vals = [v for v in model + every if v is not None and not math.isnan(v)]
        top = (max(vals) + 0.05) if vals else 1.0
        low = max(min(-0.05, min((v for v in model if v is not None), default=0) - 0.02), -0.25)
        ax.plot(xs, model, color=PALETTE[0], lw=1.5, label="model")
        ax.plot(xs, every, color=PALETTE[5], lw=1.2, ls="--", label="treat all as GBM")
        ax.plot(xs, [r["treat_none"] for r in dec], color="#777777", lw=1.2, ls=":", label="treat none")
        _square(ax, "threshold probability of GBM", "net benefit", f"{name}: decision curve", ylim=(low, top))
        if k == 0:
            ax.legend(fontsize=7, frameon=False, loc="upper right")
    fig.savefig(path, format="svg")
    return True


# ---------------------------------------------------------------------------------------------
# the document
# ---------------------------------------------------------------------------------------------
def _est(value, low=None, high=None) -> str:
    from storage.queries import format_estimate

    return format_estimate(value, low, high)


def estimate_text(e, choice: str) -> str:
    """An estimate with its interval, and a dagger where another method made the interval than
    ``choice`` (percentile where BCa was undefined, Wilson where the bootstrap's had zero width)."""
    from storage.queries import FALLBACK_MARK

    text = _est(e.value, e.low, e.high)
    return text + FALLBACK_MARK if text and e.method not in (None, choice) else text


def _num(value) -> str:
    if value is None or value != value:
        return ""
    text = f"{value:.3f}"
    return "0.000" if text == "-0.000" else text


def _document(data: ReportData, figures: dict[str, bool]) -> dict:
    """The JSON the template typesets: every value already a string."""
    from storage.queries import difference_label

    train = data.records.get("train") or {}
    evaluation = data.records.get("evaluate") or {}
    cohorts = []
    for s in data.summaries:
        cohorts.append({
            "title": f"{s.name[:1].upper()}{s.name[1:]}: {s.n} patients, {s.n_gbm} GBM",
            "sentence": s.sentence, "note": s.cutoff_note,
            "raters": [[r.who, f"{r.n} ({r.n_gbm})", estimate_text(r.sensitivity, data.ci),
                        estimate_text(r.specificity, data.ci), estimate_text(r.auc, C.CI_DELONG)] for r in s.raters],
            "comparisons": [[f"{difference_label(c.a)} - {difference_label(c.b)}", METRIC_NAMES.get(c.metric, c.metric),
                             str(c.n), _est(c.diff, c.low, c.high), c.verdict] for c in s.comparisons],
        })
    headline = [[_cohort_name(r["cohort"]), r["rater"], f"{r['n']} ({r['n_gbm']})",
                 *[estimate_text(Estimate(*r[m]), C.CI_DELONG if m == "auc" else data.ci) if r.get(m) else ""
                   for m in C.HEADLINE_METRICS]] for r in data.headline]
    cal = {}
    for r in data.calibration_summary:
        cal.setdefault(_cohort_name(r["cohort"]), {})[r["metric"]] = _num(r["value"])
    flows_ = [{"name": _cohort_name(f.cohort), "in_manifest": str(f.in_manifest),
               "preprocessed": str(f.preprocessed), "failed": str(f.n_failed),
               "failed_by": ", ".join(f"{k}: {n}" for k, n in f.failed),
               "not_evaluated": str(f.not_evaluated), "evaluated": str(f.evaluated),
               "read": [f"{reader}: {n}" for reader, n in f.read]} for f in data.flows]
    cfg = evaluation.get("config") if isinstance(evaluation.get("config"), dict) else {}
    settings = cfg.get("settings") or {}
    cutoffs = (cfg.get("cutoffs") or {})
    tcfg = train.get("config") if isinstance(train.get("config"), dict) else {}
    record = [
        ("run", data.run), ("mode", train.get("mode")), ("backbone", train.get("backbone_id")),
        ("why this backbone", train.get("backbone_reason")), ("weights sha256", train.get("weights_sha256")),
        ("folds", tcfg.get("folds")), ("epochs per fold", (tcfg.get("head") or {}).get("epochs")),
        ("seeds (training)", json.dumps(train.get("seeds")) if train.get("seeds") is not None else None),
        ("git commit", train.get("git_commit")),
        ("trained", f"{train['finished_at']} ({train.get('seconds') or 0:.0f} s)" if train.get("finished_at") else None),
        ("evaluated", f"{evaluation['finished_at']} ({evaluation.get('seconds') or 0:.0f} s)"
         if evaluation.get("finished_at") else None),
        *[(f"cutoff {k}", f"{v.get('value'):.3f} (chosen on {v.get('chosen_on')}, n = {v.get('n')})")
          for k, v in cutoffs.items() if isinstance(v, dict) and v.get("value") is not None],
        ("resamples per CI", settings.get("n_resamples")), ("resampling seed", settings.get("seed")),
        ("CI level", settings.get("level")), ("CI methods", ", ".join(cfg.get("ci_methods") or [])),
        ("primary comparison", ", ".join(str(v) for v in (settings.get("primary") or {}).values())),
        ("non-inferiority margin", f"{data.margin:.2f}" + ("" if data.margin_recorded
                                                          else " (the default: this evaluation recorded none)")),
    ]
    versions = train.get("versions") if isinstance(train.get("versions"), dict) else {}
    return {
        "run": data.run, "made_at": data.made_at, "ci": data.ci, "margin": f"{data.margin:.2f}",
        "margin_note": "" if data.margin_recorded else
        f"This evaluation was recorded before the margin was a setting: the default {data.margin:.2f} is used.",
        "verdict_note": VERDICT_NOTE.format(level=f"{data.level * 100:g}"), "ci_note": CI_NOTE.format(ci=data.ci),
        "fallback_note": FALLBACK_NOTE,
        "cohorts": cohorts, "headline": headline,
        "headline_columns": ["cohort", "rater", "n (GBM)", *[HEADINGS[m] for m in C.HEADLINE_METRICS]],
        "roc": figures.get("roc", False), "calibration": figures.get("calibration", False),
        "calibration_summary": [[k, v.get("brier", ""), v.get("calibration_intercept", ""),
                                 v.get("calibration_slope", "")] for k, v in cal.items()],
        "flows": flows_,
        "record": [[k, "" if v is None else str(v)] for k, v in record],
        "versions": [[k, str(v)] for k, v in sorted(versions.items())],
        "config": "\n".join(f"{part}.{k} = {json.dumps(v, sort_keys=True, default=str)}"
                             for part, c in (("training", tcfg), ("evaluation", cfg)) for k, v in sorted(c.items())),
    }


def render(data: ReportData) -> bytes:
    """The report as PDF bytes: figures and the numbers' JSON into a temporary folder, then Typst."""
    import typst

    with tempfile.TemporaryDirectory(prefix="gbmmet-report-") as tmp:
        folder = Path(tmp)
        figures = {"roc": roc_figure(data, folder / "roc.svg"),
                   "calibration": calibration_figure(data, folder / "calibration.svg")}
        (folder / "data.json").write_text(json.dumps(_document(data, figures)), encoding="utf-8")
        (folder / "report.typ").write_text(TEMPLATE, encoding="utf-8")
        fonts = typst.Fonts(include_system_fonts=False)  # the wheel's own: the same PDF on every machine
        return typst.Compiler(str(folder / "report.typ"), root=str(folder), font_paths=fonts).compile(format="pdf")


TEMPLATE = r"""
#let d = json("data.json")
#set document(title: "gbmmet evaluation report: run " + d.run, author: "gbmmet")
#set page(paper: "a4", margin: (x: 15mm, top: 16mm, bottom: 18mm),
  footer: context [#set text(size: 7.5pt, fill: luma(90)); gbmmet · run #d.run · #d.made_at #h(1fr) page #counter(page).display("1 of 1", both: true)])
#set text(font: "Libertinus Serif", size: 9.5pt, lang: "en")
#set par(justify: false, leading: 0.55em)
#show heading.where(level: 1): set text(size: 15pt)
#show heading.where(level: 2): set text(size: 12pt)
#show heading.where(level: 3): set text(size: 10.5pt)
#set table(stroke: (x, y) => (top: if y <= 1 { 0.6pt } else { 0.2pt + luma(200) }, bottom: 0.6pt),
           inset: (x: 4pt, y: 3pt))
#show table.cell.where(y: 0): set text(weight: "bold")
#let verdict-fill = (
  "superior": rgb("#cfe8cf"), "non-inferior": rgb("#e6f2e6"),
  "inconclusive": rgb("#f2ecd9"), "inferior": rgb("#f4d3d0"))
#let small(body) = text(size: 8pt, fill: luma(60), body)
#let note(body) = block(fill: rgb("#fff4d6"), inset: 6pt, radius: 2pt, width: 100%, text(size: 8.5pt, body))

= GBM vs metastasis: evaluation report
#small[Run *#d.run* · made #d.made_at · sensitivity and specificity CIs: #d.ci, AUC: DeLong · non-inferiority margin #d.margin]

== Summary
#if d.margin_note != "" { note(d.margin_note) }
#for c in d.cohorts [
  === #c.title
  #block(inset: (left: 6pt), stroke: (left: 2pt + rgb("#0072B2")), c.sentence)
  #if c.note != "" { note(c.note) }
  #table(columns: (auto, auto, 1fr, 1fr, 1fr), align: (left, right, right, right, right),
    table.header([rater], [n (GBM)], [sensitivity (95 % CI)], [specificity (95 % CI)], [AUC (95 % CI)]),
    ..c.raters.flatten())
  #if c.comparisons.len() > 0 [
    #table(columns: (auto, auto, auto, 1fr, auto), align: (left, left, right, right, left),
      table.header([a - b (same patients)], [metric], [n], [difference (95 % CI)], [verdict]),
      ..c.comparisons.map(r => (r.at(0), r.at(1), r.at(2), r.at(3),
        table.cell(fill: verdict-fill.at(r.at(4), default: none), r.at(4)))).flatten())
  ]
]
#small[#d.verdict_note #d.ci_note #d.fallback_note]

#page(flipped: true)[
  == Model and readers
  #small[Every rater on each test cohort, with 95 % CIs (#d.ci, AUC: DeLong; #sym.dagger another interval, as on the first page). GBM is the positive class; sensitivity is recall, PPV precision. The paper's cutoff (\*) is Youden on the internal test ROC, chosen on the internal test itself: optimistic there. The validation cutoff is Youden on the validation patients: no test patient used.]
  #set text(size: 8pt)
  #table(columns: (auto, auto, auto, 1fr, 1fr, 1fr, 1fr, 1fr, 1fr),
    align: (left, left, right, right, right, right, right, right, right),
    table.header(..d.headline_columns),
    ..d.headline.flatten())
]

#if d.roc [
  == ROC
  #small[The ensemble's predictive index (the share of a patient's slices the folds' majority vote calls GBM); tied indices are joined by straight (diagonal) segments. Diamonds: the model at the validation cutoff (filled) and at the paper's (open); circles: readers alone; squares: readers with the model. AUC with DeLong's 95 % CI.]
  #image("roc.svg", width: 100%)
]

#let flowbox(body) = box(stroke: 0.6pt, inset: 5pt, radius: 2pt, width: 100%, body)
#let down = align(center, text(size: 11pt, sym.arrow.b))
#let side = align(center, text(size: 11pt, sym.arrow.r))
#if d.flows.len() > 0 { block(breakable: false)[
  == Patient flow
  #small[STARD: the cohort's patients in the manifests, whether preprocessing succeeded (failures by kind), whether the evaluation scored them, and how many each reader read without the model.]
  #grid(columns: (1fr,) * calc.max(2, d.flows.len()), column-gutter: 8mm,
    ..d.flows.map(f => [
      #set text(size: 8.5pt)
      *#f.name*
      #grid(columns: (55%, 7%, 38%), row-gutter: 1.5mm, align: horizon,
        flowbox[In the manifests: *#f.in_manifest*], [], [],
        down, side, flowbox[Failed preprocessing: *#f.failed* #if f.failed_by != "" [ \ #f.failed_by ]],
        flowbox[Preprocessed: *#f.preprocessed*], [], [],
        down, if f.not_evaluated != "0" { side } else { [] },
          if f.not_evaluated != "0" { flowbox[Not evaluated: *#f.not_evaluated*] } else { [] },
        flowbox[Evaluated: *#f.evaluated*], [], [],
        down, [], [],
        flowbox[Read without the model: #if f.read.len() == 0 [none] else [ \ #f.read.join(linebreak())]], [], [],
      )
    ]))
] }

#if d.calibration [
  #pagebreak()
  == Calibration
  #small[P(GBM): the predictive index turned into a probability by a logistic fit on the validation patients only. Reliability: patients binned by P(GBM); on the dashed diagonal P(GBM) is right. Decision curve: net benefit of calling GBM above each threshold against calling every patient GBM and calling none.]
  #align(center, image("calibration.svg", width: 80%))
  #table(columns: 4, align: (left, right, right, right),
    table.header([cohort], [Brier score], [calibration intercept], [calibration slope]),
    ..d.calibration_summary.flatten())
]

#pagebreak()
== Run record
#table(columns: (auto, 1fr), align: (left, left),
  table.header([field], [value]),
  ..d.record.flatten())
#if d.versions.len() > 0 [
  === Versions
  #table(columns: (auto, 1fr), align: (left, left), table.header([package], [version]), ..d.versions.flatten())
]
=== Configuration, as recorded
#text(font: "DejaVu Sans Mono", size: 6.5pt, raw(d.config, block: true, lang: none))
"""
