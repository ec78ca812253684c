"""Overview: the cohorts in the lake, preprocessing failures, and the chosen run's record."""

from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dashboards import charts, common, data

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

st.subheader("Patients and slices per site, split and diagnosis")
wide = counts.pivot_table(index=["site", "split"], columns="label", values=["patients", "slices"],
                          aggfunc="sum", fill_value=0)
wide.columns = [f"{what} {label}" for what, label in wide.columns]
wide = wide.reset_index()
common.table(ctx, wide, "counts", download=counts)
common.chart(ctx, charts.counts_bar(counts), "counts")

st.subheader("Preprocessing failures")
if failures.empty:
    st.success("No patient failed preprocessing at the chosen sites.", icon=":material/check_circle:")
else:
    st.caption("The latest attempt of each patient that failed, with the reason. Fix the input and re-run "
               "`gbmmet preprocess`: finished patients are kept, failed ones are retried.")
    common.table(ctx, failures, "preprocessing-failures")

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
    facts += [(f"cutoff {k}", f"{v:.3f}") for k, v in cut.items()]
record = pd.DataFrame([(k, "" if v is None else str(v)) for k, v in facts], columns=["field", "value"])
common.table(ctx, record, "run-record")
with st.expander("Full configuration and versions"):
    st.json({"config": train.get("config"), "versions": train.get("versions"),
             "evaluation": evaluation.get("config") if evaluation else None}, expanded=False)
