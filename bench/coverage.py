"""Coverage of the confidence intervals of gbmmet.stats on simulated cohorts with known truth.

Binormal scores: MET ~ N(0, 1), GBM ~ N(mu, 1), with mu set so that the population AUC is 0.88
(AUC = Phi(mu / sqrt 2)). Calls at a fixed cutoff t, so the true sensitivity (Phi(mu - t)),
specificity (Phi(t)) and accuracy (their mix by the design's share of GBM) are known. Cohorts of
n = 30 and 100 patients, GBM:MET 2:1 and 1:1 (fixed class counts, as a stratified design). For each
simulated cohort and method (paper_subsample90, bootstrap BCa, bootstrap percentile and, for the
AUC, DeLong) the script records whether the 95 % interval covers the truth; it prints the empirical
coverage with its Monte Carlo SE. A bootstrap interval of a proportion that is degenerate (zero
width: e.g. every GBM called GBM) is Wilson's interval of k / m (``ci_bootstrap``'s stand-in); the
table counts how often BCa fell back to the percentile interval and to Wilson.

Second part, the cutoff chosen on the test set (as in the paper): the target is the population
accuracy of the rule "Youden cutoff chosen on this cohort" (from the normal CDFs), and the
intervals are built with that cutoff held fixed, or re-chosen in every resample
(``choose_cutoff=youden_cutoff``). Also the mean optimism: the cohort's accuracy at its own cutoff
minus the population accuracy of that cutoff.

Third part, paired differences (``ci_paired_difference``): two correlated raters on the same
patients. Rater a is the model above (score S_a = mu y + Z, cutoff 0.6). Rater b (a reader) has a
latent score S_b = mu_b y + rho Z + sqrt(1 - rho^2) E with rho = 0.5 (E independent noise) and its
own cutoff. Truth "0": mu_b = mu and the same cutoff (the same operating point: every true
difference is 0). Truth "diff": mu_b for a population AUC of 0.80 and cutoff 0.3 (b: sensitivity
0.813, specificity 0.618). Coverage of the true difference of accuracy, sensitivity, specificity
and AUC (b's latent score; and ``auc_calls``: a's score against b's calls, the pipeline's
model-minus-reader AUC, true b AUC = (sensitivity + specificity) / 2) by the paired BCa and
percentile bootstrap, Newcombe's hybrid score interval (proportions) and DeLong (AUC); under truth
0, how often each interval excludes 0 (type I error) against McNemar's p < 0.05 (DeLong's p for
the AUC).

    .venv/bin/python bench/coverage.py [--datasets 400] [--resamples 1000] [--workers 2] [--quick]
                                       [--part all|single|paired]

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

RHO = 0.5  # correlation of the two raters' latent scores within a class
AUC_B = 0.80  # rater b's population AUC under truth "diff"
CUT_B = 0.3  # and its cutoff
TRUTHS = {"0": (MU, CUT), "diff": (math.sqrt(2) * norm.ppf(AUC_B), CUT_B)}  # (mu_b, cutoff_b)
PAIRED_METRICS = ("accuracy", "recall", "specificity", "auc", "auc_calls")
PAIRED = ("bca", "percentile", "newcombe", "delong")
PAIRED_LABEL = {"bca": "paired BCa", "percentile": "paired percentile", "newcombe": "Newcombe", "delong": "DeLong"}


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
            out["bca_fallback"][name] = cis["bootstrap_bca"][name].method  # bootstrap_bca unless it fell back
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


def _paired_truth(n_gbm: int, n_met: int, truth: str) -> dict[str, float]:
    mu_b, cut_b = TRUTHS[truth]
    a = _truth(n_gbm, n_met, CUT)
    sens_b, spec_b = float(norm.sf(cut_b - mu_b)), float(norm.cdf(cut_b))
    pi = n_gbm / (n_gbm + n_met)
    return {"accuracy": a["accuracy"] - (pi * sens_b + (1 - pi) * spec_b), "recall": a["recall"] - sens_b,
            "specificity": a["specificity"] - spec_b, "auc": AUC - float(norm.cdf(mu_b / math.sqrt(2))),
            "auc_calls": AUC - (sens_b + spec_b) / 2}


def one_paired(task: tuple[int, str, str, int, int]) -> dict:
    """Two correlated raters on one simulated cohort: coverage of the true differences, whether each
    interval excludes 0, McNemar's / DeLong's p < 0.05."""
    from gbmmet.stats import ci_paired_difference, delong_roc_test, mcnemar_test

    n, ratio, truth, index, n_resamples = task
    t0 = time.process_time()
    n_gbm, n_met = _counts(n, ratio)
    mu_b, cut_b = TRUTHS[truth]
    rng = np.random.default_rng([n, n_gbm, index, 7, list(TRUTHS).index(truth)])
    y = np.r_[np.ones(n_gbm, int), np.zeros(n_met, int)]
    z, e = rng.normal(size=n), rng.normal(size=n)
    s_a = MU * y + z
    s_b = mu_b * y + RHO * z + math.sqrt(1 - RHO**2) * e
    call_a, call_b = (s_a >= CUT).astype(int), (s_b >= cut_b).astype(int)
    target = _paired_truth(n_gbm, n_met, truth)
    kw = {"n_resamples": n_resamples, "seed": index}
    props = ("accuracy", "recall", "specificity")
    ivs: dict = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for method, label in (("BCa", "bca"), ("percentile", "percentile")):
            d = ci_paired_difference(y, (call_a, s_a), (call_b, s_b), names=props + ("auc",), method=method, **kw)
            d["auc_calls"] = ci_paired_difference(y, (call_a, s_a), (call_b, None), names=("auc",), method=method,
                                                  **kw)["auc"]
            for name, iv in d.items():
                ivs[f"{label}|{name}"] = (iv.low, iv.high, iv.method)
        d = ci_paired_difference(y, (call_a, s_a), (call_b, s_b), names=props, method="newcombe_delong", **kw)
        for name, iv in d.items():
            ivs[f"newcombe|{name}"] = (iv.low, iv.high, iv.method)
        tests = {"auc": delong_roc_test(y, s_a, s_b), "auc_calls": delong_roc_test(y, s_a, call_b)}
        for name, t in tests.items():
            ivs[f"delong|{name}"] = (t.ci_low, t.ci_high, "delong")
        p = {name: t.p for name, t in tests.items()}
        for name, sel in (("accuracy", y >= 0), ("recall", y == 1), ("specificity", y == 0)):
            p[name] = mcnemar_test(call_a[sel] == y[sel], call_b[sel] == y[sel]).p
    out = {"design": f"{n}|{ratio}|{truth}", "covers": {}, "excludes0": {}, "width": {}, "fallback": {},
           "test_rejects": {k: bool(v < 0.05) for k, v in p.items()}}
    for key, (lo, hi, method) in ivs.items():
        name = key.split("|")[1]
        out["covers"][key] = _covers(lo, hi, target[name])
        out["excludes0"][key] = not _covers(lo, hi, 0.0)
        out["width"][key] = hi - lo
        if key.startswith("bca|"):
            out["fallback"][name] = method != "bootstrap_bca"
    out["cpu_s"] = time.process_time() - t0
    return out


def _cell(flags: list[bool]) -> str:
    p = float(np.mean(flags))
    se = math.sqrt(p * (1 - p) / len(flags))
    return f"{p:.3f} ± {se:.3f}"


def _single_tables(results: list[dict], n_sets: int, resamples: int) -> tuple[dict, dict]:
    by = {f"{n}|{ratio}": [r for r in results if r["design"] == f"{n}|{ratio}"] for n, ratio in DESIGNS}
    print(f"Coverage of nominal 95 % intervals: {n_sets} simulated cohorts per design, {resamples} "
          f"resamples per interval; binormal scores, population AUC {AUC} (mu = {MU:.3f}), fixed cutoff "
          f"{CUT} (sensitivity {norm.sf(CUT - MU):.3f}, specificity {norm.cdf(CUT):.3f}). "
          "Cells: empirical coverage ± Monte Carlo SE. The bootstrap columns include the Wilson stand-in "
          "for a degenerate proportion interval.\n")
    print("| n | GBM:MET | metric | paper_subsample90 | bootstrap BCa | bootstrap percentile | DeLong "
          "| BCa fell back to percentile | BCa fell back to Wilson |")
    print("|---|---|---|---|---|---|---|---|---|")
    table = {}
    for key, rs in by.items():
        n, ratio = key.split("|")
        for name in METRICS:
            cells = {m: _cell([r["covers"][f"{m}|{name}"] for r in rs])
                     for m in METHODS if f"{m}|{name}" in rs[0]["covers"]}
            pct = float(np.mean([r["bca_fallback"][name] == "bootstrap_percentile" for r in rs]))
            wil = float(np.mean([r["bca_fallback"][name] == "wilson" for r in rs]))
            table[f"{key}|{name}"] = {**cells, "bca_fallback_percentile_share": pct, "bca_fallback_wilson_share": wil}
            print(f"| {n} | {ratio} | {name} | " + " | ".join(cells.get(m, "") for m in METHODS)
                  + f" | {pct:.1%} | {wil:.1%} |")

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
    return table, chosen


def _paired_tables(results: list[dict], n_sets: int, resamples: int) -> dict:
    keys = [f"{n}|{ratio}|{truth}" for truth in TRUTHS for n, ratio in DESIGNS]
    by = {k: [r for r in results if r["design"] == k] for k in keys}
    mu_b, cut_b = TRUTHS["diff"]
    print(f"\nPaired differences a - b (ci_paired_difference), {n_sets} cohorts per design, {resamples} resamples; "
          f"a: the model above; b: latent score correlated rho = {RHO} with a's within a class. Truth 0: b at a's "
          f"operating point. Truth diff: b with AUC {AUC_B}, cutoff {cut_b} (sensitivity {norm.sf(cut_b - mu_b):.3f}, "
          f"specificity {norm.cdf(cut_b):.3f}). auc: b's latent score; auc_calls: b's calls. Cells: coverage of the "
          "true difference ± MC SE [mean width].\n")
    print("| n | GBM:MET | truth | metric | true diff | " + " | ".join(PAIRED_LABEL[m] for m in PAIRED)
          + " | BCa fell back to percentile |")
    print("|---|---|---|---|---|" + "---|" * len(PAIRED) + "---|")
    table = {}
    for key, rs in by.items():
        n, ratio, truth = key.split("|")
        target = _paired_truth(*_counts(int(n), ratio), truth)
        for name in PAIRED_METRICS:
            cells, row = {}, {"true_diff": target[name]}
            for m in PAIRED:
                k = f"{m}|{name}"
                if k not in rs[0]["covers"]:
                    continue
                width = float(np.mean([r["width"][k] for r in rs]))
                cells[m] = f"{_cell([r['covers'][k] for r in rs])} [{width:.3f}]"
                row[m] = {"coverage": float(np.mean([r["covers"][k] for r in rs])), "mean_width": width,
                          "excludes0": float(np.mean([r["excludes0"][k] for r in rs]))}
            fell = float(np.mean([r["fallback"][name] for r in rs]))
            row["bca_fallback_share"] = fell
            row["test_rejects"] = float(np.mean([r["test_rejects"][name] for r in rs]))
            table[f"{key}|{name}"] = row
            print(f"| {n} | {ratio} | {truth} | {name} | {target[name]:+.3f} | "
                  + " | ".join(cells.get(m, "") for m in PAIRED) + f" | {fell:.1%} |")

    print("\nType I error under truth 0 (nominal 0.05): share of cohorts whose interval excludes 0, and McNemar's "
          "p < 0.05 (exact below 25 discordant pairs; DeLong's p for the AUC) on the same cohorts.\n")
    print("| n | GBM:MET | metric | " + " | ".join(PAIRED_LABEL[m] for m in PAIRED) + " | test p < 0.05 |")
    print("|---|---|---|" + "---|" * len(PAIRED) + "---|")
    for n, ratio in DESIGNS:
        rs = by[f"{n}|{ratio}|0"]
        for name in ("accuracy", "recall", "specificity", "auc"):
            cells = {m: _cell([r["excludes0"][f"{m}|{name}"] for r in rs])
                     for m in PAIRED if f"{m}|{name}" in rs[0]["excludes0"]}
            test = _cell([r["test_rejects"][name] for r in rs])
            print(f"| {n} | {ratio} | {name} | " + " | ".join(cells.get(m, "") for m in PAIRED) + f" | {test} |")
    return table


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", type=int, default=400, help="simulated cohorts per design (default 400)")
    ap.add_argument("--resamples", type=int, default=1000, help="resamples per interval (default 1000)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--quick", action="store_true", help="40 cohorts per design (a smoke run)")
    ap.add_argument("--part", choices=("all", "single", "paired"), default="all",
                    help="single rater, paired differences, or both (default)")
    args = ap.parse_args(argv)
    n_sets = 40 if args.quick else args.datasets
    single = [(n, ratio, i, args.resamples) for n, ratio in DESIGNS for i in range(n_sets)]
    paired = [(n, ratio, truth, i, args.resamples) for truth in TRUTHS for n, ratio in DESIGNS for i in range(n_sets)]
    single = single if args.part in ("all", "single") else []
    paired = paired if args.part in ("all", "paired") else []

    wall0, cpu0 = time.perf_counter(), time.process_time()
    with Pool(args.workers) as pool:
        results = pool.map(one_dataset, single, chunksize=8) if single else []
        presults = pool.map(one_paired, paired, chunksize=8) if paired else []
    wall = time.perf_counter() - wall0
    cpu = sum(r["cpu_s"] for r in results + presults) + time.process_time() - cpu0

    result = {"datasets_per_design": n_sets, "resamples": args.resamples, "auc": AUC, "mu": MU, "cutoff": CUT}
    if results:
        result["coverage"], result["chosen_cutoff"] = _single_tables(results, n_sets, args.resamples)
    if presults:
        result["paired"] = {"rho": RHO, "auc_b": AUC_B, "cutoff_b": CUT_B,
                            "coverage": _paired_tables(presults, n_sets, args.resamples)}
    print(f"\nCPU {cpu:.0f} s (process time, all workers), wall {wall:.0f} s, {args.workers} workers, "
          f"{len(single)} single-rater and {len(paired)} paired cohorts.")
    result.update(cpu_s=cpu, wall_s=wall, workers=args.workers)
    name = "coverage" if args.part == "all" and not args.quick else f"coverage-{args.part}{'-quick' if args.quick else ''}"
    print(f"wrote {save(name, result)}")
    return result


if __name__ == "__main__":
    main()
