"""Preprocessing QC: every patient's flags, worst first, and one patient's QC panels (registration
before and after, N4 fields, WhiteStripe histograms, ROI slices), as ``gbmmet qc`` writes them
(``storage.qc_report``). The sidebar's sites choose the patients; cohorts do not apply.

The patient whose panels are shown is recorded in the lake's access log (page ``qc``)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import streamlit as st

from dashboards import common, data
from gbmmet.preprocess import qc_panels
from storage.lake import Lake
from storage.qc_report import PatientQC, QCReport, attach_panels, flag_text, load_qc

PAGE = "qc"  # this file's name: the page the access log records
KEY = "qc-patient"


@st.cache_data(show_spinner=False, max_entries=8, hash_funcs={data.Source: data._key})
def load(src: data.Source, sites: tuple[str, ...]) -> QCReport:
    """The QC report of the chosen sites: every patient's flags (panels: ``panels``, one patient)."""
    return load_qc(Lake(src.uri), sites, with_panels=False)


@st.cache_data(show_spinner=False, max_entries=32, hash_funcs={data.Source: data._key})
def panels(src: data.Source, attempt_id: str, _patient: PatientQC) -> dict[str, bytes]:
    """The PNG panels of ``_patient`` (cached by its ``attempt_id``), in display order."""
    one = replace(_patient, panels={})
    attach_panels(Lake(src.uri), [one])
    return one.panels


def summary_table(report: QCReport) -> pd.DataFrame:
    """One row per patient, in the report's order (worst first within each site)."""
    return pd.DataFrame([{
        "patient": p.patient_id, "site": p.site, "split": p.split, "flags raised": p.badness[0],
        "which": ", ".join(f.name for f in p.raised), "largest z": round(p.badness[1], 1)
        if p.badness[1] != float("-inf") else None,
    } for p in report.patients], columns=["patient", "site", "split", "flags raised", "which", "largest z"])


ctx = common.context()
st.title("Preprocessing QC")
if ctx.src is None or ctx.n_patients == 0 or (ctx.limited and not ctx.allowed):
    common.require(ctx)  # says what is missing, and stops
if not ctx.sites:
    st.info("Choose at least one site in the sidebar.", icon=":material/info:")
    st.stop()
report = load(ctx.src, tuple(ctx.sites))
if not report.patients:
    st.info("No patient of the chosen sites has QC panels: preprocess with QC on (the default; "
            f"`gbmmet preprocess ... --lake {ctx.lake}`), then `gbmmet qc --lake {ctx.lake}` writes the same as HTML.",
            icon=":material/info:")
    st.stop()
table = summary_table(report)
st.caption(f"{len(table)} patient(s), {int((table['flags raised'] > 0).sum())} with flags raised; worst first within "
           "each site. Flags against the cohort compare a patient with the other patients of its site "
           "preprocessed with the same parameters.")
common.table(ctx, table, "qc-flags")
if report.without_panels:
    st.caption(f"{len(report.without_panels)} patient(s) without QC panels (preprocessed with QC off).")

ids = [p.patient_id for p in report.patients]
pid = st.selectbox("Patient (pseudonymised id)", ids, key=KEY)
patient = report.patients[ids.index(pid)]
common.log_patient_view(ctx, patient.patient_id, patient.site, PAGE)
st.subheader(f"{patient.patient_id} ({patient.site}, {patient.split})")
for f in patient.flags:
    text = common.md(flag_text(f))
    if f.raised and f.severity == "warn":
        st.warning(text, icon=":material/flag:")
    else:
        st.caption(text)
shown = panels(ctx.src, patient.attempt_id, patient)
names = list(shown)
st.image([qc_panels.png_array(shown[n]) for n in names], caption=[qc_panels.CAPTIONS[n] for n in names],
         width=260, alt=[f"{patient.patient_id}: {qc_panels.CAPTIONS[n]}" for n in names])
