"""Benchmark of the dashboard on the demo lake: time to the first full render of each page.

Side by side, in one run, for every page:
- the server's script run under Streamlit's AppTest: cold (every cache cleared just before) and
  warm (median of 5);
- a real headless Chromium against `gbmmet dashboard`: the first visit after the server started
  (cold: for Overview the server's first page, for the others the lake is already loaded) and
  later visits (warm, median of 3), from navigation to the page's own content drawn
  (charts rendered, images loaded) and Streamlit idle.
Target: Overview under 2 s warm, in the browser.

    .venv/bin/python bench/dashboard.py [--lake lake] [--run demo]

Needs the demo lake (`make demo`) and Debian's Chromium (`apt-get install -y chromium`).
Writes bench/out/dashboard.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

from _common import ROOT, save

PAGES = (  # (file, url path, the element that says the page is drawn)
    ("summary.py", "", '[data-testid="stGraphVizChart"] svg'),  # the default page
    ("overview.py", "overview", '[data-testid="stMetric"]'),
    ("readers.py", "readers", ".vega-embed canvas, .vega-embed svg"),
    ("roc.py", "roc", ".vega-embed canvas, .vega-embed svg"),
    ("calibration.py", "calibration", ".vega-embed canvas, .vega-embed svg"),
    ("subgroups.py", "subgroups", ".vega-embed canvas, .vega-embed svg"),
    ("patient.py", "patient", '[data-testid="stImage"] img'),
    ("training.py", "training", ".vega-embed canvas, .vega-embed svg"),
)
TARGET_S = 2.0


def server_side(lake: str, run: str) -> dict[str, dict[str, float]]:
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GBMMET_LAKE"] = lake
    out = {}
    for page, _, _ in PAGES:
        times = []
        for k in range(6):
            at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
            at.query_params["run"] = run
            at.run()  # AppTest starts on the default page; the first one timed is cold:
            if k == 0:  # nothing cached (no lake state, connection or table) before it runs
                st.cache_data.clear()
                st.cache_resource.clear()
            t = time.perf_counter()
            at.switch_page(f"views/{page}").run()
            times.append(time.perf_counter() - t)
            if at.exception:
                raise SystemExit(f"{page}: {at.exception[0].value}")
        out[page] = {"cold_s": times[0], "warm_s": statistics.median(times[1:])}
    return out


def in_browser(lake: str, run: str) -> dict[str, dict[str, float]]:
    from dashboards.headless import browser, served

    out = {}
    with served(lake, run=run) as url, browser(1500, 2400) as page:
        for name, path, selector in PAGES:
            times = []
            for _ in range(4):
                t = time.perf_counter()
                page.goto(f"{url}/{path}?run={run}", timeout=60000)
                page.wait_for_selector(selector, state="visible", timeout=60000)
                page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=60000)
                page.wait_for_function("() => [...document.images].every(i => i.complete)", timeout=60000)
                times.append(time.perf_counter() - t)
            out[name] = {"cold_s": times[0], "warm_s": statistics.median(times[1:])}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", default=str(ROOT / "lake"))
    ap.add_argument("--run", default="demo")
    args = ap.parse_args()
    if not os.path.isdir(args.lake):
        sys.exit(f"no lake at {args.lake}: run `make demo` first (or pass --lake)")
    server = server_side(args.lake, args.run)
    browser = in_browser(args.lake, args.run)
    print(f"dashboard, lake {args.lake}, run {args.run}: seconds to the first full render")
    print(f"{'page':<14}{'server cold':>12}{'server warm':>12}{'cold/warm':>10}{'browser cold':>13}"
          f"{'browser warm':>13}{'cold/warm':>10}")
    for page, _, _ in PAGES:
        s, b = server[page], browser[page]
        print(f"{page:<14}{s['cold_s']:>12.2f}{s['warm_s']:>12.2f}{s['cold_s'] / s['warm_s']:>9.1f}x"
              f"{b['cold_s']:>13.2f}{b['warm_s']:>13.2f}{b['cold_s'] / b['warm_s']:>9.1f}x")
    ok = browser["overview.py"]["warm_s"] < TARGET_S
    print(f"Overview, warm, in the browser: {browser['overview.py']['warm_s']:.2f} s (target < {TARGET_S:.0f} s): "
          + ("met" if ok else "NOT met"))
    path = save("dashboard", {"lake": args.lake, "run": args.run, "server": server, "browser": browser,
                              "target_s": TARGET_S, "overview_warm_met": ok})
    print(f"written {path}")


if __name__ == "__main__":
    main()
