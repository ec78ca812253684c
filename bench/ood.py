"""How well the out-of-distribution score separates synthetic cases that are neither GBM nor MET.

On an evaluated lake with backbone features (default: the demo's, ``make demo``), it writes (or
reuses) the synthetic OOD patients of the lake's preset beside its cohorts (``gbmmet synth --ood
meningioma,no_lesion,swapped``), preprocesses them with the lake's parameters, embeds their slices
with the lake's backbone, and prints, for each detector setting (k-NN distance at several k, the
default k = 10; Mahalanobis with a Ledoit-Wolf covariance), the AUROC of each kind against the
internal test and the external patients, and the share of each flagged at the threshold fixed on
validation patients, with wall and CPU seconds. Each setting is measured with the sequence check
(the default score: the larger of the distance and the T2 - CE-T1 contrast part, ``gbmmet.ood``)
and, side by side, on the distance alone.

    .venv/bin/python bench/ood.py --lake lake --data data/demo [--count 10]
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import _common  # noqa: F401 - project on sys.path, Ray on loopback
import numpy as np

KINDS = ("meningioma", "no_lesion", "swapped")
SETTINGS = {"knn k=10 (default)": {}, "knn k=5": {"k": 5}, "knn k=30": {"k": 30},
            "mahalanobis (Ledoit-Wolf)": {"method": "mahalanobis"}}
ID = "x"  # the one patient of a features block


def _ood_features(lake, data: Path, preset: str, count: int, backbone: str
                  ) -> dict[str, list[tuple[np.ndarray, float]]]:
    """Each OOD kind's patients as (slice features, sequence contrast)."""
    from gbmmet import constants as C
    from gbmmet.ood import sequence_contrast
    from gbmmet.preprocess.patient import preprocess_patient
    from pipelines.features import embed
    from pipelines.predict import _lake_params
    from pipelines.synth import SynthConfig, run_synth

    result = run_synth(SynthConfig(preset=preset, out=data, ood=KINDS, ood_count=count), show_progress=False)
    params = _lake_params(lake)
    sp = params.slices
    out: dict[str, list[tuple[np.ndarray, float]]] = {}
    for kind, manifest in result.ood_manifests.items():
        manifest = Path(manifest)
        for r in csv.DictReader(manifest.open()):
            paths = [str(manifest.parent / r[c]) for c in (C.COL_T1C_PATH, C.COL_T2_PATH, C.COL_ROI_PATH)]
            images = preprocess_patient(*paths, params, patient_id=r[C.COL_PATIENT_ID]).images
            contrast = sequence_contrast(images, sp.channels, sp.ws_range, [ID] * len(images))[ID]
            out.setdefault(kind, []).append((embed(images, backbone.split("@")[0])[0], contrast))
    return out


def main() -> None:
    import json

    from sklearn.metrics import roc_auc_score

    from gbmmet import constants as C
    from gbmmet.ood import OodDetector, OodSettings
    from pipelines.train import load_feature_matrix
    from pipelines.trust import sequence_contrasts
    from storage.lake import Lake

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lake", default="lake")
    ap.add_argument("--data", default="data/demo", help="the lake's synthetic cohort folder (cohort.json)")
    ap.add_argument("--count", type=int, default=10, help="patients of each OOD kind")
    args = ap.parse_args()
    t0, c0 = time.perf_counter(), time.process_time()
    lake, data = Lake(args.lake), Path(args.data)
    preset = json.loads((data / "cohort.json").read_text())["preset"]
    backbone = lake.read(C.TABLE_FEATURES, columns=["backbone"]).column("backbone")[0].as_py()
    outside = _ood_features(lake, data, preset, args.count, backbone)
    _, train = load_feature_matrix(lake, backbone, C.TRAIN)
    val_meta, val = load_feature_matrix(lake, backbone, C.VAL)
    inside = {s: load_feature_matrix(lake, backbone, s) for s in (C.TEST, C.EXTERNAL)}
    contrast = sequence_contrasts(lake, (C.VAL, C.TEST, C.EXTERNAL))
    print(f"lake {args.lake} ({preset}; backbone {backbone}): {len(train)} training slices, "
          f"{len(val_meta)} validation slices; {args.count} patients of each kind; "
          f"{time.perf_counter() - t0:.0f} s wall / {time.process_time() - c0:.0f} s CPU to make and embed them")
    for (setting, kw), check in ((s, c) for s in SETTINGS.items() for c in (True, False)):
        d = OodDetector(OodSettings(**kw)).fit(train, val, val_meta.column(C.COL_PATIENT_ID).to_numpy(),
                                               contrast if check else None)
        name = setting + (" + sequence check" if check else ", distance alone")
        ins = {s: np.array(list(d.patient_scores(X, m.column(C.COL_PATIENT_ID).to_numpy(), contrast).values()))
               for s, (m, X) in inside.items()}
        cells = [f"in-distribution flagged: test {np.mean(ins[C.TEST] > d.threshold_):.0%}, "
                 f"external {np.mean(ins[C.EXTERNAL] > d.threshold_):.0%}"]
        for kind, feats in outside.items():
            out = np.array([d.patient_scores(X, [ID] * len(X), {ID: c})[ID] for X, c in feats])
            auc = {s: roc_auc_score(np.r_[np.zeros(len(v)), np.ones(len(out))], np.r_[v, out]) for s, v in ins.items()}
            cells.append(f"{kind}: AUROC {auc[C.TEST]:.2f} vs test / {auc[C.EXTERNAL]:.2f} vs external, "
                         f"flagged {np.mean(out > d.threshold_):.0%}")
        print(f"{name}: " + "; ".join(cells))
    print(f"total {time.perf_counter() - t0:.0f} s wall / {time.process_time() - c0:.0f} s CPU")


if __name__ == "__main__":
    main()
