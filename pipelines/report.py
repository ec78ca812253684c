"""The printed evaluation report (``gbmmet evaluate`` / ``gbmmet run``): the headline table with
CIs, the paired differences with Holm-adjusted p values, and the patient flow. Rich renderables
built from ``storage.queries``; nothing here computes a statistic."""

from __future__ import annotations

from gbmmet import constants as C
from storage.queries import (
    CUTOFF_NOTE,
    FALLBACK_MARK,
    FALLBACK_NOTE,
    SUBSAMPLE_MARK,
    SUBSAMPLE_NOTE,
    difference_rows,
    flow_rows,
    format_estimate,
    paper_table,
    trust_rows,
)

HEADINGS = {"recall": "sensitivity", "precision": "PPV", "auc": "AUC", "f1": "F1"}


def subsample_note() -> str:
    from gbmmet.stats import SUBSAMPLE_COVERAGE_NOTE

    return SUBSAMPLE_NOTE.format(coverage=SUBSAMPLE_COVERAGE_NOTE)


def headline_table(con, run: str, ci: str) -> list:
    """Model and readers per cohort: every headline metric with its interval."""
    from rich.table import Table

    rows = paper_table(con, run, ci)
    mark = SUBSAMPLE_MARK if ci == C.CI_SUBSAMPLE else ""
    table = Table(title=f"run {run}: model and readers; 95 % CI: {ci}{mark} (AUC: DeLong); readers' AUC from their calls",
                  caption=CUTOFF_NOTE)
    for col in ("cohort", "rater", "n (GBM)", *(HEADINGS.get(m, m) for m in C.HEADLINE_METRICS)):
        table.add_column(col, justify="left" if col in ("cohort", "rater") else "right")
    fell_back = False
    for r in rows:
        cells = []
        for m in C.HEADLINE_METRICS:
            v = r.get(m)
            fb = m != "auc" and v is not None and v[3] not in (ci, None)
            fell_back |= fb
            cells.append("" if v is None else format_estimate(*v[:3]) + (FALLBACK_MARK if fb else ""))
        table.add_row(r["cohort"], r["rater"], f"{r['n']} ({r['n_gbm']})", *cells)
    out: list = [table]
    if fell_back:
        out.append(FALLBACK_NOTE)
    if mark:
        out.append(subsample_note())
    return out


def difference_table(con, run: str) -> list:
    """Paired differences: a minus b with its bootstrap CI, the test, p and Holm-adjusted p."""
    from rich.table import Table

    rows = difference_rows(con, run)
    if not rows:
        return ["No paired differences: the lake has no reads for the test cohorts (gbmmet readers import)."]
    table = Table(title=f"run {run}: paired differences (a - b, same patients; 95 % CI: Newcombe for proportions, "
                        "DeLong for AUC, paired BCa bootstrap where the paper's cutoff is re-chosen)",
                  caption="p: McNemar on all patients (accuracy), on GBMs (sensitivity), on METs (specificity); "
                          "DeLong for AUC. Holm: adjusted over every difference of the cohort. "
                          "! the primary comparison (its unadjusted p stands on its own). "
                          "A CI that includes 0 is not evidence of equivalence.")
    for col in ("cohort", "a", "b", "metric", "a", "b", "a - b (95 % CI)", "p", "p Holm"):
        table.add_column(col, justify="left" if col in ("cohort", "a", "b", "metric") else "right")
    for r in rows:
        table.add_row(r["cohort"], ("! " if r["is_primary"] else "") + r["a"], r["b"], HEADINGS.get(r["metric"], r["metric"]),
                      format_estimate(r["estimate_a"]), format_estimate(r["estimate_b"]),
                      format_estimate(r["diff"], r["ci_low"], r["ci_high"]), _p(r["p"]), _p(r["p_holm"]))
    return [table]


def flow_table(con, run: str) -> list:
    """Patient flow (STARD): per cohort and site, patients at each stage."""
    from rich.table import Table

    rows = flow_rows(con, run)
    if not rows:
        return []
    table = Table(title=f"run {run}: patient flow")
    for col in ("cohort", "site", "stage", "detail", "n"):
        table.add_column(col, justify="right" if col == "n" else "left")
    for r in rows:
        table.add_row(r["cohort"], r["site"], r["stage"], r["detail"] or "", str(r["n"]))
    return [table]


def _p(p) -> str:
    if p is None or p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def trust_table(con, run: str) -> list:
    """When not to trust a call, per cohort: conformal coverage of each class and two-label sets
    at the deferral level, the share deferred and the accuracy of the calls kept (Wilson CIs)."""
    from rich.table import Table

    sfx = C.level_suffix(C.DEFERRAL_LEVEL)
    pct = f"{round(C.DEFERRAL_LEVEL * 100)} %"
    columns = {f"coverage of GBMs ({pct} set)": "conformal_coverage_gbm" + sfx,
               f"coverage of METs ({pct} set)": "conformal_coverage_met" + sfx,
               f"two-label sets ({pct})": "conformal_two_label" + sfx, "deferred": "deferred_share",
               "accuracy of calls kept": "accuracy_kept", "accuracy of all calls": "accuracy_all"}
    rows = trust_rows(con, run, list(columns.values()))
    if not rows:
        return []
    table = Table(title=f"run {run}: when not to trust a call (95 % CI: Wilson)",
                  caption=f"deferred: the {pct} conformal set is not one label, or the patient is out of distribution")
    table.add_column("cohort")
    for col in columns:
        table.add_column(col, justify="right")
    for cohort, metrics in rows.items():
        cells = []
        for metric in columns.values():
            m = metrics.get(metric)
            cells.append("-" if m is None or m["value"] is None else format_estimate(m["value"], m["ci_low"], m["ci_high"]))
        table.add_row(cohort, *cells)
    return [table]
