"""Patient viewer: one patient's ROI slices (CE-T1, T2, the ROI, the ensemble's Grad-CAM), the
folds' per-slice probabilities, the predictive index against both cutoffs, and the readers' calls."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboards import charts, common, data
from gbmmet import constants as C
from gbmmet import render
from storage.queries import RATER_LABELS


def panels(image: np.ndarray, box: tuple[int, int, int, int], cam: np.ndarray | None) -> list[np.ndarray]:
    """CE-T1 with the ROI rectangle, T2, and the Grad-CAM over CE-T1 (where stored), as RGB."""
    size = image.shape[-1]
    rect = render.roi_rect(*box, size)
    out = [render.draw_rect(render.grey_rgb(image[0]), rect), render.grey_rgb(image[1])]
    if cam is not None:
        out.append(render.overlay(image, render.resize_map(cam, image.shape[1], image.shape[2])))
    return out


def png_bytes(rgbs: list[np.ndarray]) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.concatenate(rgbs, axis=1)).save(buf, format="PNG")
    return buf.getvalue()


ctx = common.context()
st.title("Patient viewer")
common.require(ctx, run=True, evaluated=True)
pats = common.evaluated_patients(ctx)

labels = {r.patient_id: f"{r.patient_id} · {data.cohort_name(r.cohort)} · {r.label} · index {r.predictive_index:.2f}"
          for r in pats.itertuples(index=False)}
requested = st.query_params.get("patient")
ids = list(labels)
pid = st.selectbox("Patient (pseudonymised id)", ids, index=ids.index(requested) if requested in labels else 0,
                   format_func=labels.get, key="patient-id")
if pid != requested:
    st.query_params["patient"] = pid
row = pats.set_index("patient_id").loc[pid]
info = data.patients(ctx.src).set_index("patient_id").loc[pid]

c = st.columns(6)
c[0].metric("Diagnosis", row["label"])
c[1].metric("Predictive index", f"{row['predictive_index']:.3f}",
            help="Share of the patient's slices the ensemble's majority vote calls GBM.")
c[2].metric("P(GBM)", "" if pd.isna(row["prob_gbm"]) else f"{row['prob_gbm']:.3f}",
            help="From the predictive index by a logistic fit on the validation patients (see Calibration).")
c[3].metric("Call, validation cutoff", row["call_val"] or "", help=f"cutoff {row['cutoff_val']:.3f} "
            "(Youden on the validation patients)")
c[4].metric("Call, paper cutoff*", row["call_paper"] or "", help=f"cutoff {row['cutoff_paper']:.3f} "
            "(Youden on the internal test: optimistic there)")
c[5].metric("ROI slices", int(row["n_slices"]))
facts = [f"site {info['site']}", f"cohort {data.cohort_name(row['cohort'])}"]
facts += [f"{k} {info[k]}" for k in ("age", "sex", "location") if pd.notna(info[k]) and info[k] != ""]
if row["label"] == C.MET and pd.notna(info["primary_tumor"]) and info["primary_tumor"]:
    facts.append(f"primary {info['primary_tumor']}")
st.caption(" · ".join(facts))
cut = {RATER_LABELS[C.CUTOFF_PAPER]: row["cutoff_paper"], RATER_LABELS[C.CUTOFF_VAL]: row["cutoff_val"]}
common.chart(ctx, charts.index_vs_cutoffs(float(row["predictive_index"]), cut), f"{pid}-index")

slices = data.patient_slices(ctx.src, pid)
cams = data.patient_cams(ctx.src, ctx.run, pid)
probs = data.patient_slice_probs(ctx.src, ctx.run, pid)
st.subheader("Slices")
if slices.empty:
    st.warning(f"Patient {pid} has no slices in the lake.", icon=":material/warning:")
else:
    idx = list(slices["slice_index"])
    k = st.select_slider("Slice", idx, value=idx[len(idx) // 2], key=f"slice-{pid}") if len(idx) > 1 else idx[0]
    s = slices.set_index("slice_index").loc[k]
    p = probs[probs["slice_index"] == k].set_index("model")
    rgbs = panels(s["image"], (int(s["roi_i_min"]), int(s["roi_i_max"]), int(s["roi_j_min"]), int(s["roi_j_max"])),
                  cams.get(int(k)))
    captions = ["CE-T1 with the ROI's bounding rectangle", "T2"]
    if len(rgbs) == 3:
        captions.append("Grad-CAM of the ensemble over CE-T1")
    st.image(rgbs, caption=captions, width=260)
    if len(rgbs) == 2:
        st.caption("No class activation map: evaluate stores them for internal test and external slices.")
    vote = p.loc["ensemble_vote", "vote"] if "ensemble_vote" in p.index else None
    st.caption(f"Slice {k} (z = {s['z_mm']:.1f} mm, crop {s['crop_mm']:.0f} mm): ensemble vote {vote}; "
               + ", ".join(f"{m} {v:.2f}" for m, v in p["prob_gbm"].items() if m.startswith("fold")))
    st.download_button("Download PNG", png_bytes(rgbs), file_name=common.file_name(ctx, f"{pid}-slice{k}", "png"),
                       mime="image/png", key="png-slice", on_click="ignore", icon=":material/image:")

st.subheader("Per-slice probabilities")
if probs.empty:
    st.info("No slice predictions for this patient in this run.", icon=":material/info:")
else:
    common.chart(ctx, charts.slice_probs(probs), f"{pid}-slice-probs")
    wide = probs.pivot_table(index="slice_index", columns="model", values="prob_gbm").reset_index()
    common.table(ctx, wide.round(4), f"{pid}-slice-probs", download=probs)

st.subheader("Readers' calls")
reads = data.reads(ctx.src, ctx.run, (pid,))
if reads.empty:
    st.caption("No reader read this patient.")
else:
    view = reads.assign(correct=reads["call"] == row["label"]).drop(columns=["patient_id"])
    common.table(ctx, view, f"{pid}-reads")
