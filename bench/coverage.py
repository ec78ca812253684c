"""Coverage of the confidence intervals of gbmmet.stats on simulated cohorts with known truth.

Binormal scores: MET ~ N(0, 1), GBM ~ N(mu, 1), with mu set so that the population AUC is 0.88
(AUC = Phi(mu / sqrt 2)). Calls at a fixed cutoff t, so the true sensitivity (Phi(mu - t)),
specificity (Phi(t)) and accuracy (their mix by the design's share of GBM) are known. Cohorts of
n = 30 and 100 patients, GBM:MET 2:1 and 1:1 (fixed class counts, as a stratified design). For each
simulated cohort and method (paper_subsample90, bootstrap BCa, bootstrap percentile and, for the
AUC, DeLong) the script records whether the 95 % interval covers the truth; it prints the empirical
coverage with its Monte Carlo SE.

Second part, the cutoff chosen on the test set (as in the paper): the target is the population
accuracy of the rule "Youden cutoff chosen on this cohort" (from the normal CDFs), and the
intervals are built with that cutoff held fixed, or re-chosen in every resample
(``choose_cutoff=youden_cutoff``). Also the mean optimism: the cohort's accuracy at its own cutoff
minus the population accuracy of that cutoff.

    .venv/bin/python bench/coverage.py [--datasets 400] [--resamples 1000] [--workers 2] [--quick]

Writes bench/out/coverage.json.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one BLAS thread per worker: the workers are the parallelism

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from multiprocessing import Pool  # noqa: E402

import numpy as np  # noqa: E402
from _common import save  # noqa: E402
from scipy.stats import norm  # noqa: E402

AUC = 0.88
MU = math.sqrt(2) * norm.ppf(AUC)  # GBM mean; MET ~ N(0, 1)
CUT = 0.6  # fixed cutoff: sensitivity Phi(mu - 0.6) = 0.856, specificity Phi(0.6) = 0.726
DESIGNS = [(30, "2:1"), (30, "1:1"), (100, "2:1"), (100, "1:1")]
METRICS = ("accuracy", "recall", "specificity", "auc")
METHODS = ("paper_subsample90", "bootstrap_bca", "bootstrap_percentile", "delong")
CHOSEN = ("paper_subsample90", "bootstrap_bca", "bootstrap_percentile")


def _counts(n: int, ratio: str) -> tuple[int, int]:
    g, m = (int(v) for v in ratio.split(":"))
    n_gbm = round(n * g / (g + m))
    return n_gbm, n - n_gbm


def _truth(n_gbm: int, n_met: int, cut: float) -> dict[str, float]:
    sens, spec = float(norm.sf(cut - MU)), float(norm.cdf(cut))
    pi = n_gbm / (n_gbm + n_met)
    return {"accuracy": pi * sens + (1 - pi) * spec, "recall": sens, "specificity": spec, "auc": AUC}


def _covers(iv_low: float, iv_high: float, truth: float) -> bool:
    return bool(iv_low <= truth <= iv_high)


def one_dataset(task: tuple[int, str, int, int]) -> dict:
    """Simulate one cohort and check every interval; returns coverage flags and the CPU seconds."""
    from gbmmet.stats import (
        ci_bootstrap,
        ci_paper_subsample,
        delong_roc_variance,
        metrics,
        youden_cutoff,
    )

    n, ratio, index, n_resamples = task
    t0 = time.process_time()
    n_gbm, n_met = _counts(n, ratio)
    rng = np.random.default_rng([n, n_gbm, index])
    y = np.r_[np.ones(n_gbm, int), np.zeros(n_met, int)]
    score = rng.normal(MU * y, 1.0)
    truth = _truth(n_gbm, n_met, CUT)
    call = (score >= CUT).astype(int)
    kw = {"names": METRICS, "n_resamples": n_resamples, "seed": index}
    out: dict = {"covers": {}, "bca_fallback": {}, "chosen": {}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # degenerate resamples: counted by the methods
        cis = {"paper_subsample90": ci_paper_subsample(y, call, score, **kw),
               "bootstrap_bca": ci_bootstrap(y, call, score, method="BCa", **kw),
               "bootstrap_percentile": ci_bootstrap(y, call, score, method="percentile", **kw)}
        for method, ci in cis.items():
            for name in METRICS:
                out["covers"][f"{method}|{name}"] = _covers(ci[name].low, ci[name].high, truth[name])
        for name in METRICS:
            out["bca_fallback"][name] = cis["bootstrap_bca"][name].method != "bootstrap_bca"
        d = delong_roc_variance(y, score)
        out["covers"]["delong|auc"] = _covers(d.ci_low, d.ci_high, AUC)

        # the cutoff chosen on this cohort: target = population accuracy of that cutoff
        cut = youden_cutoff(y, score)
        target = _truth(n_gbm, n_met, cut)["accuracy"]
        chosen_call = (score >= cut).astype(int)
        out["optimism"] = metrics(y, chosen_call)["accuracy"] - target
        acc = {"n_resamples": n_resamples, "seed": index, "names": ("accuracy",)}
        fixed = {"paper_subsample90": ci_paper_subsample(y, chosen_call, score, **acc),
                 "bootstrap_bca": ci_bootstrap(y, chosen_call, score, method="BCa", **acc),
                 "bootstrap_percentile": ci_bootstrap(y, chosen_call, score, method="percentile", **acc)}
        again = {"paper_subsample90": ci_paper_subsample(y, None, score, choose_cutoff=youden_cutoff, **acc),
                 "bootstrap_bca": ci_bootstrap(y, None, score, method="BCa", choose_cutoff=youden_cutoff, **acc),
                 "bootstrap_percentile": ci_bootstrap(y, None, score, method="percentile",
                                                      choose_cutoff=youden_cutoff, **acc)}
        for label, group in (("fixed", fixed), ("rechosen", again)):
            for method, ci in group.items():
                iv = ci["accuracy"]
                out["chosen"][f"{label}|{method}"] = _covers(iv.low, iv.high, target)
    out["design"] = f"{n}|{ratio}"
    out["cpu_s"] = time.process_time() - t0
    return out


def _cell(flags: list[bool]) -> str:
    p = float(np.mean(flags))
    se = math.sqrt(p * (1 - p) / len(flags))
    return f"{p:.3f} ± {se:.3f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=int, default=400, help="simulated cohorts per design (default 400)")
    ap.add_argument("--resamples", type=int, default=1000, help="resamples per interval (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--quick", action="store_true", help="40 cohorts per design (a smoke run)")
    args = ap.parse_args(argv)
    n_sets = 40 if args.quick else args.datasets
    tasks = [(n, ratio, i, args.resamples) for n, ratio in DESIGNS for i in range(n_sets)]

    wall0, cpu0 = time.perf_counter(), time.process_time()
    with Pool(args.workers) as pool:
        results = pool.map(one_dataset, tasks, chunksize=8)
    wall = time.perf_counter() - wall0
    cpu = sum(r["cpu_s"] for r in results) + time.process_time() - cpu0

    by = {f"{n}|{ratio}": [r for r in results if r["design"] == f"{n}|{ratio}"] for n, ratio in DESIGNS}
    print(f"Coverage of nominal 95 % intervals: {n_sets} simulated cohorts per design, {args.resamples} "
          f"resamples per interval; binormal scores, population AUC {AUC} (mu = {MU:.3f}), fixed cutoff "
          f"{CUT} (sensitivity {norm.sf(CUT - MU):.3f}, specificity {norm.cdf(CUT):.3f}). "
          "Cells: empirical coverage ± Monte Carlo SE.\n")
    print("| n | GBM:MET | metric | paper_subsample90 | bootstrap BCa | bootstrap percentile | DeLong "
          "| BCa fell back to percentile |")
    print("|---|---|---|---|---|---|---|---|")
    table = {}
    for key, rs in by.items():
        n, ratio = key.split("|")
        for name in METRICS:
            cells = {m: _cell([r["covers"][f"{m}|{name}"] for r in rs])
                     for m in METHODS if f"{m}|{name}" in rs[0]["covers"]}
            fell = float(np.mean([r["bca_fallback"][name] for r in rs]))
            table[f"{key}|{name}"] = {**cells, "bca_fallback_share": fell}
            print(f"| {n} | {ratio} | {name} | " + " | ".join(cells.get(m, "") for m in METHODS)
                  + f" | {fell:.1%} |")

    print("\nCutoff chosen on the cohort (Youden), target = population accuracy of that cutoff; "
          "intervals of accuracy with the cutoff fixed, or re-chosen in every resample "
          "(choose_cutoff=youden_cutoff).\n")
    print("| n | GBM:MET | mean optimism | " + " | ".join(f"fixed {m}" for m in CHOSEN) + " | "
          + " | ".join(f"re-chosen {m}" for m in CHOSEN) + " |")
    print("|---|---|---|" + "---|" * (2 * len(CHOSEN)))
    chosen = {}
    for key, rs in by.items():
        n, ratio = key.split("|")
        opt = np.array([r["optimism"] for r in rs])
        cells = {f"{label}|{m}": _cell([r["chosen"][f"{label}|{m}"] for r in rs])
                 for label in ("fixed", "rechosen") for m in CHOSEN}
        chosen[key] = {"optimism_mean": float(opt.mean()), "optimism_se": float(opt.std(ddof=1) / math.sqrt(len(opt))),
                       **cells}
        print(f"| {n} | {ratio} | {opt.mean():+.3f} ± {opt.std(ddof=1) / math.sqrt(len(opt)):.3f} | "
              + " | ".join(cells.values()) + " |")

    print(f"\nCPU {cpu:.0f} s (process time, all workers), wall {wall:.0f} s, {args.workers} workers, "
          f"{len(tasks)} cohorts.")
    result = {"datasets_per_design": n_sets, "resamples": args.resamples, "auc": AUC, "mu": MU, "cutoff": CUT,
              "coverage": table, "chosen_cutoff": chosen, "cpu_s": cpu, "wall_s": wall, "workers": args.workers}
    print(f"wrote {save('coverage', result)}")
    return result


if __name__ == "__main__":
    main()
