"""Named, parameterised queries over the lake's DuckDB views, shared by the CLI and the dashboard.

Each takes a DuckDB connection holding the views (``catalog.connect`` or
``catalog.memory_connection``); values always travel as ``?`` parameters.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from gbmmet import constants as C

RATER_LABELS = {C.CUTOFF_PAPER: "model, paper cutoff*", C.CUTOFF_VAL: "model, validation cutoff"}
CUTOFF_NOTE = ("* the paper's cutoff: Youden on the internal test ROC, chosen on the internal test itself; its "
               "internal-test interval re-chooses the cutoff in every resample, so the optimism is inside it. "
               "The validation cutoff is Youden on the validation patients' ensemble index: no test patient used.")
SUBSAMPLE_MARK = "\u00a7"  # section sign
SUBSAMPLE_NOTE = (SUBSAMPLE_MARK + " paper_subsample90 is the paper's scheme (1,000 subsets of 90 % of patients "
                  "without replacement), shown as a reproduction: its intervals are far too narrow. Measured: {coverage}. "
                  "Use the default bootstrap for decisions.")


def rater_label(rater: str, assisted: bool | None, cutoff_kind: str | None) -> str:
    """How a metrics row's rater is shown: the model at each cutoff, readers alone or with the model."""
    if rater == C.MODEL_RATER:
        return RATER_LABELS.get(cutoff_kind, C.MODEL_RATER)
    return rater + (" + model" if assisted else "")


def format_estimate(value: float | None, low: float | None = None, high: float | None = None,
                    digits: int = 3) -> str:
    """``0.853 (0.790 to 0.910)``; the value alone where there is no interval; empty for no value.
    (``to`` rather than a dash: differences have negative bounds.)"""
    if value is None or value != value:
        return ""
    text = f"{value:.{digits}f}"
    if low is not None and high is not None and low == low and high == high:
        text += f" ({low:.{digits}f} to {high:.{digits}f})"
    return text


FALLBACK_MARK = "\u2020"  # dagger
FALLBACK_NOTE = (FALLBACK_MARK + " BCa undefined here (a resample without a GBM call, or a constant statistic): "
                 "the percentile interval of the same resamples is shown.")


def metric_rows(con: duckdb.DuckDBPyConnection, run: str, *, ci_method: str = C.CI_DEFAULT,
                auc_ci: str = C.CI_DELONG, cohorts: tuple[str, ...] = C.TEST_COHORTS,
                subgroup: str | None = "all", metrics: tuple[str, ...] = C.PAPER_METRICS) -> list[dict]:
    """Rows of ``metrics`` for run ``run``: one per cohort, subgroup, rater and metric, with the CI
    chosen as ``ci_method`` (AUC: ``auc_ci``); a row's own ``ci_method`` says what made the interval
    (percentile where BCa was undefined). ``subgroup=None`` gives every subgroup. Each row gains
    ``who`` (``rater_label``). Ordered internal before external, model before readers."""
    sql = """
        select cohort, subgroup, rater, assisted, cutoff_kind, metric, value, ci_low, ci_high, ci_method,
               coalesce(ci_choice, ci_method) as ci_choice, n, n_gbm, tp, fp, tn, fn
        from metrics
        where run_id = ? and list_contains(?, cohort) and list_contains(?, metric)
          and (? is null or subgroup = ?)
          and ((metric = 'auc' and coalesce(ci_choice, ci_method) = ?)
               or (metric <> 'auc' and coalesce(ci_choice, ci_method) = ?))
        order by cohort = 'external', cohort, subgroup <> 'all', subgroup, rater <> 'model', rater,
                 cutoff_kind desc, assisted, metric
    """
    res = con.execute(sql, [run, list(cohorts), list(metrics), subgroup, subgroup, auc_ci, ci_method])
    cols = [d[0] for d in res.description]
    rows = [dict(zip(cols, r, strict=True)) for r in res.fetchall()]
    for r in rows:
        r["who"] = rater_label(r["rater"], r["assisted"], r["cutoff_kind"])
    return rows


def paper_table(con: duckdb.DuckDBPyConnection, run: str, ci_method: str = C.CI_DEFAULT,
                metrics: tuple[str, ...] = C.HEADLINE_METRICS) -> list[dict]:
    """The headline table: one row per rater (the model at each cutoff, each reader unassisted and
    assisted) and cohort (internal test, external), each metric as (value, low, high, method that
    made the interval). AUC's CI is DeLong's; the others use ``ci_method``. Readers' AUC is from
    their binary calls, as in the paper."""
    rows: dict[tuple, dict] = {}
    for r in metric_rows(con, run, ci_method=ci_method, metrics=metrics):
        row = rows.setdefault((r["cohort"], r["who"]), {"cohort": r["cohort"], "rater": r["who"], "n": r["n"],
                                                        "n_gbm": r["n_gbm"]})
        row[r["metric"]] = (r["value"], r["ci_low"], r["ci_high"], r["ci_method"])
    return list(rows.values())


def difference_rows(con: duckdb.DuckDBPyConnection, run: str,
                    cohorts: tuple[str, ...] = C.TEST_COHORTS) -> list[dict]:
    """Paired differences of run ``run`` (model minus reader, assisted minus unassisted), internal
    before external, primary comparison first within a cohort."""
    res = con.execute("""
        select cohort, kind, a, b, metric, n, n_gbm, estimate_a, estimate_b, diff, ci_low, ci_high, ci_method,
               test, p, p_holm, family_size, is_primary, note
        from differences where run_id = ? and list_contains(?, cohort)
        order by cohort = 'external', cohort, not coalesce(is_primary, false), kind desc, a, b,
                 list_position(?, metric)
    """, [run, list(cohorts), list(C.DIFFERENCE_METRICS) + [C.AUC_CONFIDENCE]])
    cols = [d[0] for d in res.description]
    return [dict(zip(cols, r, strict=True)) for r in res.fetchall()]


def flow_rows(con: duckdb.DuckDBPyConnection, run: str) -> list[dict]:
    """The patient flow (STARD) of run ``run``: per cohort, site, stage and detail, the count."""
    res = con.execute("""
        select cohort, site, stage, detail, n from patient_flow where run_id = ?
        order by list_position(?, cohort), site,
                 list_position(['in_manifest', 'preprocessed', 'failed', 'evaluated', 'read'], stage), detail
    """, [run, list(C.SPLITS)])
    cols = [d[0] for d in res.description]
    return [dict(zip(cols, r, strict=True)) for r in res.fetchall()]


def trust_rows(con: duckdb.DuckDBPyConnection, run: str, metrics: Sequence[str]) -> dict[str, dict[str, dict]]:
    """Run ``run``'s trust ``metrics`` (conformal coverage and set sizes, deferral; Wilson CIs):
    cohort -> metric -> {value, ci_low, ci_high, n}; empty for runs evaluated without them."""
    res = con.execute("""
        select cohort, metric, value, ci_low, ci_high, n from metrics
        where run_id = ? and ci_method = ? and rater = ? and subgroup = 'all' and list_contains(?, metric)
        order by list_position(?, cohort), metric
    """, [run, C.CI_WILSON, C.MODEL_RATER, list(metrics), list(C.SPLITS)])
    out: dict[str, dict[str, dict]] = {}
    for cohort, metric, value, low, high, n in res.fetchall():
        out.setdefault(cohort, {})[metric] = {"value": value, "ci_low": low, "ci_high": high, "n": n}
    return out


MODEL_AT = C.MODEL_RATER + "@"  # how ``differences`` names the model at a cutoff: model@<cutoff kind>
ASSISTED_SUFFIX = "+assisted"  # how ``differences`` names a reader with the model's result


def difference_label(key: str) -> str:
    """How a ``differences`` rater key is shown, as ``rater_label`` shows a metrics row:
    ``model@val_youden_ensemble`` -> ``model, validation cutoff``; ``reader1+assisted`` ->
    ``reader1 + model``; anything else as it is."""
    if key.startswith(MODEL_AT):
        return rater_label(C.MODEL_RATER, None, key[len(MODEL_AT):])
    if key.endswith(ASSISTED_SUFFIX):
        return rater_label(key[: -len(ASSISTED_SUFFIX)], True, None)
    return key


def format_p(p: float | None) -> str:
    """A p value as the printed report shows it: ``<0.001`` below 0.001, else three decimals;
    empty for none."""
    if p is None or p != p:
        return ""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


CALIBRATION_METRICS = ("brier", "calibration_intercept", "calibration_slope")


def calibration_points(con: duckdb.DuckDBPyConnection, run: str,
                       cohorts: tuple[str, ...] = C.TEST_COHORTS) -> list[dict]:
    """Rows of ``calibration`` for run ``run``: per cohort, the reliability curve's bins and the
    decision curve's thresholds (``curve``, ``x``, ``y``, ``n``, ``treat_all``, ``treat_none``),
    internal before external, each curve in order of ``x``."""
    res = con.execute("""
        select cohort, curve, x, y, n, treat_all, treat_none from calibration
        where run_id = ? and list_contains(?, cohort)
        order by list_position(?, cohort), curve desc, x
    """, [run, list(cohorts), list(C.SPLITS)])
    cols = [d[0] for d in res.description]
    return [dict(zip(cols, r, strict=True)) for r in res.fetchall()]


def calibration_summary(con: duckdb.DuckDBPyConnection, run: str,
                        cohorts: tuple[str, ...] = C.TEST_COHORTS) -> list[dict]:
    """The model's calibration summary per cohort from ``metrics`` (Brier score, calibration
    intercept and slope of P(GBM); no interval): one row per cohort and metric, with n and n_gbm."""
    res = con.execute("""
        select cohort, metric, value, n, n_gbm from metrics
        where run_id = ? and list_contains(?, cohort) and subgroup = 'all' and rater = ?
          and list_contains(?, metric)
        order by list_position(?, cohort), list_position(?, metric)
    """, [run, list(cohorts), C.MODEL_RATER, list(CALIBRATION_METRICS), list(C.SPLITS), list(CALIBRATION_METRICS)])
    cols = [d[0] for d in res.description]
    return [dict(zip(cols, r, strict=True)) for r in res.fetchall()]


def run_records(con: duckdb.DuckDBPyConnection, run: str) -> dict[str, dict]:
    """Run ``run``'s ``runs`` records by kind (train, score, evaluate; the latest of each kind),
    with their JSON fields (config, seeds, versions, fold_checkpoints, timings) decoded."""
    import json

    res = con.execute("select * from runs where run_id = ? order by finished_at nulls first", [run])
    cols = [d[0] for d in res.description]
    out: dict[str, dict] = {}
    for values in res.fetchall():
        rec = dict(zip(cols, values, strict=True))
        for k in ("config", "seeds", "versions", "fold_checkpoints", "timings"):
            if isinstance(rec.get(k), str):
                try:
                    rec[k] = json.loads(rec[k])
                except ValueError:
                    pass
        out[rec["kind"]] = rec
    return out


def patient_index(con: duckdb.DuckDBPyConnection, run: str,
                  cohorts: tuple[str, ...] = C.TEST_COHORTS) -> list[dict]:
    """One row per evaluated patient of ``cohorts`` in run ``run``: cohort, patient_id, label and the
    ensemble's predictive index (what the ROC is drawn from), internal before external."""
    res = con.execute("""
        select split as cohort, patient_id, label, any_value(predictive_index) as predictive_index
        from patient_predictions where run_id = ? and list_contains(?, split)
        group by split, patient_id, label
        order by list_position(?, split), patient_id
    """, [run, list(cohorts), list(C.SPLITS)])
    cols = [d[0] for d in res.description]
    return [dict(zip(cols, r, strict=True)) for r in res.fetchall()]


JOB_KINDS = ("train", "score", "evaluate")


def run_versions(lake, run: str, kind: str | None = None) -> dict[str, int | None]:
    """The Delta version of every table that run ``run``'s job ``kind`` (train, score, evaluate;
    default: its latest job) read, as its ``runs`` record holds them (``lake_versions``): table ->
    version, None for a table that had no commit yet. ``catalog.query(lake, sql, versions=...)``
    then answers from the state that job read (``gbmmet query --as-of RUN``).

    Takes the lake itself (not a connection): the record is read from the latest ``runs``.

    Raises:
        ConfigError: no such run or job (the message lists what the lake has), or a record written
            before runs recorded the versions they read.
    """
    import json

    from gbmmet.errors import ConfigError

    records = lake.read(C.TABLE_RUNS, columns=["run_id", "kind", "finished_at", "lake_versions"]).to_pylist()
    rows = [r for r in records if r["run_id"] == run]
    if not rows:
        known = sorted({r["run_id"] for r in records})
        raise ConfigError(f"no run {run!r} in the lake at {lake.uri}; runs there: {known}")
    jobs = [r for r in rows if kind is None or r["kind"] == kind]
    if not jobs:
        raise ConfigError(f"run {run!r} has no {kind!r} job in the lake at {lake.uri}; its jobs: "
                          f"{sorted({r['kind'] for r in rows})} (one of {list(JOB_KINDS)})")
    rec = max(jobs, key=lambda r: (r["finished_at"] is not None, r["finished_at"] or 0))
    if rec["lake_versions"] is None:
        raise ConfigError(f"the {rec['kind']} record of run {run!r} was written before runs recorded the table "
                          f"versions they read: run the job again to record them")
    return {table: None if v is None else int(v) for table, v in json.loads(rec["lake_versions"]).items()}
