"""The printable report's parts without a lake: the ROC's line through ties, a PDF typeset from
hand-made numbers (text and pages read back with poppler), and ``gbmmet report``'s errors. The
report of a real lake is tested in ``tests/dashboards/test_summary.py``."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from gbmmet import constants as C
from gbmmet.summary import flows, summarise
from pipelines.cli import main
from storage.report import ReportData, page_count, render, roc_line

needs_poppler = pytest.mark.skipif(shutil.which("pdftotext") is None,
                                   reason="no pdftotext: `apt-get install -y poppler-utils` (.ci/run installs it)")


def test_roc_line_joins_tied_scores_by_a_diagonal():
    # one GBM and one MET tie at 0.5: from (0, 0.5) the line goes straight to (0.5, 1), not by a step
    fpr, tpr = roc_line([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1])
    pts = list(zip(fpr.tolist(), tpr.tolist(), strict=True))
    assert pts == [(0.0, 0.0), (0.0, 0.5), (0.5, 1.0), (1.0, 1.0)]
    # every patient tied: the chance diagonal, from corner to corner
    fpr, tpr = roc_line([1, 0, 1, 0], [0.5] * 4)
    assert fpr.tolist() == [0.0, 1.0] and tpr.tolist() == [0.0, 1.0]
    # collinear vertices are kept (drop_intermediate=False): three GBMs above three METs
    fpr, tpr = roc_line([1, 1, 1, 0, 0, 0], [6, 5, 4, 3, 2, 1])
    assert len(fpr) == 7


def _hand_data() -> ReportData:
    def m(cohort, rater, metric, value, low, high, cutoff=None, assisted=None):
        return {"cohort": cohort, "subgroup": "all", "rater": rater, "assisted": assisted, "cutoff_kind": cutoff,
                "metric": metric, "value": value, "ci_low": low, "ci_high": high,
                "ci_method": C.CI_DELONG if metric == "auc" else C.CI_BCA, "n": 6, "n_gbm": 3,
                "who": "model, validation cutoff" if rater == "model" else rater}

    points = [m(C.EXTERNAL, "model", k, v, v - 0.2, min(v + 0.1, 1.0), C.CUTOFF_VAL)
              for k, v in (("recall", 0.667), ("specificity", 0.667), ("auc", 0.778))]
    points += [m(C.EXTERNAL, "reader1", k, v, v - 0.3, 1.0) for k, v in (("recall", 0.667), ("specificity", 1.0))]
    diffs = [{"cohort": C.EXTERNAL, "kind": "model_vs_reader", "a": "model@" + C.CUTOFF_VAL, "b": "reader1",
              "metric": k, "n": 6, "diff": d, "ci_low": lo, "ci_high": hi, "ci_method": "newcombe"}
             for k, d, lo, hi in (("recall", 0.0, -0.05, 0.05), ("specificity", -0.333, -0.7, 0.1))]
    index = [{"cohort": C.EXTERNAL, "patient_id": f"p{k}", "label": lab, "predictive_index": s}
             for k, (lab, s) in enumerate(zip([C.GBM] * 3 + [C.MET] * 3, [0.9, 0.6, 0.3, 0.6, 0.2, 0.1], strict=True))]
    flow = [{"cohort": C.EXTERNAL, "site": "siteB", "stage": st, "detail": d, "n": n}
            for st, d, n in (("in_manifest", "", 7), ("preprocessed", "", 6), ("failed", "unreadable_image", 1),
                             ("evaluated", "", 6), ("read", "reader1", 6))]
    return ReportData(run="hand-run", ci=C.CI_BCA, margin=0.1, margin_recorded=False, level=0.95,
                      summaries=summarise(points, diffs, margin=0.1), headline=[], points=points, index=index,
                      calibration=[], calibration_summary=[], flows=flows(flow),
                      records={"train": {"versions": {"torch": "9.9.9-test"}, "git_commit": "abc123"}})


@needs_poppler
def test_pdf_from_hand_made_numbers(tmp_path):
    data = _hand_data()
    pdf = render(data)
    assert pdf[:5] == b"%PDF-"
    path = tmp_path / "r.pdf"
    path.write_bytes(pdf)
    text = subprocess.run(["pdftotext", str(path), "-"], check=True, capture_output=True, text=True, encoding="utf-8").stdout
    flat = " ".join(text.split())
    assert "hand-run" in flat and "9.9.9-test" in flat and "abc123" in flat
    assert " ".join(data.summaries[0].sentence.split()) in flat
    assert "recorded before the margin was a setting" in flat  # margin_recorded=False says so
    assert "Failed preprocessing: 1" in flat and "unreadable_image: 1" in flat
    info = subprocess.run(["pdfinfo", str(path)], check=True, capture_output=True, text=True, encoding="utf-8").stdout
    assert f"Pages: {page_count(pdf)}" in " ".join(info.split())


def test_report_command_says_what_is_missing(tmp_path, capsys):
    assert main(["report", "--lake", str(tmp_path / "nowhere"), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "no lake at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["report", "--lake", str(tmp_path / "empty"), "--out", str(tmp_path / "r.pdf")]) == 2
    assert "no evaluated run" in capsys.readouterr().err
    assert main(["report", "--lake", str(tmp_path / "empty"), "--ci", "nope"]) == 2
    assert "--ci must be one of" in capsys.readouterr().err
    assert not (tmp_path / "r.pdf").exists()
