"""What the dashboard shows, read from the lake through ``storage`` only, and cached.

A small pool of in-memory DuckDB databases of views per lake state (``Pool``, each
``catalog.memory_connection``: reading never writes to the lake, not even the catalog file), shared
by every session (``st.cache_resource``): a query takes a connection for as long as it runs, so 20
sessions do not queue behind one connection; every value is a ``?`` parameter. Results are cached
(``st.cache_data``) under the lake's ``stamp``, a digest of its files, so a session reuses what
another one read, and a job that writes to the lake shows on the next rerun without serving stale
tables.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pandas as pd
import streamlit as st

from dashboards import names
from dashboards.names import COHORT_NAMES, cohort_name  # noqa: F401  (the names live in ``names``)
from gbmmet import constants as C
from storage import catalog, queries
from storage.lake import Lake


@st.cache_data(ttl=5, show_spinner=False, max_entries=8)
def lake_stamp(uri: str) -> str:
    """The lake's state (``catalog.stamp``), looked up at most every 5 s."""
    return catalog.stamp(Lake(uri))


#: How many DuckDB connections each lake state gets (the environment's GBMMET_DASHBOARD_CONNECTIONS,
#: else DEFAULT_CONNECTIONS); 1 is one shared connection, one query at a time.
CONNECTIONS_ENV = "GBMMET_DASHBOARD_CONNECTIONS"
DEFAULT_CONNECTIONS = 4
#: Where, if set, every query appends a line (what, seconds waiting for a connection and holding it),
#: and every connection made one (``made``, seconds making it): ``bench/dashboard.py`` reads them.
QUERY_LOG_ENV = "GBMMET_DASHBOARD_QUERY_LOG"
_LOG_LOCK = threading.Lock()


class Pool:
    """``size`` read-only connections to one lake state (``catalog.memory_connection`` each); a
    query takes one for as long as it runs, so sessions wait on each other only when ``size``
    queries run at once.

    Several connections, not cursors of one: a lake on object storage is read through Arrow
    datasets registered on the connection, which its cursors do not see. Each is its own in-memory
    database of views over the same files, made by listing every table: about 0.07 s on an idle
    machine, 1-2 s under load, far longer than most queries. So the first query makes the first
    connection (its error, no lake..., is that query's), and the others are made right after, one by
    one in the background, while the first serves: a query never waits for one being made."""

    def __init__(self, uri: str, size: int):
        self.lake = Lake(uri)
        self.size = max(1, size)
        self._idle: list = []
        self._made = 0  # made or being made
        self._filling = False
        self._free = threading.Condition()
        self._log = os.environ.get(QUERY_LOG_ENV)

    @contextmanager
    def connection(self, what: str = ""):
        """A connection of this pool, for one query (or a few in a row); back in the pool after."""
        t0 = time.perf_counter()
        first = False
        with self._free:
            while not self._idle:
                if self._made == 0:
                    self._made, first = 1, True
                    break
                self._free.wait()
            con = None if first else self._idle.pop()
        if first:
            try:
                con = self._new(what)
            except BaseException:
                with self._free:
                    self._made = 0
                    self._free.notify_all()  # a waiter tries in turn
                raise
            if self.size > 1:
                with self._free:
                    self._filling = True
                threading.Thread(target=self._fill, name="gbmmet-pool", daemon=True).start()
        t1 = time.perf_counter()
        try:
            yield con
        finally:
            t2 = time.perf_counter()
            with self._free:
                self._idle.append(con)
                self._free.notify()
            if self._log:
                self._note(what, wait_s=t1 - t0, hold_s=t2 - t1)

    def _new(self, what: str):
        t = time.perf_counter()
        con = catalog.memory_connection(self.lake)
        if self._log:
            self._note(f"connection for {what}".strip(), made=True, make_s=time.perf_counter() - t)
        return con

    def _fill(self) -> None:
        """The pool's other connections, one after another (a failure leaves it smaller)."""
        try:
            while True:
                with self._free:
                    if self._made >= self.size:
                        return
                    self._made += 1
                try:
                    con = self._new("the pool")
                except Exception:  # noqa: BLE001  (the connections made serve on)
                    with self._free:
                        self._made -= 1
                    return
                with self._free:
                    self._idle.append(con)
                    self._free.notify()
        finally:
            with self._free:
                self._filling = False
                self._free.notify_all()

    def _note(self, what: str, **times) -> None:
        line = json.dumps({"what": what, **times, "size": self.size, "thread": threading.get_ident(), "t": time.time()})
        with _LOG_LOCK, open(self._log, "a") as fh:
            fh.write(line + "\n")


def connections() -> int:
    """The connections each lake state gets: ``CONNECTIONS_ENV``, else ``DEFAULT_CONNECTIONS``."""
    raw = os.environ.get(CONNECTIONS_ENV, "").strip()
    try:
        n = int(raw) if raw else DEFAULT_CONNECTIONS
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"{CONNECTIONS_ENV} must be a whole number of at least 1, not {raw!r}")
    return n


@st.cache_resource(show_spinner=False, max_entries=4)
def _pool(uri: str, stamp: str) -> Pool:
    """The connections to one lake state, shared by every session (a new state, a new pool)."""
    return Pool(uri, connections())


def _use(uri: str, stamp: str, what: str):
    """A connection to the lake state, for one query: ``with _use(...) as con``."""
    return _pool(uri, stamp).connection(what)


def _df(uri: str, stamp: str, sql: str, params: list | tuple = ()) -> pd.DataFrame:
    with _use(uri, stamp, f"{sys._getframe(1).f_code.co_name} {list(params)!r:.200}") as con:
        return con.execute(sql, list(params)).df()


@dataclass(frozen=True)
class Source:
    """The lake being shown and its state; the first argument of every loader (hashable)."""

    uri: str
    stamp: str

    @classmethod
    def of(cls, uri: str) -> Source:
        return cls(uri, lake_stamp(uri))


def _key(src: Source) -> tuple[str, str]:
    return src.uri, src.stamp


# -- overview ---------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def patients(src: Source) -> pd.DataFrame:
    return _df(src.uri, src.stamp, """
        select patient_id, site, split, label, age, sex,
               location, primary_tumor, n_slices, preprocessed_at
        from patients order by site, split, patient_id""")


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def counts(src: Source, sites: tuple[str, ...]) -> pd.DataFrame:
    """Patients and slices per split (in the one cohort order), site and label."""
    return _df(src.uri, src.stamp, """
        select site, split, label,
               count(*) as patients, coalesce(sum(n_slices), 0)::bigint as slices
        from patients where list_contains(?, site)
        group by site, split, label order by list_position(?, split), site, label""",
               [list(sites), list(names.ALL_COHORTS)])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def preprocess_failures(src: Source, sites: tuple[str, ...]) -> pd.DataFrame:
    """Patients whose latest preprocessing attempt failed, with the reason."""
    return _df(src.uri, src.stamp, """
        with latest as (
            select *, row_number() over (partition by patient_id order by started_at desc) as k
            from preprocess_runs)
        select patient_id, site, error_kind, error_message, started_at
        from latest where k = 1 and status <> 'ok' and list_contains(?, site)
        order by site, patient_id""", [list(sites)])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def runs(src: Source) -> pd.DataFrame:
    """Finished training runs, latest first, with whether each has an evaluation."""
    return _df(src.uri, src.stamp, """
        select t.run_id, t.mode, t.backbone_id, t.finished_at,
               exists (select 1 from runs e where e.run_id = t.run_id and e.kind = 'evaluate'
                       and e.status = 'ok') as evaluated
        from runs t where t.kind = 'train' and t.status = 'ok'
        order by t.finished_at desc""")


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def run_records(src: Source, run: str) -> dict[str, dict]:
    """The run's ``runs`` records by kind (train, evaluate), JSON fields decoded
    (``storage.queries.run_records``)."""
    with _use(src.uri, src.stamp, f"run_records {run}") as con:
        return queries.run_records(con, run)


# -- evaluation -------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=32, hash_funcs={Source: _key})
def metric_table(src: Source, run: str, ci_method: str, auc_ci: str, cohorts: tuple[str, ...],
                 subgroup: str | None, metrics: tuple[str, ...]) -> pd.DataFrame:
    """``storage.queries.metric_rows`` as a frame (one row per cohort, subgroup, rater, metric), each
    rater named by ``names.rater_name``, in the one cohort order."""
    with _use(src.uri, src.stamp, f"metric_rows {run} {ci_method} {auc_ci} {cohorts} {subgroup} {metrics}") as con:
        rows = queries.metric_rows(con, run, ci_method=ci_method, auc_ci=auc_ci,
                                   cohorts=cohorts, subgroup=subgroup, metrics=metrics)
    cols = ["cohort", "subgroup", "who", "rater", "assisted", "cutoff_kind", "metric", "value", "ci_low",
            "ci_high", "ci_method", "ci_choice", "n", "n_gbm", "tp", "fp", "tn", "fn"]
    df = pd.DataFrame(rows, columns=cols)
    df["who"] = [names.rater_name(r, a if isinstance(a, bool) else None, k)
                 for r, a, k in zip(df["rater"], df["assisted"], df["cutoff_kind"], strict=True)]
    # in the cohort order; within a subgroup the model at the validation cutoff first (the honest
    # operating point), then at the paper's, then the readers as the query ordered them
    who_rank = np.where(df["rater"] == names.MODEL,
                        df["cutoff_kind"].map({k: i for i, k in enumerate(names.CUTOFF_ORDER)}).fillna(0), 9)
    sub_rank = df["subgroup"].map({s: i for i, s in enumerate(dict.fromkeys(df["subgroup"]))})
    keys = (np.arange(len(df)), who_rank, sub_rank.to_numpy(), df["cohort"].map(names.cohort_rank).to_numpy())
    return df.iloc[np.lexsort(keys)].reset_index(drop=True)


def _rows(src: Source, query, *args, columns: list[str]) -> pd.DataFrame:
    """A ``storage.queries`` function's rows as a frame (its columns even where it found none)."""
    with _use(src.uri, src.stamp, f"{query.__name__} {args!r:.200}") as con:
        rows = query(con, *args)
    return pd.DataFrame(rows, columns=columns)


DIFFERENCE_COLUMNS = ["cohort", "kind", "a", "b", "metric", "n", "n_gbm", "estimate_a", "estimate_b", "diff", "ci_low",
                      "ci_high", "ci_method", "test", "p", "p_holm", "family_size", "is_primary", "note"]


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def differences(src: Source, run: str, cohorts: tuple[str, ...]) -> pd.DataFrame:
    """``storage.queries.difference_rows``: paired differences a - b with their CIs, p and Holm p,
    in the cohort order."""
    return names.by_cohort(_rows(src, queries.difference_rows, run, cohorts, columns=DIFFERENCE_COLUMNS))


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def patient_flow(src: Source, run: str) -> pd.DataFrame:
    """``storage.queries.flow_rows``: patients per cohort, site, stage and detail (STARD), in the
    cohort order (training last)."""
    return names.by_cohort(_rows(src, queries.flow_rows, run, columns=["cohort", "site", "stage", "detail", "n"]))


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def calibration(src: Source, run: str, cohorts: tuple[str, ...]) -> pd.DataFrame:
    """``storage.queries.calibration_points``: reliability bins and decision-curve thresholds."""
    return _rows(src, queries.calibration_points, run, cohorts,
                 columns=["cohort", "curve", "x", "y", "n", "treat_all", "treat_none"])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def calibration_summary(src: Source, run: str, cohorts: tuple[str, ...]) -> pd.DataFrame:
    """``storage.queries.calibration_summary``: Brier, calibration intercept and slope per cohort."""
    return _rows(src, queries.calibration_summary, run, cohorts, columns=["cohort", "metric", "value", "n", "n_gbm"])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def patient_predictions(src: Source, run: str, cohorts: tuple[str, ...], sites: tuple[str, ...]) -> pd.DataFrame:
    """One row per patient of the cohorts at the sites: label, index, P(GBM) (``prob_gbm``, null
    where the run has none) and the call at each cutoff (``*_paper``, ``*_val``)."""
    return _df(src.uri, src.stamp, """
        select patient_id, site, split as cohort,
               label, n_slices, predictive_index, soft_index, max(prob_gbm) as prob_gbm,
               max(cutoff) filter (where cutoff_kind = ?) as cutoff_paper,
               max(call) filter (where cutoff_kind = ?) as call_paper,
               max(cutoff) filter (where cutoff_kind = ?) as cutoff_val,
               max(call) filter (where cutoff_kind = ?) as call_val
        from patient_predictions
        where run_id = ? and list_contains(?, split) and list_contains(?, site)
        group by patient_id, site, split, label, n_slices, predictive_index, soft_index
        order by list_position(?, cohort), site, patient_id""",
               [C.CUTOFF_PAPER, C.CUTOFF_PAPER, C.CUTOFF_VAL, C.CUTOFF_VAL, run, list(cohorts), list(sites),
                list(names.ALL_COHORTS)])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def patient_trust(src: Source, run: str, cohorts: tuple[str, ...], sites: tuple[str, ...]) -> pd.DataFrame:
    """One row per patient of the cohorts at the sites: cohort, site, label, the call at the
    validation cutoff (``call_val``) and when not to trust it (``dashboards.trust.PATIENT_COLUMNS``:
    sets, spread, entropy, OOD, deferral; null in a lake evaluated before they were stored)."""
    from dashboards.trust import PATIENT_COLUMNS

    cols = ", ".join(f'"{c}"' for c in PATIENT_COLUMNS)  # names from the schema's constants, never input
    return _df(src.uri, src.stamp, f"""
        select patient_id, site, split as cohort, label, call as call_val, {cols}
        from patient_predictions
        where run_id = ? and cutoff_kind = ? and list_contains(?, split) and list_contains(?, site)
        order by list_position(?, cohort), site, patient_id""",
               [run, C.CUTOFF_VAL, list(cohorts), list(sites), list(names.ALL_COHORTS)])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def trust_metrics(src: Source, run: str, cohorts: tuple[str, ...]) -> pd.DataFrame:
    """The model's stored conformal-coverage and deferral rows per cohort (``metrics``, subgroup
    all: ``dashboards.trust.trust_metric_names``), with their Wilson intervals, in the cohort order."""
    from dashboards.trust import trust_metric_names

    return _df(src.uri, src.stamp, """
        select cohort, metric, value, ci_low, ci_high, ci_method, n, n_gbm from metrics
        where run_id = ? and rater = ? and subgroup = 'all' and list_contains(?, cohort)
          and list_contains(?, metric)
        order by list_position(?, cohort), list_position(?, metric)""",
               [run, C.MODEL_RATER, list(cohorts), list(trust_metric_names()), list(names.ALL_COHORTS),
                list(trust_metric_names())])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def cutoffs(src: Source, run: str) -> dict[str, float]:
    df = _df(src.uri, src.stamp, """
        select cutoff_kind, max(cutoff) as cutoff from patient_predictions where run_id = ?
        group by cutoff_kind""", [run])
    return dict(zip(df["cutoff_kind"], df["cutoff"], strict=True))


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def reads(src: Source, run: str, patient_ids: tuple[str, ...]) -> pd.DataFrame:
    """The reads of the patients that run ``run``'s evaluation used: imported ones, and the assisted
    reads simulated for this run (``source`` simulated:<run>; other runs' simulations left out)."""
    return _df(src.uri, src.stamp, """
        select reader_id as reader, patient_id, assisted,
               call, confidence, source
        from reads where list_contains(?, patient_id)
          and (not starts_with(coalesce(source, ''), ?) or source = ?)
        order by reader, assisted""",
               [list(patient_ids), C.READ_SOURCE_SIMULATED, C.READ_SOURCE_SIMULATED + run])


# -- one patient ------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=64, hash_funcs={Source: _key})
def patient_slices(src: Source, patient_id: str) -> pd.DataFrame:
    """The patient's ROI slices (images as uint8 arrays, ``channels x height x width``)."""
    df = _df(src.uri, src.stamp, """
        select slice_index, z_mm, roi_i_min, roi_i_max, roi_j_min, roi_j_max, crop_mm, channels, height,
               width, image
        from slices where patient_id = ? order by slice_index""", [patient_id])
    df["image"] = [np.frombuffer(bytes(b), np.uint8).reshape(int(c), int(h), int(w))
                   for b, c, h, w in zip(df["image"], df["channels"], df["height"], df["width"], strict=True)]
    return df


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs={Source: _key})
def patient_cams(src: Source, run: str, patient_id: str) -> dict[int, np.ndarray]:
    """The ensemble's Grad-CAM per slice index (uint8 maps), where evaluate stored them."""
    df = _df(src.uri, src.stamp, """
        select slice_index, height, width, cam from cams where run_id = ? and patient_id = ?""",
             [run, patient_id])
    return {int(k): np.frombuffer(bytes(b), np.uint8).reshape(int(h), int(w))
            for k, h, w, b in zip(df["slice_index"], df["height"], df["width"], df["cam"], strict=True)}


@st.cache_data(show_spinner=False, max_entries=64, hash_funcs={Source: _key})
def patient_slice_probs(src: Source, run: str, patient_id: str) -> pd.DataFrame:
    """P(GBM) per slice and model (fold0.., ensemble_vote, ensemble_mean), wide: one row per slice."""
    df = _df(src.uri, src.stamp, """
        select slice_index, model, prob_gbm, vote from slice_predictions
        where run_id = ? and patient_id = ? order by slice_index, model""", [run, patient_id])
    return df


# -- training ---------------------------------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def train_history(src: Source, run: str) -> pd.DataFrame:
    return _df(src.uri, src.stamp, """
        select fold, epoch, train_loss, train_acc, val_loss, val_acc, attempt from train_history
        where run_id = ? order by fold, epoch""", [run])


@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def fold_sizes(src: Source, run: str, sites: tuple[str, ...]) -> pd.DataFrame:
    """Held-out patients and slices of each fold, by label."""
    return _df(src.uri, src.stamp, """
        select f.fold, p.label, count(*) as patients,
               coalesce(sum(p.n_slices), 0)::bigint as slices
        from folds f join patients p using (patient_id)
        where f.run_id = ? and list_contains(?, p.site)
        group by all order by f.fold, label""", [run, list(sites)])


# -- summary and the printable report ---------------------------------------------------------
@st.cache_data(show_spinner=False, max_entries=16, hash_funcs={Source: _key})
def report_data(src: Source, run: str, ci: str):
    """What the Summary page and the PDF report show (``storage.report.collect``): per
    cohort the model at the validation cutoff and the readers, the comparisons with their
    verdicts and sentence, the headline table, ROC inputs, calibration, flow and the run record."""
    from storage.report import collect

    with _use(src.uri, src.stamp, f"report_data {run} {ci}") as con:
        return collect(con, run, ci)


@st.cache_data(show_spinner=False, max_entries=4, hash_funcs={Source: _key})
def report_pdf(src: Source, run: str, ci: str) -> bytes:
    """The report as PDF bytes: ``storage.report.render`` of ``report_data``, the function
    ``gbmmet report`` uses. Typeset holding no connection (about a second)."""
    from storage.report import render

    return render(report_data(src, run, ci))
