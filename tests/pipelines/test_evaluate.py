"""``gbmmet readers import`` and ``gbmmet evaluate`` on a real tiny lake: the ensemble, the
predictive index, both cutoffs, metrics with CIs, readers and paired tests, recomputed here from
the lake's own rows."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gbmmet import constants as C
from gbmmet.evaluation import EvaluationSettings
from gbmmet.model.backbones import RANDOM18
from gbmmet.model.train import HeadConfig
from gbmmet.stats import metrics, youden_cutoff
from pipelines.cli import main
from pipelines.evaluate import CUT_PAPER, CUT_VAL, run_evaluate
from pipelines.features import run_features
from pipelines.readers import ReadsError, import_reads
from pipelines.run import evaluate_synthetic
from pipelines.train import run_train
from storage import catalog
from storage.lake import Lake
from storage.queries import run_versions
from storage.schemas import SCHEMAS


@pytest.fixture(scope="module")
def trained_lake(tiny_lake, tmp_path_factory, ray_local):
    src, _, cohort = tiny_lake
    lake_dir = tmp_path_factory.mktemp("eval") / "lake"
    shutil.copytree(src, lake_dir, ignore=shutil.ignore_patterns("runs"))
    assert not run_features(str(lake_dir), backbone=RANDOM18, show_progress=False).failed
    run_train(str(lake_dir), "ev", folds=3, head=HeadConfig(hidden=16, epochs=5, checkpoint_every=5),
              show_progress=False, echo=lambda *_: None)
    return lake_dir, cohort


def _write(path, rows):
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(C.READS_COLUMNS)
        w.writerows(rows)
    return path


def test_reads_are_validated_all_at_once_and_nothing_is_written(trained_lake, tmp_path):
    lake_dir, cohort = trained_lake
    good = next(csv.DictReader((cohort / "siteA" / "reads.csv").open()))
    bad = _write(tmp_path / "bad.csv", [
        ["r1", "NOPE", "false", "GBM", "3"],  # unknown patient
        ["r1", good["patient_id"], "maybe", "GBM", "3"],  # bad flag
        ["r1", good["patient_id"], "false", "glioma", ""],  # bad call
        ["r1", good["patient_id"], "true", "MET", "9"],  # bad confidence
        ["r2", good["patient_id"], "true", "MET", "2"],
        ["r2", good["patient_id"], "TRUE", "GBM", "2"],  # duplicate of the line above
    ])
    with pytest.raises(ReadsError) as err:
        import_reads(bad, str(lake_dir))
    msg = str(err.value)
    assert "5 problem(s)" in msg and "nothing was imported" in msg
    for text in ("line 2: unknown patient 'NOPE'", "line 3: assisted must be true or false",
                 "line 4: call must be GBM or MET", "line 5: confidence must be an integer from 1 to 5",
                 "line 7: duplicate read", "first on line 6"):
        assert text in msg, (text, msg)
    assert Lake(lake_dir).read(C.TABLE_READS).num_rows == 0
    assert main(["readers", "import", str(bad), "--lake", str(lake_dir)]) == 2


@pytest.fixture(scope="module")
def evaluated_lake(trained_lake):
    """The trained tiny lake with its reads imported, assisted reads simulated and evaluated."""
    lake_dir, cohort = trained_lake
    for site in ("siteA", "siteB"):
        import_reads(cohort / site / "reads.csv", str(lake_dir))
    s = evaluate_synthetic(str(lake_dir), "ev", settings=EvaluationSettings(n_resamples=200), show_progress=False,
                           echo=lambda *_: None)
    return lake_dir, cohort, s


def _pp(lake):
    return lake.read(C.TABLE_PATIENT_PREDICTIONS, filter=pc.field("run_id") == "ev").to_pandas()


def test_reads_are_imported_pseudonymised_and_replaced_on_a_second_import(evaluated_lake):
    lake_dir, cohort, _ = evaluated_lake
    again = import_reads(cohort / "siteA" / "reads.csv", str(lake_dir))  # same file: replaced, not doubled
    reads = Lake(lake_dir).read(C.TABLE_READS).to_pandas()
    imported = reads[reads[C.COL_READ_SOURCE].str.startswith(C.READ_SOURCE_IMPORT)]
    n_csv = sum(1 for site in ("siteA", "siteB") for _ in csv.DictReader((cohort / site / "reads.csv").open()))
    assert len(imported) == n_csv and again.rows > 0 and not imported[C.COL_ASSISTED].any()
    raw_ids = {r["patient_id"] for site in ("siteA", "siteB") for r in csv.DictReader((cohort / site / "reads.csv").open())}
    assert not raw_ids & set(reads[C.COL_PATIENT_ID])  # pseudonymised


def test_ensemble_rows_follow_from_the_fold_rows(evaluated_lake):
    lake_dir, _, s = evaluated_lake
    lake = Lake(lake_dir)
    sp = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == "ev")
                   & (pc.field(C.COL_SPLIT) != C.TRAIN)).to_pandas()
    wide = sp.pivot_table(index=[C.COL_PATIENT_ID, "slice_index"], columns="model", values="prob_gbm")
    folds = wide[["fold0", "fold1", "fold2"]]
    np.testing.assert_allclose(wide["ensemble_mean"], folds.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(wide["ensemble_vote"], (folds >= 0.5).mean(axis=1), atol=1e-6)
    n_eval_slices = lake.read(C.TABLE_SLICES, columns=["slice_index"], filter=pc.field(C.COL_SPLIT) != C.TRAIN).num_rows
    assert len(wide) == n_eval_slices == s.slices
    votes = sp[sp.model == "ensemble_vote"].groupby(C.COL_PATIENT_ID)["vote"].apply(lambda v: (v == C.GBM).mean())
    paper = _pp(lake).query("cutoff_kind == @CUT_PAPER").set_index(C.COL_PATIENT_ID)
    np.testing.assert_allclose(paper.loc[votes.index, "predictive_index"], votes.values)


def test_both_cutoffs_are_youden_on_the_ensemble_index_of_their_own_cohort(evaluated_lake):
    lake_dir, _, s = evaluated_lake
    pp = _pp(Lake(lake_dir))
    assert set(s.cutoffs) == {CUT_PAPER, CUT_VAL} and set(pp[C.COL_SPLIT]) == {C.VAL, C.TEST, C.EXTERNAL}
    for kind, cohort in ((CUT_PAPER, C.TEST), (CUT_VAL, C.VAL)):
        sel = pp[(pp.cutoff_kind == kind) & (pp[C.COL_SPLIT] == cohort)]
        assert s.cutoffs[kind] == youden_cutoff((sel[C.COL_LABEL] == C.GBM).astype(int), sel.predictive_index)
    assert ((pp.predictive_index >= pp.cutoff) == (pp[C.COL_CALL] == C.GBM)).all()
    record = json.loads(catalog.query(Lake(lake_dir), "select config from runs where run_id = ? and kind = 'evaluate'",
                                      ["ev"]).to_pylist()[-1]["config"])
    assert record["cutoffs"][CUT_VAL]["chosen_on"] == C.VAL
    assert record["cutoffs"][CUT_VAL]["score"] == "ensemble predictive index"


def test_probability_of_gbm_is_monotone_in_the_index_and_fitted_on_validation(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    pp = _pp(Lake(lake_dir)).query("cutoff_kind == @CUT_PAPER").sort_values("predictive_index")
    assert pp.prob_gbm.between(0, 1).all() and (np.diff(pp.prob_gbm) >= -1e-12).all()
    config = json.loads(catalog.query(Lake(lake_dir), "select config from runs where run_id = ? and kind = 'evaluate'",
                                      ["ev"]).to_pylist()[-1]["config"])
    assert config["calibrator"]["n"] == len(pp[pp[C.COL_SPLIT] == C.VAL])


def test_model_metrics_equal_a_recomputation_from_patient_predictions(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    lake = Lake(lake_dir)
    pp = _pp(lake)
    m = catalog.query(lake, "select * from metrics where run_id = ? and rater = 'model' and cohort = 'external' "
                      "and subgroup = 'all' and cutoff_kind = ?", ["ev", CUT_VAL]).to_pandas()
    ext = pp[(pp.cutoff_kind == CUT_VAL) & (pp[C.COL_SPLIT] == C.EXTERNAL)]
    want = metrics((ext[C.COL_LABEL] == C.GBM).astype(int), (ext[C.COL_CALL] == C.GBM).astype(int), ext.predictive_index)
    for name in ("accuracy", "precision", "recall", "f1", "specificity", "npv", "auc"):
        assert np.allclose(m[m.metric == name]["value"], want[name], equal_nan=True), name
    assert set(m[m.metric == "auc"].ci_choice) == {*C.CI_METHODS, C.CI_DELONG}
    assert "brier" not in set(m.metric)  # Brier is on the probability (calibration rows), not on the index
    assert set(m.n) == {len(ext)}


def test_readers_auc_is_from_calls_and_auc_confidence_is_separate(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    lake = Lake(lake_dir)
    rows = catalog.query(lake, "select rater, assisted, metric, value, n from metrics where run_id = ? and "
                         "rater = 'reader1' and cohort = 'test' and subgroup = 'all' and ci_choice = 'delong'",
                         ["ev"]).to_pandas()
    assert set(rows.metric) == {"auc", C.AUC_CONFIDENCE}
    acc = catalog.query(lake, "select metric, value from metrics where run_id = ? and rater = 'reader1' and "
                        "cohort = 'test' and subgroup = 'all' and not assisted and ci_choice = ?",
                        ["ev", C.CI_BCA]).to_pandas().set_index("metric").value
    auc = rows[(rows.metric == "auc") & ~rows.assisted.astype(bool)].value.iloc[0]
    assert auc == pytest.approx((acc["recall"] + acc["specificity"]) / 2)  # one operating point


def test_primary_subgroups_report_specificity_only_among_that_primarys_mets(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    rows = catalog.query(Lake(lake_dir), "select distinct subgroup, metric, n, n_gbm from metrics where run_id = ? "
                         "and subgroup like 'primary=%'", ["ev"]).to_pandas()
    assert len(rows) and set(rows.metric) == {"specificity"} and (rows.n_gbm == 0).all()


def test_paired_differences_cover_model_vs_readers_and_assistance_with_holm(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    d = Lake(lake_dir).read(C.TABLE_DIFFERENCES, filter=pc.field("run_id") == "ev").to_pandas()
    assert set(d.kind) == {"model_vs_reader", "assisted_vs_unassisted"}
    assert {"model@" + CUT_PAPER, "model@" + CUT_VAL, "reader1+assisted"} <= set(d.a)
    assert set(d.metric) >= set(C.DIFFERENCE_METRICS)
    auc = d[(d.kind == "model_vs_reader") & d.metric.isin(["auc", C.AUC_CONFIDENCE])]
    assert set(auc.a) == {C.MODEL_RATER}  # AUC does not depend on the cutoff: compared once
    for _, fam in d.groupby("cohort"):
        ok = fam.p.notna()
        assert (fam.family_size == ok.sum()).all()
        assert (fam.p_holm[ok] >= fam.p[ok] - 1e-12).all() and fam.p_holm[ok].le(1).all()
        assert fam.is_primary.sum() == 1  # model@val_youden_ensemble vs reader1, accuracy
    np.testing.assert_allclose(d["diff"], d.estimate_a - d.estimate_b, atol=1e-12)


def test_simulated_assisted_reads_follow_the_models_calls_of_this_run(evaluated_lake):
    lake_dir, _, _ = evaluated_lake
    lake = Lake(lake_dir)
    reads = lake.read(C.TABLE_READS).to_pandas()
    sim = reads[reads[C.COL_ASSISTED]]
    assert len(sim) and (sim[C.COL_READ_SOURCE] == C.READ_SOURCE_SIMULATED + "ev").all()
    model = _pp(lake).query("cutoff_kind == @CUT_VAL").set_index(C.COL_PATIENT_ID)[C.COL_CALL]
    alone = reads[~reads[C.COL_ASSISTED]].set_index([C.COL_READER_ID, C.COL_PATIENT_ID])[C.COL_CALL]
    helped = sim.set_index([C.COL_READER_ID, C.COL_PATIENT_ID])[C.COL_CALL]
    agree_alone = np.mean([alone[k] == model[k[1]] for k in helped.index])
    agree_helped = np.mean([helped[k] == model[k[1]] for k in helped.index])
    assert agree_helped >= agree_alone


def test_calibration_and_patient_flow_tables_are_written(evaluated_lake):
    lake_dir, _, s = evaluated_lake
    lake = Lake(lake_dir)
    cal = lake.read(C.TABLE_CALIBRATION, filter=pc.field("run_id") == "ev").to_pandas()
    probability = cal[cal.curve != C.CURVE_RISK_COVERAGE]  # the risk-coverage curve has its own test
    assert set(probability.curve) == {"reliability", "decision"} and set(probability.cohort) == {C.TEST, C.EXTERNAL}
    flow = lake.read(C.TABLE_FLOW, filter=pc.field("run_id") == "ev").to_pandas()
    evaluated = flow[flow.stage == "evaluated"].n.sum()
    tested = flow[(flow.stage == "preprocessed") & (flow.cohort != C.TRAIN)].n.sum()
    assert evaluated == s.patients == tested
    assert flow[(flow.stage == "evaluated") & (flow.cohort == C.TRAIN)].empty
    assert set(flow[flow.stage == "read"].detail) == {"reader1", "reader2"}


def test_the_cli_prints_the_table_differences_and_flow(evaluated_lake, capsys):
    lake_dir, _, _ = evaluated_lake
    assert main(["evaluate", "--lake", str(lake_dir), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "reader1 + model" in out and "external" in out and "cutoffs paper_youden_internal_test" in out
    assert "bootstrap_bca" in out and "paired differences" in out and "patient flow" in out
    assert "when not to trust a call" in out and "coverage of GBMs (90 % set)" in out
    assert main(["evaluate", "--lake", str(lake_dir), "--resamples", "100", "--ci", "paper_subsample90"]) == 0
    assert "reproduction" in capsys.readouterr().out
    assert main(["evaluate", "--lake", str(lake_dir), "--primary", "model,reader1"]) == 2


def test_class_activation_maps_are_stored_for_test_and_external_slices(trained_lake):
    lake_dir, _ = trained_lake
    lake = Lake(lake_dir)
    if not lake.read(C.TABLE_RUNS, filter=pc.field("kind") == "score").num_rows:
        run_evaluate(str(lake_dir), show_progress=False, predictions_only=True, echo=lambda *_: None)
    cams = lake.read(C.TABLE_CAMS, filter=pc.field("run_id") == "ev")
    want = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, "slice_index"],
                     filter=pc.field(C.COL_SPLIT).isin([C.TEST, C.EXTERNAL]))
    assert sorted(zip(cams.column(C.COL_PATIENT_ID).to_pylist(), cams.column("slice_index").to_pylist(), strict=True)) \
        == sorted(zip(want.column(C.COL_PATIENT_ID).to_pylist(), want.column("slice_index").to_pylist(), strict=True))
    maps = np.stack([np.frombuffer(b, np.uint8).reshape(112, 112) for b in cams.column("cam").to_pylist()])
    assert maps.max(axis=(1, 2)).min() >= 230  # each map is scaled to its own maximum (then halved: bilinear)


def _eval_slices_in_lake_order(lake, rec, splits, features: bool):
    """The slices of ``splits`` (or their features) as the scoring orders them, loaded in-process."""
    from pipelines.train import load_feature_matrix, load_slice_images

    loaded = [load_feature_matrix(lake, rec["backbone_id"], s) if features else load_slice_images(lake, s)
              for s in splits]
    loaded = [(m, x) for m, x in loaded if m.num_rows]
    keys = [(m.column(C.COL_SPLIT)[i].as_py(), m.column(C.COL_PATIENT_ID)[i].as_py(), m.column("slice_index")[i].as_py())
            for m, _ in loaded for i in range(m.num_rows)]
    return keys, np.concatenate([x for _, x in loaded])


def staged_maps(lake, scored):
    """The maps the scoring actors staged in the lake (not yet committed), as ``_run_ensemble``
    orders slices: their (split, patient, slice) keys and (N, CAM_SIZE, CAM_SIZE) uint8 maps."""
    import pyarrow.parquet as pq

    from pipelines.evaluate import CAM_SIZE, EVAL_SPLITS, _cam_files

    t = pa.concat_tables([pq.read_table(lake.path(C.TABLE_CAMS, f.path), filesystem=lake.fs)
                          for f in _cam_files(scored)])
    rows = t.to_pylist()
    order = {s: i for i, s in enumerate(EVAL_SPLITS)}
    rows.sort(key=lambda r: (order[r[C.COL_SPLIT]], r[C.COL_PATIENT_ID], r["slice_index"]))
    keys = [(r[C.COL_SPLIT], r[C.COL_PATIENT_ID], r["slice_index"]) for r in rows]
    return keys, np.stack([np.frombuffer(r["cam"], np.uint8).reshape(CAM_SIZE, CAM_SIZE) for r in rows])


def test_ray_data_scoring_gives_exactly_the_probabilities_of_the_ensemble_run_in_process(trained_lake):
    from gbmmet.model.ensemble import FoldEnsemble
    from pipelines.evaluate import (
        EVAL_SPLITS,
        SCORE_BATCH,
        _run_ensemble,
        _score_slices,
        train_run_record,
    )
    from pipelines.train import load_state

    lake = Lake(trained_lake[0]).pinned()
    rec = train_run_record(lake, "ev")
    scored, plan = _run_ensemble(lake, rec, cams=False, show_progress=False)
    rows, n = _score_slices(scored, rec)
    keys, X = _eval_slices_in_lake_order(lake, rec, EVAL_SPLITS, features=True)
    want = FoldEnsemble.from_run_record(rec, load_state, features_only=True).predict_proba(X, batch_size=256)
    assert n == len(keys) and plan["batch_size"] == SCORE_BATCH and plan["actors"] >= 1
    for k in range(len(want)):
        fold = rows.filter(pc.field("model") == f"fold{k}")
        got = list(zip(fold.column(C.COL_SPLIT).to_pylist(), fold.column(C.COL_PATIENT_ID).to_pylist(),
                       fold.column("slice_index").to_pylist(), strict=True))
        assert got == keys
        np.testing.assert_array_equal(fold.column("prob_gbm").to_numpy(), want[k])


def test_one_actor_pool_scores_the_features_and_maps_the_slices_as_the_ensemble_does_in_process(trained_lake,
                                                                                                 tmp_path):
    from gbmmet.model.ensemble import FoldEnsemble
    from pipelines.evaluate import (
        CAM_SIZE,
        CAM_SPLITS,
        EVAL_SPLITS,
        _run_ensemble,
        _score_slices,
        train_run_record,
    )
    from pipelines.train import load_state

    lake = Lake(shutil.copytree(trained_lake[0], tmp_path / "lake")).pinned()  # the actors stage maps in it
    rec = train_run_record(lake, "ev")
    scored, plan = _run_ensemble(lake, rec, cams=True, show_progress=False)
    assert plan["cams"] and plan["actors"] >= 1
    got_keys, got = staged_maps(lake, scored)
    keys, images = _eval_slices_in_lake_order(lake, rec, CAM_SPLITS, features=False)
    ensemble = FoldEnsemble.from_run_record(rec, load_state)
    want = np.round(ensemble.grad_cam(images, size=CAM_SIZE) * 255).astype(np.uint8)
    assert got_keys == keys
    # Grad-CAM's float sums change in their last bits with the batch a slice runs in (the actors'
    # batches end at file boundaries): a rare pixel rounds to the next of 255 levels, never more.
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3
    # the same pass scored every val / test / external slice's features, as without maps
    predictions, n = _score_slices(scored, rec)
    assert n == len(_eval_slices_in_lake_order(lake, rec, EVAL_SPLITS, features=True)[0])
    alone, _ = _score_slices(_run_ensemble(lake, rec, cams=False, show_progress=False)[0], rec)
    assert predictions.equals(alone)


def test_the_maps_reach_the_lake_from_the_actors_and_the_driver_gets_only_their_file_records(trained_lake,
                                                                                             tmp_path):
    from pipelines.evaluate import CAM_SIZE, _cam_files, _run_ensemble, train_run_record

    lake = Lake(shutil.copytree(trained_lake[0], tmp_path / "lake")).pinned()
    rec = train_run_record(lake, "ev")
    scored, _ = _run_ensemble(lake, rec, cams=True, show_progress=False)
    mapped = pc.sum(scored.column("mapped")).as_py()
    files = _cam_files(scored)
    assert mapped > 0 and sum(f.rows for f in files) == mapped and "cam" not in scored.column_names
    # what came back to the driver weighs less than a tenth of the maps it stands for
    assert scored.nbytes < mapped * CAM_SIZE * CAM_SIZE / 10


def test_scoring_a_run_again_replaces_its_maps_in_one_commit(trained_lake, tmp_path):
    from pipelines.evaluate import score_run, train_run_record

    lake = Lake(shutil.copytree(trained_lake[0], tmp_path / "lake"))
    lake.delete(C.TABLE_CAMS, {"run_id": "ev"})  # whatever other tests left: the run starts without maps
    rec = train_run_record(lake, "ev")
    score_run(lake, rec, force=True, show_progress=False, echo=lambda *_: None)
    before = lake.version(C.TABLE_CAMS)
    first = lake.read(C.TABLE_CAMS, filter=pc.field("run_id") == "ev")
    score_run(lake, rec, force=True, show_progress=False, echo=lambda *_: None)
    again = lake.read(C.TABLE_CAMS, filter=pc.field("run_id") == "ev")
    # the very next version holds the whole new set: the old maps went out as the new came in
    # (later versions may be compaction's)
    next_version = lake.at({C.TABLE_CAMS: before + 1}).read(C.TABLE_CAMS, filter=pc.field("run_id") == "ev")
    assert next_version.num_rows == first.num_rows
    key = [C.COL_SPLIT, C.COL_PATIENT_ID, "slice_index"]
    assert again.num_rows == first.num_rows > 0
    assert again.select(key).sort_by([(k, "ascending") for k in key]).equals(
        first.select(key).sort_by([(k, "ascending") for k in key]))


def test_maps_staged_for_a_scoring_that_fails_are_removed_and_nothing_is_committed(trained_lake, tmp_path,
                                                                                  monkeypatch):
    import pipelines.evaluate as ev

    lake = Lake(shutil.copytree(trained_lake[0], tmp_path / "lake"))
    folder = Path(lake.path(C.TABLE_CAMS))
    before = sorted(folder.rglob("*.parquet")) if folder.exists() else []
    versions = lake.versions()

    def broken(*_args, **_kw):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ev, "_score_slices", broken)  # fails after the actors staged their maps
    with pytest.raises(RuntimeError, match="disk full"):
        ev.score_run(lake, ev.train_run_record(lake, "ev"), force=True, show_progress=False, echo=lambda *_: None)
    after = sorted(folder.rglob("*.parquet")) if folder.exists() else []
    assert after == before and lake.versions() == versions


def test_the_score_record_holds_the_ray_data_plan_it_ran(evaluated_lake):
    from pipelines.evaluate import SCORE_BATCH

    lake_dir, _, _ = evaluated_lake
    config = json.loads(catalog.query(Lake(lake_dir), "select config from runs where run_id = ? and kind = 'score'",
                                      ["ev"]).to_pylist()[-1]["config"])
    assert config["ray_data"]["batch_size"] == SCORE_BATCH and config["ray_data"]["cams"] is True
    assert config["ray_data"]["actors"] >= 1 and config["ray_data"]["num_gpus"] == 0


def test_on_a_gpu_node_one_ensemble_actor_per_gpu_scores_and_maps_as_the_cpu_actors_do(trained_lake, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from pipelines.evaluate import (
        CAM_SPLITS,
        EVAL_SPLITS,
        _run_ensemble,
        _score_slices,
        train_run_record,
    )

    lake_dir = shutil.copytree(trained_lake[0], tmp_path / "lake")
    # the run's earlier predictions and maps out first: what is compared below is what the GPU actor made
    copy = Lake(lake_dir)
    run = train_run_record(copy)["run_id"]
    copy.delete(C.TABLE_CAMS, {"run_id": run})
    copy.delete(C.TABLE_SLICE_PREDICTIONS, {"run_id": run, C.COL_SPLIT: list(EVAL_SPLITS)})
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-m", "tests.gpu_shaped_job", "evaluate", str(lake_dir)], cwd=root,
                          capture_output=True, text=True, encoding="utf-8", timeout=600, env=os.environ.copy())
    assert proc.returncode == 0, proc.stderr[-4000:]
    said = json.loads(proc.stdout.strip().splitlines()[-1])
    # one GPU in the cluster: one actor asking for it (it waits for the GPU rather than refusing)
    assert said["cluster_gpus"] == 1 and said["plan"]["actors"] == 1 and said["plan"]["num_gpus"] == 1
    lake = Lake(lake_dir)
    got = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == said["run"])
                    & pc.field(C.COL_SPLIT).isin(list(EVAL_SPLITS)))  # not training's out-of-fold rows
    reference = Lake(trained_lake[0]).pinned()
    want, n = _score_slices(_run_ensemble(reference, train_run_record(reference, said["run"]), cams=False,
                                          show_progress=False)[0], train_run_record(reference, said["run"]))
    key = [("model", "ascending"), (C.COL_SPLIT, "ascending"), (C.COL_PATIENT_ID, "ascending"),
           ("slice_index", "ascending")]
    got, want = got.sort_by(key), want.sort_by(key)
    assert got.num_rows == want.num_rows > 0
    np.testing.assert_allclose(got.column("prob_gbm").to_numpy(), want.column("prob_gbm").to_numpy(), atol=1e-6)
    mapped = lake.read(C.TABLE_CAMS, columns=[C.COL_SPLIT], filter=pc.field("run_id") == said["run"])
    test_external = reference.read(C.TABLE_SLICES, columns=["slice_index"],
                                   filter=pc.field(C.COL_SPLIT).isin(list(CAM_SPLITS)))
    assert mapped.num_rows == test_external.num_rows


def test_predict_one_real_patient_with_the_lakes_run(evaluated_lake, tmp_path, capsys):
    from tests.conftest import SHARED

    case = SHARED / "data" / "brats2018" / "Brats18_2013_3_1"
    if not case.is_dir():
        pytest.skip(f"real cases not found at {case}")
    lake_dir, _, _ = evaluated_lake
    out = tmp_path / "cams"
    code = main(["predict", "--t1c", str(case / "Brats18_2013_3_1_t1ce.nii.gz"), "--t2", str(case / "Brats18_2013_3_1_t2.nii.gz"),
                 "--roi", str(case / "Brats18_2013_3_1_seg.nii.gz"), "--lake", str(lake_dir), "--out", str(out)])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "run ev (resnet18-random@" in text and "3 fold models" in text
    assert "predictive index (share of slices the ensemble calls GBM)" in text
    assert "call at the paper_youden_internal_test cutoff" in text
    n = int(text.split("fold models, ")[1].split(" ROI slices")[0])
    assert n > 10 and len(list(out.glob("slice*_cam.png"))) == n
    table = text.index("slice  fold0")  # whether to trust the call comes before the per-slice table
    for line in ("call: ", "conformal sets: 90 % {", "uncertainty: fold models' indices sd", "out of distribution: ",
                 "T2 - CE-T1 contrast around the ROI"):
        assert -1 < text.find(line) < table, line
    assert main(["predict", "--t1c", str(case / "Brats18_2013_3_1_t1ce.nii.gz"), "--t2",
                 str(case / "Brats18_2013_3_1_t2.nii.gz"), "--roi", str(case / "Brats18_2013_3_1_seg.nii.gz"),
                 "--lake", str(lake_dir), "--no-cam", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    trust = got["trust"]
    assert got["n_slices"] == n and len(got["slices"]) == n
    assert trust["sets"][C.set_column(0.9)] in (C.GBM, C.MET, C.GBM + C.SET_SEPARATOR + C.MET, "")
    assert trust["ood"] == (trust["ood_score"] > trust["ood_threshold"])
    scale = _eval_config(Lake(lake_dir))["trust"]["ood"]["contrast_scale"]  # as evaluation recorded it
    contrast = trust[C.COL_SEQUENCE_CONTRAST]
    assert contrast > 0  # a real glioblastoma: T2 brighter than CE-T1 around it
    assert trust["ood_score"] == pytest.approx(max(trust[C.COL_OOD_DISTANCE],
                                                   trust["ood_threshold"] * (1 - contrast / scale)))
    assert ("defer to the readers" in trust["explanation"]) == trust["deferred"]
    # a missing file is a clear error naming it
    assert main(["predict", "--t1c", str(tmp_path / "nope.nii.gz"), "--t2", str(case / "Brats18_2013_3_1_t2.nii.gz"),
                 "--roi", str(case / "Brats18_2013_3_1_seg.nii.gz"), "--lake", str(lake_dir)]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err


def test_train_and_evaluate_records_hold_the_versions_that_reproduce_what_they_read(evaluated_lake, tmp_path):
    lake_dir, _, _ = evaluated_lake
    copy = tmp_path / "lake"
    shutil.copytree(lake_dir, copy, ignore=shutil.ignore_patterns("catalog.duckdb"))
    lake = Lake(copy)
    runs = {r["kind"]: r for r in lake.read(C.TABLE_RUNS, filter=pc.field("run_id") == "ev").to_pylist()}
    backbone = runs["train"]["backbone_id"]
    # later commits: one more training slice's features, one more reader's read
    lake.append(C.TABLE_FEATURES, pa.Table.from_pylist([{
        C.COL_PATIENT_ID: "later", C.COL_SITE: "siteA", C.COL_SPLIT: C.TRAIN, C.COL_LABEL: C.GBM, "slice_index": 0,
        "weights_sha256": "w", "params_hash": "p", "vector": [0.0]}], schema=SCHEMAS[C.TABLE_FEATURES]),
        {"backbone": backbone})
    lake.append(C.TABLE_READS, pa.Table.from_pylist([{
        C.COL_READER_ID: "reader3", C.COL_PATIENT_ID: "later", C.COL_ASSISTED: False, C.COL_CALL: C.GBM}],
        schema=SCHEMAS[C.TABLE_READS]))

    train_sql, params = "select count(*) from features where split = ? and backbone = ?", [C.TRAIN, backbone]
    slices = catalog.query(lake, train_sql, params, versions=run_versions(lake, "ev", "train")).column(0)[0].as_py()
    assert slices == json.loads(runs["train"]["config"])["train_slices"]  # what training read
    assert catalog.query(lake, train_sql, params).column(0)[0].as_py() == slices + 1  # the lake moved on
    readers_sql = "select distinct reader_id from reads order by reader_id"
    readers = catalog.query(lake, readers_sql, versions=run_versions(lake, "ev", "evaluate")).column(0).to_pylist()
    assert readers == json.loads(runs["evaluate"]["timings"])["readers"] == ["reader1", "reader2"]
    assert catalog.query(lake, readers_sql).column(0).to_pylist() == ["reader1", "reader2", "reader3"]


# ---------------------------------------------------------------------------------------------
# when not to trust a call (pipelines.trust): every column recomputed from the lake's own rows
# ---------------------------------------------------------------------------------------------
def _eval_config(lake) -> dict:
    rec = [r for r in lake.read(C.TABLE_RUNS).to_pylist() if r["run_id"] == "ev" and r["kind"] == "evaluate"][-1]
    return json.loads(rec["config"])


def test_each_patients_uncertainty_recomputes_from_the_fold_models_slice_rows(evaluated_lake):
    from gbmmet.uncertainty import patient_uncertainty

    lake = Lake(evaluated_lake[0])
    pp = _pp(lake).drop_duplicates(C.COL_PATIENT_ID).set_index(C.COL_PATIENT_ID)
    sp = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == "ev") & pc.field("fold").is_valid()
                   & (pc.field(C.COL_SPLIT) != C.TRAIN)).to_pandas()
    wide = sp.pivot_table(index=[C.COL_PATIENT_ID, "slice_index"], columns="fold", values="prob_gbm").sort_index()
    expected = patient_uncertainty(wide.index.get_level_values(0).to_numpy(str), wide.to_numpy().T)
    assert set(expected) == set(pp.index)
    for p, u in expected.items():
        assert pp.loc[p, C.COL_INDEX_FOLD_SD] == pytest.approx(u.index_fold_sd)
        assert pp.loc[p, C.COL_ENTROPY_TOTAL] == pytest.approx(u.entropy_total)
        assert pp.loc[p, C.COL_ENTROPY_TOTAL] == pytest.approx(pp.loc[p, C.COL_ENTROPY_ALEATORIC]
                                                               + pp.loc[p, C.COL_MUTUAL_INFORMATION])


def test_conformal_sets_follow_from_the_recorded_thresholds_fitted_on_out_of_fold_training_patients(evaluated_lake):
    from gbmmet.conformal import ClassConditionalConformal

    lake = Lake(evaluated_lake[0])
    conformal = _eval_config(lake)["trust"]["conformal"]
    n_train = lake.read(C.TABLE_PATIENTS, filter=pc.field(C.COL_SPLIT) == C.TRAIN).num_rows
    assert conformal["calibration"] == "oof" and conformal["n_calibration"] == n_train
    pp = _pp(lake).drop_duplicates(C.COL_PATIENT_ID)
    sets = ClassConditionalConformal.from_summary(conformal).predict_sets(pp["predictive_index"].to_numpy())
    for level in C.CONFORMAL_LEVELS:
        assert list(pp[C.set_column(level)]) == list(sets[level])
        assert set(pp[C.set_column(level)]) <= {C.GBM, C.MET, C.GBM + C.SET_SEPARATOR + C.MET, ""}


def test_the_ood_flag_is_a_score_above_a_threshold_fixed_on_validation_patients(evaluated_lake):
    lake = Lake(evaluated_lake[0])
    pp = _pp(lake).drop_duplicates(C.COL_PATIENT_ID)
    ood = _eval_config(lake)["trust"]["ood"]
    val = pp[pp[C.COL_SPLIT] == C.VAL]
    assert ood["threshold"] == pytest.approx(np.quantile(val[C.COL_OOD_DISTANCE], ood["quantile"], method="higher"))
    assert ood["contrast_scale"] == pytest.approx(np.median(val[C.COL_SEQUENCE_CONTRAST]))
    assert (pp[C.COL_OOD_THRESHOLD] == ood["threshold"]).all()
    sequence_part = ood["threshold"] * (1 - pp[C.COL_SEQUENCE_CONTRAST] / ood["contrast_scale"])
    assert np.allclose(pp[C.COL_OOD_SCORE], np.maximum(pp[C.COL_OOD_DISTANCE], sequence_part))
    assert list(pp[C.COL_OOD]) == list(pp[C.COL_OOD_SCORE] > ood["threshold"])


def test_the_sequence_contrast_stored_is_the_one_each_patients_slices_give(evaluated_lake):
    from gbmmet.ood import sequence_contrast
    from pipelines.train import load_slice_images
    from pipelines.trust import slice_settings

    lake = Lake(evaluated_lake[0])
    pp = _pp(lake).drop_duplicates(C.COL_PATIENT_ID).set_index(C.COL_PATIENT_ID)
    meta, images = load_slice_images(lake, C.TEST)
    pids, hashes = meta.column(C.COL_PATIENT_ID).to_numpy(), meta.column("params_hash").to_pylist()
    for p in dict.fromkeys(pids):
        rows = pids == p
        sp = slice_settings(lake)[hashes[np.flatnonzero(rows)[0]]]  # the settings its slices were made with
        expected = sequence_contrast(images[rows], sp.channels, sp.ws_range, pids[rows])[p]
        assert expected > 0  # in distribution: T2 brighter than CE-T1 around the lesion
        assert pp.loc[p, C.COL_SEQUENCE_CONTRAST] == pytest.approx(expected)


def test_slices_made_with_parameters_the_lake_does_not_hold_are_refused_by_name(evaluated_lake, tmp_path):
    from gbmmet.errors import ConfigError
    from pipelines.trust import sequence_contrasts

    copy = tmp_path / "lake"
    shutil.copytree(evaluated_lake[0], copy, ignore=shutil.ignore_patterns("catalog.duckdb", "runs"))
    lake = Lake(copy)
    one = lake.read(C.TABLE_SLICES, filter=pc.field(C.COL_SPLIT) == C.TEST).slice(0, 1)
    lake.append(C.TABLE_SLICES, one.set_column(one.schema.get_field_index(C.COL_PATIENT_ID), C.COL_PATIENT_ID,
                                               pa.array(["stray"]))
                .set_column(one.schema.get_field_index("params_hash"), "params_hash", pa.array(["0123abcd"])))
    with pytest.raises(ConfigError, match="patient stray .*'0123abcd'"):
        sequence_contrasts(lake, (C.TEST,))


def test_a_patient_is_deferred_exactly_when_its_90_set_is_not_one_label_or_it_is_ood(evaluated_lake):
    from gbmmet.trust import labels_of

    pp = _pp(Lake(evaluated_lake[0])).drop_duplicates(C.COL_PATIENT_ID)
    expected = [len(labels_of(s)) != 1 or bool(o) for s, o in zip(pp[C.set_column(C.DEFERRAL_LEVEL)], pp[C.COL_OOD],
                                                                   strict=True)]
    assert list(pp[C.COL_DEFERRED]) == expected
    assert all((r is None) != d for r, d in zip(pp[C.COL_DEFER_REASON], pp[C.COL_DEFERRED], strict=True))


def test_trust_metrics_and_the_risk_coverage_curve_are_written_for_every_cohort(evaluated_lake):
    lake = Lake(evaluated_lake[0])
    m = lake.read(C.TABLE_METRICS, filter=pc.field("run_id") == "ev").to_pandas()
    pp = _pp(lake)
    at_val = pp[pp["cutoff_kind"] == CUT_VAL]
    for cohort in (C.VAL, C.TEST, C.EXTERNAL):
        rows = m[(m["cohort"] == cohort) & (m["ci_method"] == C.CI_WILSON)].set_index("metric")
        for level in C.CONFORMAL_LEVELS:
            assert "conformal_coverage_gbm" + C.level_suffix(level) in rows.index
        mine = at_val[at_val[C.COL_SPLIT] == cohort]
        assert rows.loc["deferred_share", "value"] == pytest.approx(mine[C.COL_DEFERRED].mean())
        curve = lake.read(C.TABLE_CALIBRATION, filter=(pc.field("run_id") == "ev") & (pc.field("cohort") == cohort)
                          & (pc.field("curve") == C.CURVE_RISK_COVERAGE)).to_pandas().sort_values("x")
        assert curve["x"].iloc[-1] == pytest.approx(1.0) and curve["n"].iloc[-1] == len(mine)
        assert curve["y"].iloc[-1] == pytest.approx((mine[C.COL_CALL] == mine[C.COL_LABEL]).mean())
