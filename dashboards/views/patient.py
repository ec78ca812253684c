"""Patient viewer: one patient's ROI slices (CE-T1, T2, the ROI, the ensemble's Grad-CAM), the
folds' per-slice probabilities, the predictive index against both cutoffs, and every call on the
patient (the model at each cutoff, the readers alone and with the model), right or wrong.

``?patient=<pseudonym>`` opens a patient; one the sidebar's filters leave out, or that the run did
not evaluate, or that is not in the lake, is said to be so (never silently replaced by another). A
patient of a site the viewer may not see is, to them, not in the lake.

Every patient shown is recorded in the lake's access log (``common.log_patient_view``)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import streamlit as st
from PIL import Image

from dashboards import charts, common, data, names, trust
from gbmmet import constants as C
from gbmmet import render

KEY = "patient-id"
RIGHT, WRONG = ":blue-background[✓ right]", ":orange-background[✗ wrong]"  # colour-blind safe, and in words


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


def verdict(call, label: str) -> str:
    if not isinstance(call, str) or not call:
        return ""
    return RIGHT if call == label else WRONG


def calls_table(row: pd.Series, reads: pd.DataFrame) -> pd.DataFrame:
    """Every call on the patient: the model at each cutoff (index against cutoff), each reader alone
    and with the model; right or wrong against the diagnosis, in colour and in words."""
    out = []
    for kind in names.CUTOFF_ORDER:
        col = "val" if kind == C.CUTOFF_VAL else "paper"
        call, cutoff = row[f"call_{col}"], row[f"cutoff_{col}"]
        sign = ">=" if row["predictive_index"] >= cutoff else "<"
        out.append({"rater": names.model_name(kind), "call": call or "", "result": verdict(call, row["label"]),
                    "how": f"index {row['predictive_index']:.3f} {sign} cutoff {cutoff:.3f}"})
    for r in reads.itertuples(index=False):
        how = f"confidence {r.confidence}" if pd.notna(r.confidence) else ""
        source = "simulated" if str(r.source or "").startswith(C.READ_SOURCE_SIMULATED) else "imported"
        out.append({"rater": names.rater_name(r.reader, bool(r.assisted), None), "call": r.call,
                    "result": verdict(r.call, row["label"]), "how": ", ".join(p for p in (how, source) if p)})
    return pd.DataFrame(out, columns=["rater", "call", "result", "how"])


TRUST_BOX = {trust.DEFER: (st.warning, ":material/front_hand:"), trust.ONE_LABEL: (st.success, ":material/check:"),
             trust.DISAGREES: (st.info, ":material/compare_arrows:"), trust.UNKNOWN: (st.info, ":material/info:")}


def trust_section(rows: pd.DataFrame, pid: str) -> None:
    """Whether to trust the call on ``pid``: the plain-language line (``dashboards.trust``), the
    conformal sets, the folds' spread and entropy split, and the distance to the training data."""
    st.subheader("Trust this call?")
    hit = rows[rows["patient_id"] == pid]
    row = hit.iloc[0].to_dict() if len(hit) else {}
    kind, line = trust.patient_line(row)
    box, icon = TRUST_BOX[kind]
    box(line, icon=icon)
    if kind == trust.UNKNOWN and all(pd.isna(row.get(k)) for k in trust.PATIENT_COLUMNS):
        return
    fig = trust.uncertainty_figures(row)
    c = st.columns(4)
    for col, level in zip(c, C.CONFORMAL_LEVELS, strict=False):
        col.metric(f"Set at {round(level * 100)} %", trust.set_text(row.get(C.set_column(level))),
                   help=f"The labels the model cannot rule out at {round(level * 100)} % coverage: one label, "
                        "both (not sure) or none (unlike both classes).")
    c[2].metric("Fold spread", fig["fold spread"],
                help="Standard deviation of the fold models' own predictive indices: how much the folds disagree.")
    c[3].metric("Entropy (bits)", fig["entropy"],
                help="Total predictive entropy of the ensemble over the slices: 0 sure, 1 a coin toss.")
    notes = [f"entropy split: {fig['entropy split']}" if fig["entropy split"] else "",
             f"distance to the training data {fig['distance']}: {fig['training data']}",
             f"T2 - CE-T1 contrast around the ROI (WhiteStripe units) {fig['sequence contrast']}"]
    if isinstance(row.get(C.COL_DEFER_REASON), str) and row[C.COL_DEFER_REASON]:
        notes.append(f"deferred: {row[C.COL_DEFER_REASON]}")
    st.caption(" · ".join(n for n in notes if n))


def explain_missing(ctx: common.Context, pid: str) -> None:
    """Say why ``pid`` (from the address bar) is not among the patients shown, and offer to show it."""
    every = data.patient_predictions(ctx.src, ctx.run, names.COHORT_ORDER, ctx.allowed)
    hit = every[every["patient_id"] == pid]
    if len(hit):
        cohort, site = hit["cohort"].iloc[0], hit["site"].iloc[0]
        left = [w for w, out in ((f"the {names.cohort_name(cohort)} cohort", cohort not in ctx.cohorts),
                                 (f"site {site}", site not in ctx.sites)) if out]
        c1, c2 = st.columns([5, 1], vertical_alignment="center")
        c1.warning(f"Patient `{pid}` is in the {names.cohort_name(cohort)} cohort (site {site}), which the sidebar "
                   f"filters out ({' and '.join(left)}).", icon=":material/filter_alt:")
        c2.button("Show it", key="show-patient", on_click=common.show_in_sidebar,
                  kwargs={"cohorts": (cohort,), "sites": (site,)})
        return
    known = common.visible_patients(ctx)
    known = known[known["patient_id"] == pid]
    if len(known):
        split, site = known["split"].iloc[0], known["site"].iloc[0]
        st.warning(f"Patient `{pid}` ({names.cohort_name(split)} cohort, site {site}) has no evaluation in run "
                   f"`{ctx.run}`: " + ("the model was trained on it." if split == C.TRAIN else
                                      "it is not among the run's evaluated patients."), icon=":material/warning:")
    else:
        where = "at the sites you may see" if ctx.limited else "in this lake"
        st.warning(f"There is no patient `{pid}` {where} (ids are pseudonyms: copy one from the list below or "
                   "from another page's link).", icon=":material/warning:")


ctx = common.context()
st.title("Patient viewer")
common.require(ctx, run=True, evaluated=True)
pats = common.evaluated_patients(ctx, notes=False)

labels = {r.patient_id: f"{r.patient_id} · {names.cohort_name(r.cohort)} · {r.label} · index {r.predictive_index:.2f}"
          for r in pats.itertuples(index=False)}
ids = list(labels)
requested = st.query_params.get("patient")
if requested and requested not in labels:
    explain_missing(ctx, requested)
if st.session_state.get(KEY) not in labels:  # first visit, or the patient chosen before is filtered out now
    st.session_state[KEY] = requested if requested in labels else (None if requested else ids[0])
pid = st.selectbox("Patient (pseudonymised id)", ids, format_func=labels.get, key=KEY, placeholder="Choose a patient")
if pid is None:
    st.stop()
if pid != requested:
    st.query_params["patient"] = pid  # the user chose this patient: the address bar names it
row = pats.set_index("patient_id").loc[pid]
info = common.visible_patients(ctx).set_index("patient_id").loc[pid]
common.log_patient_view(ctx, pid, info["site"], common.PATIENT_PAGE)

c = st.columns(4)
c[0].metric("Diagnosis", row["label"])
c[1].metric("Predictive index", f"{row['predictive_index']:.3f}",
            help="Share of the patient's slices the ensemble's majority vote calls GBM.")
c[2].metric("P(GBM)", "" if pd.isna(row["prob_gbm"]) else f"{row['prob_gbm']:.3f}",
            help="From the predictive index by a logistic fit on the validation patients (see Calibration).")
c[3].metric("ROI slices", int(row["n_slices"]))
facts = [f"site {info['site']}", f"{names.cohort_name(row['cohort'])} cohort"]
for key in ("age", "sex"):
    if pd.notna(info[key]) and info[key] != "":
        facts.append(f"{key} {info[key]}")
if pd.notna(info["location"]) and info["location"]:
    facts.append(names.location_name(info["location"]))
if row["label"] == C.MET and pd.notna(info["primary_tumor"]) and info["primary_tumor"]:
    facts.append(f"{names.primary_name(info['primary_tumor'])} primary")
st.caption(" · ".join(facts))
trust_section(data.patient_trust(ctx.src, ctx.run, ctx.cohorts, ctx.sites), pid)

reads = data.reads(ctx.src, ctx.run, (pid,))
st.subheader("Calls")
st.caption("The model calls GBM where the predictive index is at least the cutoff. Right or wrong against the "
           f"diagnosis ({row['label']}).")
common.table(ctx, calls_table(row, reads), f"{pid}-calls", download=reads.assign(label=row["label"]))
cut = {names.cutoff_name(k): row["cutoff_val" if k == C.CUTOFF_VAL else "cutoff_paper"] for k in names.CUTOFF_ORDER}
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
    alts = [f"Contrast-enhanced T1 slice {k} of patient {pid}, the tumour's region of interest outlined",
            f"T2 slice {k} of patient {pid}"]
    if len(rgbs) == 3:
        captions.append("Grad-CAM of the ensemble over CE-T1")
        alts.append(f"Grad-CAM heat map of the ensemble over the CE-T1 slice {k} of patient {pid}: warm where the "
                    "model looked")
    st.image(rgbs, caption=captions, width=260, alt=alts)
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
    wide = wide.rename(columns={"slice_index": "slice", "ensemble_mean": "mean of the folds",
                                "ensemble_vote": "share of folds voting GBM"})
    common.table(ctx, wide.round(4), f"{pid}-slice-probs", download=probs)
