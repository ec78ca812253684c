"""``gbmmet evaluate``: the ensemble on val, internal test and external; the predictive index;
both cutoffs; metrics with confidence intervals; readers and paired comparisons.

1. Every fold model scores every slice of val, test and external: one Ray task per fold model
   (the slices' features, or images in fine-tune mode, are put in the object store once).
   ``slice_predictions``: per fold (``fold<k>``: P(GBM), vote at 0.5), the ensemble's majority
   vote (``ensemble_vote``: prob_gbm = share of folds voting GBM; a tie goes to the mean
   probability) and soft vote (``ensemble_mean``: mean P(GBM)).
2. Predictive index per patient = share of its slices the ensemble's majority vote calls GBM
   (the paper); ``soft_index`` = mean of the soft-vote probabilities. ``patient_predictions``.
3. Cutoffs, both stored and both applied to every cohort:
   ``paper_youden_internal_test``: the Youden-optimal cutoff on the internal test ROC (the paper's
   way: chosen on the data it is then judged on, so its test metrics are optimistic);
   ``oof_youden_train``: the Youden-optimal cutoff on the training patients' out-of-fold
   predictive indices (each from the fold model that never saw the patient): no test leakage.
4. ``metrics``: per cohort and subgroup (all; location; primary tumour of METs), for the model at
   each cutoff and each reader unassisted and assisted: accuracy, precision, recall, F1 (GBM
   positive), specificity, NPV, AUC, Brier score, with the confusion counts; each with CIs three
   ways (``paper_subsample90``, ``bootstrap_bca``, ``bootstrap_percentile``) and DeLong's for AUC.
   Readers' AUC comes from the calls signed by confidence (MET 5 .. GBM 5) where given, else
   from the binary calls; with confidences, ``auc_calls`` is the binary calls' AUC as well.
5. ``cams``: the ensemble's Grad-CAM (mean of the folds' maps, ``gbmmet.model.cam``) of every
   internal test and external slice, as 112 x 112 uint8 maps; Ray tasks of 64 slices.
6. ``comparisons``: DeLong model vs each reader (unassisted and assisted) on the same patients;
   McNemar (statsmodels; exact where fewer than 25 discordant pairs) on correct / incorrect,
   each reader assisted vs unassisted.
"""

from __future__ import annotations

import datetime as dt
import json
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from gbmmet import constants as C
from gbmmet.model.ensemble import ensemble_vote
from pipelines.scoring import CAM_SIZE, CAM_SPLITS, cam_chunk, score_fold

EVAL_SPLITS = (C.VAL, C.TEST, C.EXTERNAL)
CUT_PAPER = C.CUTOFF_PAPER
CUT_OOF = C.CUTOFF_OOF
CI_METHODS = C.CI_METHODS
# Part of every evaluation's fingerprint: raise it when evaluate writes its tables differently, so
# that lakes evaluated before are evaluated again rather than reused (2: metrics.ci_choice).
EVALUATE_VERSION = 2


@dataclass
class EvaluateSummary:
    run_id: str
    cutoffs: dict[str, float]
    patients: int
    slices: int
    metrics_rows: int
    comparisons_rows: int
    readers: list[str] = field(default_factory=list)
    seconds: float = 0.0


def train_run_record(lake, run: str | None = None) -> dict:
    """The ``runs`` record of training run ``run``, or of the lake's latest finished one.

    Raises:
        ConfigError: no such run (the message lists the lake's runs), or no finished run at all.
    """
    from gbmmet.errors import ConfigError

    runs = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["kind"] == "train" and r["status"] == "ok"]
    if run is not None:
        named = [r for r in runs if r["run_id"] == run]
        if not named:
            raise ConfigError(f"no training run {run!r} in {lake.uri}; runs there: {sorted({r['run_id'] for r in runs})}")
        return named[-1]
    if not runs:
        raise ConfigError(f"no finished training run in {lake.uri}: run `gbmmet train` first")
    return max(runs, key=lambda r: r["finished_at"])


def _signed_confidence(calls, conf) -> np.ndarray:
    c = np.array([1.0 if x == C.GBM else -1.0 for x in calls])
    if conf is None or any(v is None for v in conf):
        return c
    return c * np.array(conf, dtype=np.float64)


def _ci_rows(base: dict, y, call, score, n_resamples: int, seed: int) -> list[dict]:
    """Rows of the metrics table for one group: point values, and CIs three ways (+ DeLong)."""
    from gbmmet.stats import (
        CALL_METRICS,
        SCORE_METRICS,
        ci_bootstrap,
        ci_paper_subsample,
        confusion,
        delong_roc_variance,
        metrics,
    )

    names = CALL_METRICS + SCORE_METRICS
    point = metrics(y, call, score)
    counts = confusion(y, call)
    n, n_gbm = len(y), int(np.sum(y))
    common = {**base, "n": n, "n_gbm": n_gbm, **counts}
    cis: dict[str, dict] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # counted in n_degenerate instead
        if n >= 4:
            cis["paper_subsample90"] = ci_paper_subsample(y, call, score, n_resamples=n_resamples, seed=seed)
        if n_gbm >= 2 and n - n_gbm >= 2:
            for method in ("BCa", "percentile"):
                try:
                    cis[f"bootstrap_{method.lower()}"] = ci_bootstrap(y, call, score, method=method,
                                                                      n_resamples=n_resamples, seed=seed)
                except Exception:  # noqa: BLE001 - e.g. BCa on a constant statistic: percentile stays
                    pass
    rows = []
    for name in names:
        for method in CI_METHODS:
            iv = cis.get(method, {}).get(name)
            rows.append({**common, "metric": name, "value": point[name],
                         "ci_low": iv.low if iv else None, "ci_high": iv.high if iv else None,
                         "ci_method": (iv.method if iv else method), "ci_choice": method,
                         "n_resamples": iv.n_resamples if iv else 0,
                         "n_degenerate": iv.n_degenerate if iv else 0})
    if n_gbm >= 2 and n - n_gbm >= 2:  # DeLong's variance needs two cases of each class
        d = delong_roc_variance(y, score)
        rows.append({**common, "metric": "auc", "value": point["auc"], "ci_low": d.ci_low, "ci_high": d.ci_high,
                     "ci_method": "delong", "ci_choice": "delong", "n_resamples": 0, "n_degenerate": 0})
    return rows


def _fingerprint(lake, rec: dict, n_resamples: int, seed: int) -> str:
    """What an evaluation depends on: the training run, the reads, the eval slices, the settings."""
    import hashlib

    reads = sorted(tuple(str(v) for v in r.values()) for r in lake.read(C.TABLE_READS).to_pylist())
    slices = sorted(lake.read(C.TABLE_PATIENTS, columns=[C.COL_PATIENT_ID, "params_hash", "n_slices"]).to_pylist(),
                    key=lambda r: r[C.COL_PATIENT_ID])
    blob = json.dumps([EVALUATE_VERSION, rec["run_id"], str(rec["finished_at"]), rec["fold_checkpoints"], reads,
                       slices, n_resamples, seed], default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _group_rows(rater_jobs, n_resamples: int) -> list[dict]:
    """Ray task: the metrics rows of one cohort / subgroup, every rater in it."""
    from gbmmet.stats import auc_score, delong_roc_variance

    rows = []
    for base, y, call, score, seed in rater_jobs:
        rows += _ci_rows(base, y, call, score, n_resamples, seed)
        if base["rater"] != "model" and not np.array_equal(np.abs(score), np.ones(len(score))):
            # a reader with confidences: also the AUC of the binary calls alone
            n, n_gbm = len(y), int(np.sum(y))
            d = delong_roc_variance(y, call) if n_gbm >= 2 and n - n_gbm >= 2 else None
            rows.append({**base, "metric": "auc_calls", "value": auc_score(y, call), "ci_low": d.ci_low if d else None,
                         "ci_high": d.ci_high if d else None, "ci_method": "delong", "ci_choice": "delong", "n": n, "n_gbm": n_gbm,
                         "n_resamples": 0, "n_degenerate": 0})
    return rows


def run_evaluate(lake_root: str, run: str | None = None, *, n_resamples: int = 1000, seed: int = 0,
                 address: str | None = None, workers: int | None = None, show_progress: bool = True,
                 force: bool = False, cams: bool = True, echo=print) -> EvaluateSummary:
    """Evaluate train run ``run`` (default: the lake's latest) and write the evaluation tables.

    An evaluation of the same run, reads, slices and settings is reused unless ``force``.

    Raises:
        ConfigError: no such run, no slices / features to score, no internal test patients.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    from gbmmet.errors import ConfigError, RunFailed
    from gbmmet.stats import delong_roc_test, youden_cutoff
    from pipelines.ray_runtime import init_ray, run_batch
    from pipelines.train import load_feature_matrix, load_slice_images
    from storage import catalog
    from storage.lake import Lake
    from storage.schemas import COMPARISONS

    t0 = time.perf_counter()
    lake = Lake(lake_root)
    rec = train_run_record(lake, run)
    run = rec["run_id"]
    config = json.loads(rec["config"])
    mode, backbone_id = rec["mode"], rec["backbone_id"]
    checkpoints = {int(k): v for k, v in json.loads(rec["fold_checkpoints"]).items()}
    fingerprint = _fingerprint(lake, rec, n_resamples, seed) + ("-cams" if cams else "")
    done = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["run_id"] == run and r["kind"] == "evaluate"]
    if done and not force and json.loads(done[-1]["config"]).get("fingerprint") == fingerprint:
        t = json.loads(done[-1]["timings"])
        echo(f"evaluate {run}: already evaluated with these inputs and settings; reusing it")
        return EvaluateSummary(run, t["cutoffs"], t["patients"], t["slices"], t["metrics_rows"],
                               t["comparisons_rows"], t["readers"], 0.0)
    started = dt.datetime.now(dt.UTC)

    # 1. data to score
    parts = []
    for split in EVAL_SPLITS:
        meta, X = load_feature_matrix(lake, backbone_id, split) if mode == "frozen" else load_slice_images(lake, split)
        if meta.num_rows:
            parts.append((meta, X))
    if not parts:
        raise ConfigError(f"nothing to evaluate in {lake.uri}: no val / test / external "
                          + ("features" if mode == "frozen" else "slices"))
    meta = pa.concat_tables([m.select([C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, C.COL_LABEL, "slice_index"])
                             for m, _ in parts])
    X = np.concatenate([x for _, x in parts])
    init_ray(address=address, num_cpus=workers)
    import ray

    ref = ray.put(X)
    items = [(f"fold{k}", (path, mode, config["head"], backbone_id.split("@")[0],
                            backbone_id, config.get("weights_file"), config.get("stages") or 1, ref)) for k, path in sorted(checkpoints.items())]
    report = run_batch(items, score_fold, description="evaluate (fold models)", use_ray=True,
                       show_progress=show_progress)
    if report.failed:
        raise RunFailed("scoring failed: " + "; ".join(f"{o.key}: {o.error}" for o in report.failed))
    probs = np.stack([o.value for o in sorted(report.outcomes, key=lambda o: int(o.key[4:]))])  # (folds, N)
    n_folds = len(probs)

    # 2. slice predictions
    votes = probs >= 0.5
    share, mean_p, ens_vote = ensemble_vote(probs)
    base = {"run_id": pa.array([run] * meta.num_rows), C.COL_PATIENT_ID: meta.column(C.COL_PATIENT_ID), C.COL_SITE: meta.column(C.COL_SITE),
            C.COL_SPLIT: meta.column(C.COL_SPLIT), "slice_index": meta.column("slice_index")}

    def _slice_table(model, fold, prob, vote):
        return pa.table({**base, "model": pa.array([model] * len(prob)),
                         "fold": pa.array([fold] * len(prob), pa.int8()), "prob_gbm": pa.array(prob, pa.float32()),
                         "vote": pa.array(np.where(vote, C.GBM, C.MET))})

    tables = [_slice_table(f"fold{k}", k, probs[k], votes[k]) for k in range(n_folds)]
    tables += [_slice_table("ensemble_vote", None, share, ens_vote), _slice_table("ensemble_mean", None, mean_p, mean_p >= 0.5)]
    lake.write(C.TABLE_SLICE_PREDICTIONS, pa.concat_tables(tables), f"{run}-eval.parquet")

    # 3. predictive index per patient, and the out-of-fold index of training patients
    pids = np.array(meta.column(C.COL_PATIENT_ID).to_pylist())
    pat = {}
    for i, p in enumerate(pids):
        d = pat.setdefault(p, {"site": meta.column(C.COL_SITE)[i].as_py(), "split": meta.column(C.COL_SPLIT)[i].as_py(),
                               "label": meta.column(C.COL_LABEL)[i].as_py(), "votes": [], "mean": []})
        d["votes"].append(bool(ens_vote[i]))
        d["mean"].append(float(mean_p[i]))
    oof = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == run) & (pc.field(C.COL_SPLIT) == C.TRAIN)
                    ).to_pylist()
    info = {r[C.COL_PATIENT_ID]: r for r in lake.read(C.TABLE_PATIENTS).to_pylist()}
    for r in oof:
        d = pat.setdefault(r[C.COL_PATIENT_ID], {"site": r[C.COL_SITE], "split": C.TRAIN,
                                                 "label": info.get(r[C.COL_PATIENT_ID], {}).get(C.COL_LABEL), "votes": [], "mean": []})
        d["votes"].append(r["prob_gbm"] >= 0.5)
        d["mean"].append(float(r["prob_gbm"]))
    for d in pat.values():
        d["index"] = float(np.mean(d["votes"]))
        d["soft"] = float(np.mean(d["mean"]))

    def _xy(split):
        ps = sorted(p for p, d in pat.items() if d["split"] == split)
        return ps, np.array([pat[p]["label"] == C.GBM for p in ps], int), np.array([pat[p]["index"] for p in ps])

    _, y_test, s_test = _xy(C.TEST)
    _, y_tr, s_tr = _xy(C.TRAIN)
    cutoffs = {}
    try:
        cutoffs[CUT_PAPER] = youden_cutoff(y_test, s_test)
    except ValueError as exc:
        raise ConfigError(f"no internal test cohort with both classes to choose the paper's cutoff: {exc}") from None
    try:
        cutoffs[CUT_OOF] = youden_cutoff(y_tr, s_tr)
    except ValueError:
        echo("  no out-of-fold predictions with both classes: the leakage-free cutoff is skipped")
    prow = []
    for p, d in sorted(pat.items()):
        for kind, cut in cutoffs.items():
            prow.append({"run_id": run, C.COL_PATIENT_ID: p, C.COL_SITE: d["site"], C.COL_SPLIT: d["split"],
                         C.COL_LABEL: d["label"], "n_slices": len(d["votes"]), "predictive_index": d["index"],
                         "soft_index": d["soft"], "cutoff_kind": kind, "cutoff": cut,
                         C.COL_CALL: C.GBM if d["index"] >= cut else C.MET})
    lake.write(C.TABLE_PATIENT_PREDICTIONS, pa.Table.from_pylist(prow), f"{run}.parquet")

    # 4. metrics: model at each cutoff, readers; per cohort and subgroup
    reads = lake.read(C.TABLE_READS).to_pylist()
    readers = sorted({r[C.COL_READER_ID] for r in reads})
    mrows, crow = [], []
    groups = []  # (cohort, subgroup, patients)
    for cohort in EVAL_SPLITS:
        ps = sorted(p for p, d in pat.items() if d["split"] == cohort)
        if not ps:
            continue
        groups.append((cohort, "all", ps))
        for col, label in ((C.COL_LOCATION, "location"), (C.COL_PRIMARY, "primary")):
            values = sorted({info[p].get(col) for p in ps if info.get(p, {}).get(col)})
            for v in values:
                sub = [p for p in ps if info.get(p, {}).get(col) == v]
                if label == "primary":  # primary tumour: the METs of that primary, beside all GBMs
                    sub = [p for p in ps if pat[p]["label"] == C.GBM or info.get(p, {}).get(col) == v]
                groups.append((cohort, f"{label}={v}", sub))
    jobs = []  # one Ray task per group: (base, y, call, score, seed) for each rater in it
    for gi, (cohort, subgroup, ps) in enumerate(groups):
        y = np.array([pat[p]["label"] == C.GBM for p in ps], int)
        score = np.array([pat[p]["index"] for p in ps])
        rater_jobs = []
        for kind, cut in cutoffs.items():
            base = {"run_id": run, "cohort": cohort, "subgroup": subgroup, "rater": "model",
                    C.COL_ASSISTED: None, "cutoff_kind": kind}
            rater_jobs.append((base, y, (score >= cut).astype(int), score, seed + gi))
        in_group = set(ps)
        for reader in readers:
            for assisted in (False, True):
                got = {r[C.COL_PATIENT_ID]: r for r in reads if r[C.COL_READER_ID] == reader
                       and r[C.COL_ASSISTED] == assisted and r[C.COL_PATIENT_ID] in in_group}
                if not got:
                    continue
                rp = sorted(got)
                calls = [got[p][C.COL_CALL] for p in rp]
                base = {"run_id": run, "cohort": cohort, "subgroup": subgroup, "rater": reader,
                        C.COL_ASSISTED: assisted, "cutoff_kind": None}
                rater_jobs.append((base, np.array([pat[p]["label"] == C.GBM for p in rp], int),
                                   np.array([c == C.GBM for c in calls], int),
                                   _signed_confidence(calls, [got[p][C.COL_CONFIDENCE] for p in rp]), seed + gi))
        jobs.append((f"{cohort}/{subgroup}", (rater_jobs, n_resamples)))
    report = run_batch(jobs, _group_rows, description="evaluate (metrics and CIs)", use_ray=True,
                       show_progress=show_progress)
    if report.failed:
        raise RunFailed("metrics failed: " + "; ".join(f"{o.key}: {o.error}" for o in report.failed))
    for o in sorted(report.outcomes, key=lambda o: o.key):
        mrows += o.value

    # 5. class activation maps of the test and external slices
    if cams:
        loaded = [load_slice_images(lake, split) for split in CAM_SPLITS]
        cam_meta = pa.concat_tables([m.select([C.COL_PATIENT_ID, C.COL_SITE, C.COL_SPLIT, "slice_index"])
                                     for m, _ in loaded])
        cam_images = np.concatenate([x for _, x in loaded])
        paths = [p for _, p in sorted(checkpoints.items())]
        chunk = 64
        items = [(f"{i:06d}", (paths, mode, config["head"], backbone_id.split("@")[0], backbone_id,
                               config.get("weights_file"), config.get("stages") or 1, cam_images[i:i + chunk]))
                 for i in range(0, len(cam_images), chunk)]
        report = run_batch(items, cam_chunk, description="evaluate (class activation maps)", use_ray=True,
                           show_progress=show_progress)
        if report.failed:
            raise RunFailed("class activation maps failed: " + "; ".join(f"{o.key}: {o.error}" for o in report.failed))
        maps = np.concatenate([o.value for o in sorted(report.outcomes, key=lambda o: o.key)]) if items else \
            np.zeros((0, CAM_SIZE, CAM_SIZE), np.uint8)
        n = len(maps)
        lake.write(C.TABLE_CAMS, pa.table({
            "run_id": pa.array([run] * n), C.COL_PATIENT_ID: cam_meta.column(C.COL_PATIENT_ID),
            C.COL_SITE: cam_meta.column(C.COL_SITE), C.COL_SPLIT: cam_meta.column(C.COL_SPLIT),
            "slice_index": cam_meta.column("slice_index"), "height": pa.array([CAM_SIZE] * n, pa.int16()),
            "width": pa.array([CAM_SIZE] * n, pa.int16()), "cam": pa.array([m.tobytes() for m in maps], pa.binary())}),
            f"{run}.parquet")

    # 6. paired comparisons on the whole cohorts
    for cohort in EVAL_SPLITS:
        ps = {p for p, d in pat.items() if d["split"] == cohort}
        for reader in readers:
            by = {a: {r[C.COL_PATIENT_ID]: r for r in reads if r[C.COL_READER_ID] == reader
                      and r[C.COL_ASSISTED] == a and r[C.COL_PATIENT_ID] in ps} for a in (False, True)}
            for assisted, got in by.items():
                common = sorted(got)
                y = np.array([pat[p]["label"] == C.GBM for p in common], int)
                if len(common) < 3 or y.sum() in (0, len(y)):
                    continue
                rs = _signed_confidence([got[p][C.COL_CALL] for p in common], [got[p][C.COL_CONFIDENCE] for p in common])
                t = delong_roc_test(y, [pat[p]["index"] for p in common], rs)
                crow.append({"run_id": run, "cohort": cohort, "test": "delong_auc", "a": "model",
                             "b": reader + ("+assisted" if assisted else ""), "n": len(common),
                             "estimate_a": t.auc_a, "estimate_b": t.auc_b, "diff": t.diff, "ci_low": t.ci_low,
                             "ci_high": t.ci_high, "statistic": t.z, "p": t.p,
                             "note": "model: predictive index; reader: call signed by confidence"})
            both = sorted(set(by[False]) & set(by[True]))
            if len(both) >= 1:
                crow.append(_mcnemar(run, cohort, reader, both, by, pat))
    lake.write(C.TABLE_METRICS, pa.Table.from_pylist(mrows), f"{run}.parquet")
    lake.write(C.TABLE_COMPARISONS, pa.Table.from_pylist(crow) if crow else COMPARISONS.empty_table(),
               f"{run}.parquet")
    summary = EvaluateSummary(run, cutoffs, len(pat), len(pids), len(mrows), len(crow), readers,
                              time.perf_counter() - t0)
    lake.write(C.TABLE_RUNS, pa.Table.from_pylist([{
        "run_id": run, "kind": "evaluate", "mode": mode, "backbone_id": backbone_id,
        "backbone_reason": rec.get("backbone_reason"), "weights_sha256": rec.get("weights_sha256"),
        "config": json.dumps({"n_resamples": n_resamples, "seed": seed, "fingerprint": fingerprint,
                              "ci_methods": list(CI_METHODS) + ["delong"], "cutoff_kinds": list(cutoffs)}),
        "seeds": json.dumps({"resampling": seed}), "versions": rec.get("versions"), "git_commit": rec.get("git_commit"),
        "started_at": started, "finished_at": dt.datetime.now(dt.UTC), "fold_checkpoints": rec["fold_checkpoints"],
        "seconds": summary.seconds,
        "timings": json.dumps({"cutoffs": cutoffs, "patients": summary.patients, "slices": summary.slices,
                               "metrics_rows": summary.metrics_rows, "comparisons_rows": summary.comparisons_rows,
                               "readers": readers, "total_s": summary.seconds}),
        "status": "ok"}]), f"{run}-evaluate.parquet")
    if lake.local_root is not None:
        catalog.refresh(lake)
    return summary


def _mcnemar(run, cohort, reader, both, by, pat) -> dict:
    """McNemar on correct / incorrect: reader assisted vs unassisted, same patients."""
    from statsmodels.stats.contingency_tables import mcnemar

    ok_u = np.array([by[False][p][C.COL_CALL] == pat[p]["label"] for p in both])
    ok_a = np.array([by[True][p][C.COL_CALL] == pat[p]["label"] for p in both])
    table = [[int(np.sum(ok_u & ok_a)), int(np.sum(ok_u & ~ok_a))],
             [int(np.sum(~ok_u & ok_a)), int(np.sum(~ok_u & ~ok_a))]]
    discordant = table[0][1] + table[1][0]
    exact = discordant < 25
    res = mcnemar(table, exact=exact, correction=True)
    return {"run_id": run, "cohort": cohort, "test": "mcnemar_correct", "a": reader + "+assisted", "b": reader,
            "n": len(both), "estimate_a": float(ok_a.mean()), "estimate_b": float(ok_u.mean()),
            "diff": float(ok_a.mean() - ok_u.mean()), "ci_low": None, "ci_high": None,
            "statistic": float(res.statistic), "p": float(res.pvalue),
            "note": f"{'exact binomial' if exact else 'chi-square with continuity correction'}; "
                    f"discordant: {table[0][1]} right only unassisted, {table[1][0]} right only assisted"}
