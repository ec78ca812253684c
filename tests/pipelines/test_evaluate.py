"""``gbmmet readers import`` and ``gbmmet evaluate`` on a real tiny lake: the ensemble, the
predictive index, both cutoffs, metrics with CIs, readers and paired tests, recomputed here from
the lake's own rows."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pyarrow.compute as pc
import pytest

from gbmmet import constants as C
from gbmmet.model.backbones import RANDOM18
from gbmmet.model.train import HeadConfig
from gbmmet.stats import metrics, youden_cutoff
from pipelines.cli import main
from pipelines.evaluate import CUT_OOF, CUT_PAPER, run_evaluate
from pipelines.features import run_features
from pipelines.readers import ReadsError, import_reads
from pipelines.train import run_train
from storage import catalog
from storage.lake import Lake


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


def test_evaluate_writes_what_the_lake_itself_confirms(trained_lake, capsys):
    lake_dir, cohort = trained_lake
    n_reads = 0
    for site in ("siteA", "siteB"):
        s = import_reads(cohort / site / "reads.csv", str(lake_dir))
        n_reads += s.rows
    again = import_reads(cohort / "siteA" / "reads.csv", str(lake_dir))  # same file: replaced, not doubled
    lake = Lake(lake_dir)
    reads = lake.read(C.TABLE_READS)
    assert reads.num_rows == n_reads and again.rows > 0
    raw_ids = {r["patient_id"] for site in ("siteA", "siteB") for r in csv.DictReader((cohort / site / "reads.csv").open())}
    assert not raw_ids & set(reads.column(C.COL_PATIENT_ID).to_pylist())  # pseudonymised

    s = run_evaluate(str(lake_dir), show_progress=False, n_resamples=200, echo=lambda *_: None)
    assert s.run_id == "ev" and set(s.cutoffs) == {CUT_PAPER, CUT_OOF}

    # ensemble rows follow from the fold rows
    sp = lake.read(C.TABLE_SLICE_PREDICTIONS, filter=(pc.field("run_id") == "ev")
                   & (pc.field(C.COL_SPLIT) != C.TRAIN)).to_pandas()
    wide = sp.pivot_table(index=[C.COL_PATIENT_ID, "slice_index"], columns="model", values="prob_gbm")
    folds = wide[["fold0", "fold1", "fold2"]]
    np.testing.assert_allclose(wide["ensemble_mean"], folds.mean(axis=1), atol=1e-6)
    np.testing.assert_allclose(wide["ensemble_vote"], (folds >= 0.5).mean(axis=1), atol=1e-6)
    n_eval_slices = lake.read(C.TABLE_SLICES, columns=["slice_index"], filter=pc.field(C.COL_SPLIT) != C.TRAIN).num_rows
    assert len(wide) == n_eval_slices == s.slices

    # predictive index = share of slices the majority vote calls GBM; cutoffs recomputed
    pp = lake.read(C.TABLE_PATIENT_PREDICTIONS, filter=pc.field("run_id") == "ev").to_pandas()
    votes = sp[sp.model == "ensemble_vote"].groupby(C.COL_PATIENT_ID)["vote"].apply(lambda v: (v == C.GBM).mean())
    paper = pp[pp.cutoff_kind == CUT_PAPER].set_index(C.COL_PATIENT_ID)
    np.testing.assert_allclose(paper.loc[votes.index, "predictive_index"], votes.values)
    test = paper[paper[C.COL_SPLIT] == C.TEST]
    assert s.cutoffs[CUT_PAPER] == youden_cutoff((test[C.COL_LABEL] == C.GBM).astype(int), test.predictive_index)
    train = pp[(pp.cutoff_kind == CUT_OOF) & (pp[C.COL_SPLIT] == C.TRAIN)]
    assert len(train) == 10  # every training patient, by its out-of-fold model
    assert s.cutoffs[CUT_OOF] == youden_cutoff((train[C.COL_LABEL] == C.GBM).astype(int), train.predictive_index)
    assert ((pp.predictive_index >= pp.cutoff) == (pp[C.COL_CALL] == C.GBM)).all()

    # metrics equal a recomputation from patient_predictions; every CI method present
    m = catalog.query(lake, "select * from metrics where run_id = ? and rater = 'model' and cohort = 'external' "
                      "and subgroup = 'all' and cutoff_kind = ?", ["ev", CUT_OOF]).to_pandas()
    ext = pp[(pp.cutoff_kind == CUT_OOF) & (pp[C.COL_SPLIT] == C.EXTERNAL)]
    want = metrics((ext[C.COL_LABEL] == C.GBM).astype(int), (ext[C.COL_CALL] == C.GBM).astype(int), ext.predictive_index)
    for name in ("accuracy", "precision", "recall", "f1", "specificity", "npv", "auc"):
        got = m[m.metric == name]["value"]
        assert np.allclose(got, want[name], equal_nan=True), name
    assert set(m[m.metric == "auc"].ci_method) >= {"paper_subsample90", "bootstrap_percentile", "delong"}
    assert set(m.n) == {len(ext)}

    # readers: metrics unassisted and assisted, DeLong against the model, McNemar per reader
    readers = catalog.query(lake, "select distinct rater, assisted from metrics where run_id = ? and rater <> 'model'",
                            ["ev"]).to_pylist()
    assert {(r["rater"], r["assisted"]) for r in readers} == {("reader1", False), ("reader1", True),
                                                             ("reader2", False), ("reader2", True)}
    r_auc = catalog.query(lake, "select metric, value from metrics where run_id = ? and rater = 'reader1' and "
                          "cohort = 'test' and subgroup = 'all' and not assisted and ci_method = 'delong'", ["ev"]).to_pylist()
    assert {r["metric"] for r in r_auc} == {"auc", "auc_calls"}  # with confidences, and from the calls alone
    comp = lake.read(C.TABLE_COMPARISONS, filter=pc.field("run_id") == "ev").to_pandas()
    assert {"delong_auc", "mcnemar_correct"} <= set(comp.test)
    assert comp.p.between(0, 1).all()
    mc = comp[(comp.test == "mcnemar_correct") & (comp.cohort == C.TEST) & (comp.b == "reader1")].iloc[0]
    r1 = reads.to_pandas()
    r1 = r1[r1.reader_id == "reader1"].merge(paper[[C.COL_LABEL]], left_on=C.COL_PATIENT_ID, right_index=True)
    r1 = r1[r1[C.COL_PATIENT_ID].isin(test.index)]
    acc = r1.assign(ok=r1[C.COL_CALL] == r1[C.COL_LABEL]).groupby("assisted").ok.mean()
    assert mc.estimate_a == pytest.approx(acc[True]) and mc.estimate_b == pytest.approx(acc[False])

    # the CLI prints the paper's table
    assert main(["evaluate", "--lake", str(lake_dir), "--resamples", "100"]) == 0
    out = capsys.readouterr().out
    assert "reader1 + model" in out and "external" in out and "cutoffs paper_youden_internal_test" in out


def test_class_activation_maps_are_stored_for_test_and_external_slices(trained_lake):
    lake_dir, _ = trained_lake
    lake = Lake(lake_dir)
    if not lake.read(C.TABLE_RUNS, filter=pc.field("kind") == "evaluate").num_rows:
        run_evaluate(str(lake_dir), show_progress=False, n_resamples=50, echo=lambda *_: None)
    cams = lake.read(C.TABLE_CAMS, filter=pc.field("run_id") == "ev")
    want = lake.read(C.TABLE_SLICES, columns=[C.COL_PATIENT_ID, "slice_index"],
                     filter=pc.field(C.COL_SPLIT).isin([C.TEST, C.EXTERNAL]))
    assert sorted(zip(cams.column(C.COL_PATIENT_ID).to_pylist(), cams.column("slice_index").to_pylist(), strict=True)) \
        == sorted(zip(want.column(C.COL_PATIENT_ID).to_pylist(), want.column("slice_index").to_pylist(), strict=True))
    maps = np.stack([np.frombuffer(b, np.uint8).reshape(112, 112) for b in cams.column("cam").to_pylist()])
    assert maps.max(axis=(1, 2)).min() >= 230  # each map is scaled to its own maximum (then halved: bilinear)


def test_predict_one_real_patient_with_the_lakes_run(trained_lake, tmp_path, capsys):
    from tests.conftest import SHARED

    case = SHARED / "data" / "brats2018" / "Brats18_2013_3_1"
    if not case.is_dir():
        pytest.skip(f"real cases not found at {case}")
    lake_dir, _ = trained_lake
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
    # a missing file is a clear error naming it
    assert main(["predict", "--t1c", str(tmp_path / "nope.nii.gz"), "--t2", str(case / "Brats18_2013_3_1_t2.nii.gz"),
                 "--roi", str(case / "Brats18_2013_3_1_seg.nii.gz"), "--lake", str(lake_dir)]) == 2
    assert "nope.nii.gz" in capsys.readouterr().err
