"""What every page shares: who is looking and the sites they may see (the sign-in, ``access``),
the sidebar's choices (lake, run, cohorts, sites), the guards that turn an empty lake or a missing
run into a message, what the site filter leaves out, the access log of the patients shown, the
glossary, and tables / charts with their downloads."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd
import pyarrow as pa
import streamlit as st

from dashboards import access, charts, data, names
from gbmmet import constants as C
from gbmmet.errors import LakeError
from storage.lake import Lake
from storage.queries import (
    FALLBACK_MARK,
    FALLBACK_NOTE,
    SUBSAMPLE_MARK,
    SUBSAMPLE_NOTE,
    format_estimate,
)
from storage.schemas import SCHEMAS

LAKE_ENV = "GBMMET_LAKE"
RUN_ENV = "GBMMET_RUN"
CTX_KEY = "_gbmmet_ctx"
COHORTS_KEY = "sidebar-cohorts"  # the sidebar's widgets, which a page's "show it" button extends
SITES_KEY = "sidebar-sites"
PATIENT_PAGE = "patient"  # the patient viewer's address (its file's name): the page the access log records
VIEWED_KEY = "_gbmmet_viewed"  # the patient last recorded in the access log, so a rerun does not record it again
DEFAULT_COHORTS = (C.TEST, C.EXTERNAL)
STATIC_ROWS = 100  # tables up to this long are drawn whole and wrap to the page's width (st.table)


def launch_args() -> tuple[str, str | None]:
    """The lake and run given at launch: ``streamlit run app.py -- --lake L [--run R]``, else the
    ``GBMMET_LAKE`` / ``GBMMET_RUN`` environment (what ``gbmmet dashboard`` and tests set), else
    ``./lake``."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--lake")
    parser.add_argument("--run")
    args, _ = parser.parse_known_args(sys.argv[1:]) if "--lake" in sys.argv or "--run" in sys.argv \
        else (argparse.Namespace(lake=None, run=None), [])
    return (args.lake or os.environ.get(LAKE_ENV) or "lake"), (args.run or os.environ.get(RUN_ENV) or None)


@dataclass(frozen=True)
class Context:
    """The sidebar's choices, as every page reads them."""

    lake: str  # as given (shown to the user)
    src: data.Source | None  # None: no lake there
    run: str | None  # the chosen training run
    requested_run: str | None  # a run asked for by link or launch argument, if any
    runs: tuple[str, ...]
    evaluated: bool
    cohorts: tuple[str, ...]
    sites: tuple[str, ...]  # the sites chosen in the sidebar: always among ``allowed``
    n_patients: int  # the lake's patients at the ``allowed`` sites
    user: str = C.ACCESS_LOCAL_USER  # who is looking: the signed-in e-mail, or "local" without sign-in
    allowed: tuple[str, ...] = ()  # the lake's sites this viewer may see (every one without sign-in)
    limited: bool = False  # the viewer may not see every site of the lake


def context() -> Context:
    """The choices ``dashboards/app.py`` made for this run of the page."""
    return st.session_state[CTX_KEY]


# -- who is looking -------------------------------------------------------------------------------
def secrets() -> dict:
    """The app's secrets (``.streamlit/secrets.toml``, ``gbmmet dashboard --secrets``); none: {}."""
    return st.secrets.to_dict() if st.secrets.load_if_toml_exists() else {}


def gate() -> access.Decision:
    """Who is looking (``access.decide`` on the secrets, the environment and ``st.user``). Where
    they may see nothing (signed out, refused, sign-in configured wrongly), draws only that and
    stops the run before any page, sidebar or lake is touched."""
    settings = access.settings(secrets(), os.environ)
    decision = access.decide(settings, st.user.to_dict() if settings.sign_in else {})
    if decision.shows_data:
        return decision
    contrast()
    st.title("gbmmet")
    st.caption("GBM vs solitary brain metastasis: the model against radiologists.")
    if decision.kind == access.SIGN_IN:
        st.markdown(decision.message)
        if st.button("Sign in", key="sign-in", type="primary", icon=":material/login:"):
            st.login()
    elif decision.kind == access.REFUSED:
        st.error(decision.message, icon=":material/block:")
        if st.button("Sign out", key="sign-out", icon=":material/logout:"):
            st.logout()
    else:
        st.error(decision.message, icon=":material/error:")
    st.stop()


def account(ctx: Context, decision: access.Decision) -> None:
    """The sidebar's word on who is looking: signed in as whom, with which sites, and a sign-out
    button; without sign-in, that the dashboard is for this machine only."""
    if decision.kind == access.ALLOWED:
        sites = ", ".join(ctx.allowed) if ctx.allowed else "none of this lake's"
        st.sidebar.caption(f"Signed in as `{decision.user}` · sites: {sites}")
        if st.sidebar.button("Sign out", key="sign-out", icon=":material/logout:"):
            st.logout()
        return
    address = st.get_option("server.address")
    if address and not access.is_loopback(address):
        st.sidebar.warning(f"Served on {address} without sign-in: whoever reaches it sees every site. Configure "
                           "sign-in (`[auth]` in secrets.toml) or serve on 127.0.0.1.", icon=":material/warning:")
    else:
        st.sidebar.caption("No sign-in configured: local only, served on 127.0.0.1 (this machine).")


def log_patient_view(ctx: Context, patient_id: str, site: str | None, page: str) -> None:
    """Record in the lake's access log (``access_log``) that this viewer was shown
    ``patient_id``: once per patient shown, not on every rerun of the same patient's page (a
    slider moved). The dashboard's only write; on a lake it cannot write to, a warning, and the
    page goes on."""
    key = (ctx.lake, ctx.run, patient_id, page)
    if st.session_state.get(VIEWED_KEY) == key:
        return
    st.session_state[VIEWED_KEY] = key
    row = access.log_row(ctx.user, datetime.now(UTC), page, patient_id, site, ctx.run)
    try:
        Lake(ctx.src.uri).append(C.TABLE_ACCESS_LOG, pa.Table.from_pylist([row], schema=SCHEMAS[C.TABLE_ACCESS_LOG]))
    except (LakeError, OSError) as exc:
        st.warning(f"This view could not be recorded in the lake's access log: {exc}. The lake may be read-only "
                   "for the dashboard; tell whoever runs it.", icon=":material/warning:")


def forget_patient_view() -> None:
    """A page other than the patient's ran: the next patient shown is recorded again."""
    st.session_state.pop(VIEWED_KEY, None)


def lake_hint(ctx: Context) -> str:
    return f"`gbmmet run --preset demo --lake {ctx.lake}`"


def require(ctx: Context, *, patients: bool = True, run: bool = False, evaluated: bool = False) -> None:
    """Stop the page with a message saying what is missing and which command makes it."""
    if ctx.src is None:
        st.info(f"There is no lake at `{ctx.lake}`. Build one with {lake_hint(ctx)} (the synthetic demo, "
                "about 10 minutes), or open yours: `gbmmet dashboard --lake PATH`.", icon=":material/info:")
        st.stop()
    if patients and ctx.limited and not ctx.allowed:
        st.info(f"The lake at `{ctx.lake}` has no patients at the sites you may see, `{ctx.user}`.",
                icon=":material/info:")
        st.stop()
    if patients and ctx.n_patients == 0:
        st.info(f"The lake at `{ctx.lake}` has no patients yet. Preprocess a cohort into it "
                f"(`gbmmet preprocess --manifest manifest.csv --lake {ctx.lake}`), or build the demo with "
                f"{lake_hint(ctx)}.", icon=":material/info:")
        st.stop()
    if (run or evaluated) and ctx.run is None:
        if ctx.requested_run and ctx.requested_run not in ctx.runs:
            st.error(f"There is no finished training run `{ctx.requested_run}` in this lake. "
                     + (f"Its runs: {', '.join(f'`{r}`' for r in ctx.runs)}; choose one in the sidebar."
                        if ctx.runs else "It has no finished training run."), icon=":material/error:")
        elif not ctx.runs:
            st.info("This lake has no finished training run yet: train one with "
                    f"`gbmmet train --lake {ctx.lake} --run NAME`.", icon=":material/info:")
        else:
            st.info("Choose a run in the sidebar.", icon=":material/info:")
        st.stop()
    if evaluated and not ctx.evaluated:
        st.info(f"Run `{ctx.run}` has no evaluation yet: `gbmmet evaluate --lake {ctx.lake} --run {ctx.run}` "
                "writes its predictions, metrics and maps.", icon=":material/info:")
        st.stop()
    if not ctx.cohorts or not ctx.sites:
        st.info("Choose at least one cohort and one site in the sidebar.", icon=":material/info:")
        st.stop()


def evaluated_patients(ctx: Context, *, notes: bool = True) -> pd.DataFrame:
    """The run's evaluated patients of the chosen cohorts and sites (``data.patient_predictions``),
    after the notes on what the site filter leaves out (``site_notes``, unless ``notes`` is
    false); stops the page with a message where there are none."""
    if notes:
        site_notes(ctx)
    pats = data.patient_predictions(ctx.src, ctx.run, ctx.cohorts, ctx.sites)
    if pats.empty:
        st.info("No evaluated patients in the chosen cohorts and sites.", icon=":material/info:")
        st.stop()
    return pats


# -- the sidebar's filters ----------------------------------------------------------------------
def show_in_sidebar(cohorts: tuple[str, ...] = (), sites: tuple[str, ...] = ()) -> None:
    """Add cohorts and sites to the sidebar's choices (a button's callback: it runs before the
    sidebar is drawn again)."""
    st.session_state[COHORTS_KEY] = names.in_cohort_order([*st.session_state.get(COHORTS_KEY, ()), *cohorts])
    st.session_state[SITES_KEY] = sorted({*st.session_state.get(SITES_KEY, ()), *sites})


def visible_patients(ctx: Context) -> pd.DataFrame:
    """The lake's patients (``data.patients``) at the sites this viewer may see."""
    pats = data.patients(ctx.src)
    return pats[pats["site"].isin(ctx.allowed)] if ctx.limited else pats


def cohort_sites(ctx: Context) -> dict[str, tuple[str, ...]]:
    """Each cohort's sites this viewer may see (all of them, whatever the sidebar's filter), from
    the lake's patients."""
    pats = visible_patients(ctx)
    return {c: tuple(sorted(g["site"].unique())) for c, g in pats.groupby("split")}


def every_cohort_site(ctx: Context) -> dict[str, set[str]]:
    """Each cohort's sites, those this viewer may not see included: its patients' and, for the
    run, its patient flow's (patients who failed preprocessing count in a cohort's stored metrics
    too)."""
    out: dict[str, set[str]] = {}
    for c, g in data.patients(ctx.src).groupby("split"):
        out.setdefault(c, set()).update(g["site"].dropna())
    if ctx.run:
        for c, g in data.patient_flow(ctx.src, ctx.run).groupby("cohort"):
            out.setdefault(c, set()).update(g["site"].dropna())
    return out


def stored_cohorts(ctx: Context, cohorts) -> tuple[str, ...]:
    """Of ``cohorts``, those whose stored cohort-level numbers (metrics, differences, calibration,
    the summary: each over all the cohort's patients) this viewer may see: every one without a
    site limit; else those all of whose sites the viewer may see (``access.whole_cohorts``)."""
    cohorts = tuple(cohorts)
    if not ctx.limited:
        return cohorts
    return access.whole_cohorts(cohorts, every_cohort_site(ctx), ctx.allowed)


def stored_note(ctx: Context, cohorts) -> list[str]:
    """Say which of ``cohorts`` have stored numbers this viewer may not see (``stored_cohorts``):
    those with patients at the viewer's sites (a cohort with none is simply not theirs). Returns
    the cohorts named."""
    mine = cohort_sites(ctx)
    hidden = [c for c in cohorts if c not in stored_cohorts(ctx, cohorts) and mine.get(c)]
    if hidden:
        st.info(f"The stored metrics of the {', '.join(names.cohort_name(c) for c in hidden)} "
                f"cohort{'s' if len(hidden) > 1 else ''} are over patients of sites you may not see as well as "
                "yours, so they are not shown. Your sites' own numbers are computed from their patients: ROC, "
                "and the per-site rows of Model vs readers.", icon=":material/lock:")
    return hidden


def filter_is_set(ctx: Context) -> bool:
    """Whether the site filter (or the viewer's site limit) leaves out a site of the lake."""
    return set(ctx.sites) != set(data.patients(ctx.src)["site"])


def site_notes(ctx: Context) -> None:
    """Say what the site filter leaves out. Metrics are stored per cohort, over all of its
    patients; a cohort is usually one site. A chosen cohort none of whose sites is chosen is not
    shown (a note and a button that adds its sites); one whose sites are chosen in part keeps its
    stored rows, and the pages add rows computed from the chosen sites' patients."""
    sites = cohort_sites(ctx)
    every = every_cohort_site(ctx) if ctx.limited else {}
    chosen = set(ctx.sites)
    for cohort in ctx.cohorts:
        own = sites.get(cohort, ())
        if not own:
            continue
        name, kept = names.cohort_name(cohort), [s for s in own if s in chosen]
        left = [s for s in own if s not in chosen]
        if kept and every.get(cohort, set()) - set(own):  # sites this viewer may not see: never named
            st.caption(f"The {name} cohort spans {', '.join(own)} and sites you may not see; the site filter keeps "
                       f"{', '.join(kept)}. The numbers computed here are over the chosen sites' patients only.")
            continue
        if not kept:
            c1, c2 = st.columns([5, 1], vertical_alignment="center")
            c1.info(f"The {name} cohort ({', '.join(own)}) is not shown: the sidebar's site filter leaves out "
                    f"{', '.join(left)}.", icon=":material/filter_alt:")
            c2.button(f"Show {', '.join(left)}", key=f"show-sites-{cohort}", on_click=show_in_sidebar,
                      kwargs={"sites": tuple(left)})
        elif left:
            st.caption(f"The {name} cohort spans {', '.join(own)}; the site filter keeps {', '.join(kept)}. Its "
                       "stored metrics (with bootstrap CIs) are over all its sites; the per-site rows are over the "
                       "chosen sites' patients only.")


@st.cache_resource(show_spinner=False)
def page_icon():
    """The browser tab's icon, drawn here (a PIL image Streamlit serves itself): an emoji needs an
    emoji font on the viewer's machine, a Material icon is fetched from Google's font server."""
    from PIL import Image, ImageDraw

    img = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    draw = ImageDraw.Draw(img)
    draw.ellipse((2, 2, 62, 62), fill=charts.OKABE_ITO["blue"])
    draw.ellipse((18, 18, 46, 46), outline="white", width=6)  # a ring: the enhancing rim
    draw.ellipse((28, 28, 36, 36), fill=charts.OKABE_ITO["orange"])
    return img


# Streamlit draws captions at 60 % opacity: 3.9:1 against white, under WCAG AA's 4.5:1. At 80 %: 7:1.
CONTRAST_CSS = '<style>[data-testid="stCaptionContainer"] { opacity: 0.8; }</style>'


def contrast() -> None:
    """Captions dark enough to read (``CONTRAST_CSS``; a style element takes no room on the page)."""
    st.html(CONTRAST_CSS)


def glossary() -> None:
    """The glossary, in the sidebar of every page."""
    with st.sidebar.expander("Glossary", icon=":material/menu_book:"):
        st.markdown("\n\n".join(f"**{term}**: {md(text)}" for term, text in names.GLOSSARY))


# The CI choices, the default first. The paper's subsampling is a labelled reproduction: it under-covers.
CI_NAMES = {m: names.ci_name(m) for m in names.CI_CHOICES}


def ci_name(method: str) -> str:
    return names.ci_name(method)


def subsample_note() -> str:
    """The note that goes wherever paper_subsample90 is shown: the same text as the printed report
    (``pipelines.report.subsample_note``), from the same two constants."""
    from gbmmet.stats import SUBSAMPLE_COVERAGE_NOTE

    return SUBSAMPLE_NOTE.format(coverage=SUBSAMPLE_COVERAGE_NOTE)


def estimate_cell(value, low, high, ci_method: str | None, ci_choice: str | None) -> str:
    """``format_estimate`` with the marks of its interval: the dagger where percentile stood in
    for BCa, the section sign where the paper's subsampling made it."""
    text = format_estimate(value, low, high)
    if text and ci_method != ci_choice:
        text += FALLBACK_MARK
    if text and ci_method == C.CI_SUBSAMPLE:
        text += SUBSAMPLE_MARK
    return text


def ci_notes(long: pd.DataFrame) -> None:
    """The notes for the marks ``estimate_cell`` put in a table of ``metrics`` rows."""
    if (long["ci_method"] != long["ci_choice"]).any():
        st.caption(FALLBACK_NOTE)
    if (long["ci_method"] == C.CI_SUBSAMPLE).any():
        st.caption(subsample_note())


def md(text: str) -> str:
    """Plain text for a markdown element: a leading ``*`` would start a list, a pair would italicise."""
    return text.replace("*", "\\*")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-").lower()


def file_name(ctx: Context, name: str, ext: str) -> str:
    parts = [ctx.run, name] if ctx.run else [name]
    return _slug("-".join(parts)) + f".{ext}"


def _cell(value):
    """A static table's cell: its markdown marks escaped, except a page's own colour directives."""
    if not isinstance(value, str) or value.startswith(":"):
        return value
    return value.replace("*", "\\*").replace("`", "\\`").replace("~", "\\~").replace("__", "\\_\\_")


def table(ctx: Context, df: pd.DataFrame, name: str, *, download: pd.DataFrame | None = None,
          static: bool | None = None, alt: str | None = None, **kwargs) -> None:
    """A table and a button that downloads it (or ``download``, e.g. its numbers unformatted) as CSV.
    Up to ``STATIC_ROWS`` rows (or ``static``): drawn whole, cells wrapping to the page's width, so
    no column is cut off at any window width; longer: a scrolling table."""
    if static is None:
        static = len(df) <= STATIC_ROWS
    if static:
        st.table(df.apply(lambda col: col.map(_cell)) if len(df) else df, hide_index=True, border="horizontal",
                 alt=alt or name.replace("-", " "))
    else:
        kwargs.setdefault("height", "auto")
        st.dataframe(df, hide_index=True, width="stretch", **kwargs)
    out = df if download is None else download
    st.download_button("Download CSV", out.to_csv(index=False).encode(), file_name=file_name(ctx, name, "csv"),
                       mime="text/csv", key=f"csv-{name}", on_click="ignore", icon=":material/download:")


def chart(ctx: Context, ch, name: str) -> None:
    """A chart and a button that downloads the same chart as PNG (rendered when clicked), both in
    the dashboard's text style (``charts.style``)."""
    ch = charts.style(ch)
    st.altair_chart(ch, width="content")
    st.download_button("Download PNG", lambda: charts.png(ch), file_name=file_name(ctx, name, "png"),
                       mime="image/png", key=f"png-{name}", on_click="ignore", icon=":material/image:")
