"""Overview: the cohorts in the lake, preprocessing failures, and the chosen run's record."""

from __future__ import annotations

import json
import re

import pandas as pd
import streamlit as st

from dashboards import charts, common, data, names

ctx = common.context()
st.title("Overview")
common.require(ctx)

counts = data.counts(ctx.src, ctx.sites)
failures = data.preprocess_failures(ctx.src, ctx.sites)
c1, c2, c3, c4 = st.columns(4)
c1.metric("Patients", int(counts["patients"].sum()))
c2.metric("ROI slices", int(counts["slices"].sum()))
c3.metric("Sites", len(ctx.sites))
c4.metric("Preprocessing failures", len(failures),
          help="Patients whose latest preprocessing attempt failed; they are in no other table.")

st.subheader("Patients and slices per cohort, site and diagnosis")
wide = counts.pivot_table(index=["split", "site"], columns="label", values=["patients", "slices"],
                          aggfunc="sum", fill_value=0, sort=False)
wide.columns = [f"{what} {label}" for what, label in wide.columns]
wide = wide.reset_index().rename(columns={"split": "cohort"})
wide["cohort"] = wide["cohort"].map(names.cohort_name)
common.table(ctx, wide, "counts", download=counts)
common.chart(ctx, charts.counts_bar(counts), "counts")

st.subheader("Preprocessing failures")
if failures.empty:
    st.success("No patient failed preprocessing at the chosen sites.", icon=":material/check_circle:")
else:
    st.caption("The latest attempt of each patient that failed, with the reason. Fix the input and re-run "
               "`gbmmet preprocess`: finished patients are kept, failed ones are retried.")
    shown = failures.rename(columns={"patient_id": "patient", "error_kind": "what failed", "error_message": "reason",
                                     "started_at": "attempted at"})
    common.table(ctx, shown.assign(**{"what failed": shown["what failed"].str.replace("_", " ")}),
                 "preprocessing-failures", download=failures)

st.subheader("Run")
if ctx.run is None:
    common.require(ctx, run=True)
records = data.run_records(ctx.src, ctx.run)
train = records.get("train", {})
evaluation = records.get("evaluate")
cfg = train.get("config") if isinstance(train.get("config"), dict) else {}
head = cfg.get("head", {}) if isinstance(cfg, dict) else {}
facts = [
    ("run", ctx.run),
    ("mode", train.get("mode")),
    ("backbone", train.get("backbone_id")),
    ("why this backbone", train.get("backbone_reason")),
    ("weights sha256", train.get("weights_sha256")),
    ("folds", cfg.get("folds")),
    ("epochs per fold", head.get("epochs")),
    ("seeds", json.dumps(train.get("seeds")) if train.get("seeds") is not None else None),
    ("git commit", train.get("git_commit")),
    ("trained", f"{train.get('finished_at')} ({train.get('seconds') or 0:.0f} s)"),
    ("evaluated", f"{evaluation['finished_at']} ({evaluation.get('seconds') or 0:.0f} s)" if evaluation
     else "not yet: `gbmmet evaluate`"),
]
if evaluation and isinstance(evaluation.get("timings"), dict):
    cut = evaluation["timings"].get("cutoffs", {})
    facts += [(names.cutoff_name(k), f"{cut[k]:.3f}") for k in names.CUTOFF_ORDER if k in cut]
record = pd.DataFrame([(k, "" if v is None else str(v)) for k, v in facts], columns=["field", "value"])
# digests in groups of 8, so a narrow window wraps them rather than cutting them off (the CSV has them whole)
shown = record.assign(value=[" ".join(v[i:i + 8] for i in range(0, len(v), 8)) if re.fullmatch(r"[0-9a-f]{24,}", v)
                             else v for v in record["value"]])
common.table(ctx, shown, "run-record", download=record)
with st.expander("Full configuration and versions"):
    st.json({"config": train.get("config"), "versions": train.get("versions"),
             "evaluation": evaluation.get("config") if evaluation else None}, expanded=False)


def _read_versions(record: dict | None) -> dict:
    value = (record or {}).get("lake_versions")
    if isinstance(value, str):
        value = json.loads(value)
    return value if isinstance(value, dict) else {}


read = {"training read": _read_versions(train), "evaluation read": _read_versions(evaluation)}
tables = sorted(set().union(*read.values()))
with st.expander("Lake versions this run read"):
    if not tables:
        st.info("This run was recorded before the lake recorded versions: re-run `gbmmet evaluate` to record them.")
    else:
        st.caption("Each lake table is a Delta table; a job reads every table at one version and records it. "
                   f"`gbmmet query --as-of {ctx.run} \"SELECT ...\"` answers from the tables as the run's latest "
                   f"job read them (`--as-of {ctx.run}/train` as training did). A version no longer there was "
                   "removed by `gbmmet lake vacuum`.")
        rows = pd.DataFrame([{"table": t, **{k: ("not yet written" if t in v and v[t] is None else v.get(t))
                                             for k, v in read.items()}} for t in tables])
        common.table(ctx, rows.astype(str), "lake-versions", download=rows)

