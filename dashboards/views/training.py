"""Training: per-fold loss and accuracy curves (training and held-out), and fold sizes."""

from __future__ import annotations

import streamlit as st

from dashboards import charts, common, data

ctx = common.context()
st.title("Training")
common.require(ctx, run=True)
history = data.train_history(ctx.src, ctx.run)
if history.empty:
    st.info(f"Run `{ctx.run}` has no training history in the lake.", icon=":material/info:")
    st.stop()

last = history.sort_values("epoch").groupby("fold").tail(1).sort_values("fold")
st.caption(f"{history['fold'].nunique()} folds, {int(history['epoch'].max()) + 1} epochs each. Held-out: the "
           "fold's own patients, never seen by its model.")
cols = st.columns(len(last))
for col, r in zip(cols, last.itertuples(index=False), strict=True):
    col.metric(f"Fold {r.fold}: held-out accuracy", f"{r.val_acc:.3f}", help=f"after epoch {r.epoch}")
common.chart(ctx, charts.training_curves(history), "training-curves")
resumed = history[history["attempt"].fillna(0) > 0]
if not resumed.empty:
    st.caption("Resumed after a worker failure (from the last checkpoint): "
               + ", ".join(f"fold {f} from epoch {int(g['epoch'].min())}" for f, g in resumed.groupby("fold")))

st.subheader("Fold sizes")
sizes = data.fold_sizes(ctx.src, ctx.run, ctx.sites)
if sizes.empty:
    st.info("No fold assignments for the chosen sites.", icon=":material/info:")
else:
    wide = sizes.pivot_table(index="fold", columns="label", values=["patients", "slices"], aggfunc="sum", fill_value=0)
    wide.columns = [f"{what} {label}" for what, label in wide.columns]
    common.table(ctx, wide.reset_index(), "fold-sizes", download=sizes)
    common.chart(ctx, charts.fold_bar(sizes), "fold-sizes")
final = last[["fold", "epoch", "train_loss", "train_acc", "val_loss", "val_acc"]]
common.table(ctx, final.round(4).rename(columns={"train_loss": "training loss", "train_acc": "training accuracy",
                                                 "val_loss": "held-out loss", "val_acc": "held-out accuracy"}),
             "final-epoch", download=final)
