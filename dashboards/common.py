"""What every page shares: the sidebar's choices (lake, run, cohorts, sites), the guards that
turn an empty lake or a missing run into a message, what the site filter leaves out, the glossary,
and tables / charts with their downloads."""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass

import pandas as pd
import streamlit as st

from dashboards import charts, data, names
from gbmmet import constants as C
from storage.queries import (
    FALLBACK_MARK,
    FALLBACK_NOTE,
    SUBSAMPLE_MARK,
    SUBSAMPLE_NOTE,
    format_estimate,
)

LAKE_ENV = "GBMMET_LAKE"
RUN_ENV = "GBMMET_RUN"
CTX_KEY = "_gbmmet_ctx"
COHORTS_KEY = "sidebar-cohorts"  # the sidebar's widgets, which a page's "show it" button extends
SITES_KEY = "sidebar-sites"
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
    sites: tuple[str, ...]
    n_patients: int


def context() -> Context:
    """The choices ``dashboards/app.py`` made for this run of the page."""
    return st.session_state[CTX_KEY]


def lake_hint(ctx: Context) -> str:
    return f"`gbmmet run --preset demo --lake {ctx.lake}`"


def require(ctx: Context, *, patients: bool = True, run: bool = False, evaluated: bool = False) -> None:
    """Stop the page with a message saying what is missing and which command makes it."""
    if ctx.src is None:
        st.info(f"There is no lake at `{ctx.lake}`. Build one with {lake_hint(ctx)} (the synthetic demo, "
                "about 10 minutes), or open yours: `gbmmet dashboard --lake PATH`.", icon=":material/info:")
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


def cohort_sites(ctx: Context) -> dict[str, tuple[str, ...]]:
    """Each cohort's sites (all of them, whatever the filter), from the lake's patients."""
    pats = data.patients(ctx.src)
    return {c: tuple(sorted(g["site"].unique())) for c, g in pats.groupby("split")}


def filter_is_set(ctx: Context) -> bool:
    """Whether the site filter leaves out a site of the lake."""
    return set(ctx.sites) != set(data.patients(ctx.src)["site"])


def site_notes(ctx: Context) -> None:
    """Say what the site filter leaves out. Metrics are stored per cohort, over all of its
    patients; a cohort is usually one site. A chosen cohort none of whose sites is chosen is not
    shown (a note and a button that adds its sites); one whose sites are chosen in part keeps its
    stored rows, and the pages add rows computed from the chosen sites' patients."""
    sites = cohort_sites(ctx)
    chosen = set(ctx.sites)
    for cohort in ctx.cohorts:
        own = sites.get(cohort, ())
        if not own:
            continue
        name, kept = names.cohort_name(cohort), [s for s in own if s in chosen]
        left = [s for s in own if s not in chosen]
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
