"""gbmmet's dashboard: model against readers, internal against external, with CIs.

    gbmmet dashboard --lake lake                       # serves on http://127.0.0.1:8501
    streamlit run dashboards/app.py -- --lake lake     # the same app, launched by Streamlit

The sidebar chooses the run, cohorts and sites; each page is one file in ``views/``. Everything is
read from the lake through ``storage`` (``dashboards.data``); the one write is the access log, a row
per patient shown (``common.log_patient_view``).

With sign-in configured (``[auth]`` in secrets.toml: ``dashboards.access``), only signed-in users
on the allow-list see anything, each only the sites it names; without it, every site, on this
machine only.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

if __package__ in (None, ""):  # launched as a script by `streamlit run`: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dashboards import access, common, data, names  # noqa: E402
from storage.lake import Lake  # noqa: E402

VIEWS = Path(__file__).resolve().parent / "views"
# Material icons are drawn in the sidebar from the font Streamlit serves itself; the browser tab's
# icon is ``common.page_icon()`` (set after st.navigation, which would otherwise make the page's
# Material icon the tab's icon, fetched from Google's font server: nothing may leave the host).
PAGES = (
    ("summary.py", "Summary", ":material/summarize:"),  # first: the default page
    ("overview.py", "Overview", ":material/dashboard:"),
    ("readers.py", "Model vs readers", ":material/groups:"),
    ("roc.py", "ROC", ":material/show_chart:"),
    ("calibration.py", "Calibration", ":material/tune:"),
    ("trust.py", "Trust", ":material/verified_user:"),
    ("subgroups.py", "Subgroups", ":material/category:"),
    ("patient.py", "Patient viewer", ":material/image_search:"),
    ("training.py", "Training", ":material/model_training:"),
    ("qc.py", "Preprocessing QC", ":material/fact_check:"),
)
COHORT_CHOICES = names.COHORT_ORDER


def sidebar(decision: access.Decision) -> common.Context:
    """Draw the sidebar's choices (the sites among those ``decision`` allows) and return them."""
    lake, launch_run = common.launch_args()
    requested = st.query_params.get("run") or launch_run
    st.sidebar.markdown("**gbmmet** · GBM vs solitary metastasis")
    lk = Lake(lake)
    if lk.local_root is not None and not lk.local_root.is_dir():
        st.sidebar.caption(f"lake: `{lake}` (not found)")
        ctx = common.Context(lake, None, None, requested, (), False, (), (), 0, user=decision.user)
        common.account(ctx, decision)
        return ctx
    src = data.Source.of(lk.uri)
    pats = data.patients(src)
    lake_sites = tuple(sorted(pats["site"].unique())) if len(pats) else ()
    all_sites = access.sites_for(decision, lake_sites)  # the sites this viewer may see
    limited = all_sites != lake_sites
    pats = pats[pats["site"].isin(all_sites)] if limited else pats
    runs = data.runs(src)
    run_ids = tuple(runs["run_id"])
    evaluated = dict(zip(runs["run_id"], runs["evaluated"], strict=True))
    if requested in run_ids:
        index = run_ids.index(requested)
    elif requested:
        index = None  # a run that is not here: say so on the page rather than show another one
    else:
        index = 0 if run_ids else None
    run = st.sidebar.selectbox("Run", run_ids, index=index, placeholder="Choose a run",
                               format_func=lambda r: r if evaluated.get(r) else f"{r} (not evaluated)",
                               help="A finished training run; its evaluation is what the pages show.")
    if run is not None and run != st.query_params.get("run"):
        st.query_params["run"] = run  # the address bar now names the run: a link others can open
    # the choices live in session state (not a widget default) so a page's "show it" button can extend them
    st.session_state[common.COHORTS_KEY] = [c for c in st.session_state.get(common.COHORTS_KEY, common.DEFAULT_COHORTS)
                                            if c in COHORT_CHOICES]
    st.session_state[common.SITES_KEY] = [s for s in st.session_state.get(common.SITES_KEY, all_sites) if s in all_sites]
    cohorts = st.sidebar.multiselect("Cohorts", COHORT_CHOICES, key=common.COHORTS_KEY, format_func=names.cohort_name)
    sites = st.sidebar.multiselect("Sites", all_sites, key=common.SITES_KEY)
    common.glossary()
    st.sidebar.caption(f"lake: `{lake}` · state `{src.stamp[:8]}`")
    ctx = common.Context(lake, src, run, requested, run_ids, bool(run and evaluated.get(run)),
                         tuple(c for c in COHORT_CHOICES if c in cohorts), tuple(sorted(sites)), len(pats),
                         user=decision.user, allowed=all_sites, limited=limited)
    common.account(ctx, decision)
    return ctx


def main() -> None:
    st.set_page_config(page_title="gbmmet", page_icon=common.page_icon(), layout="wide")
    decision = common.gate()  # signed out or refused: that page only, and the run stops here
    pages = [st.Page(VIEWS / f, title=t, icon=i, default=(k == 0)) for k, (f, t, i) in enumerate(PAGES)]
    page = st.navigation(pages)
    st.set_page_config(page_icon=common.page_icon())  # the tab's icon, never the page's Material icon
    if page.url_path not in (common.PATIENT_PAGE, "qc"):  # the pages that show one patient's images
        common.forget_patient_view()
    common.contrast()
    st.session_state[common.CTX_KEY] = sidebar(decision)
    page.run()


main()
