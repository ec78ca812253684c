"""Benchmark of the dashboard: time to the first full render of each page, and under load.

Side by side, in one run:

- pages: for every page, the server's script run under Streamlit's AppTest, cold (every cache
  cleared just before) and warm (median of 5); and a real headless Chromium against `gbmmet
  dashboard`: the first visit after the server started (cold: for Summary the server's first
  page, for the others the lake is already loaded) and later visits (warm, median of 3), from
  navigation to the page's own content drawn (charts rendered, images loaded) and Streamlit idle.
  Target: Overview under 2 s warm, in the browser.
- load: SESSIONS browser sessions at once against one `gbmmet dashboard` on loopback (one
  Chromium, one context: the app's scripts cached as in a returning user's browser; a page, hence a
  Streamlit session, each), opening one after another over --ramp seconds, then each switching
  pages (the sidebar's links) and filters (the sidebar's cohorts and sites, a page's CI choice, the
  patient), reading each page about --think seconds, for SECONDS, then stopping by itself. Per
  render, the time from the click to the page fully drawn: the server's script run finished (its
  ``script_finished`` on the page's websocket: "the server's run", as the browser sees it) and the
  page shows its title and own content (charts drawn, images loaded), nothing stale, Streamlit
  idle. Errors: a Streamlit exception on the page, or a page not drawn within --render-timeout
  (must be 0; after one the page is opened again). The server's RSS before, at its peak, after;
  CPU seconds of the server and of the browser beside the wall time (on a small machine the
  browsers take most of it: render times there are the machine's, not only the server's). The
  server logs every query it runs (``GBMMET_DASHBOARD_QUERY_LOG``): time waiting for a DuckDB
  connection against time holding it, and whether any query repeated one already run. The load
  runs once per pool size in --connections (``GBMMET_DASHBOARD_CONNECTIONS``; 1 is one shared
  connection, one query at a time, as before the pool), each on a freshly started server.

    .venv/bin/python bench/dashboard.py [--lake lake] [--run demo] [--only pages|load]
                                        [--sessions 20] [--seconds 60] [--connections 1,4]
                                        [--ramp 10] [--think 1] [--render-timeout 30]

The lake: --lake; else ./lake (the demo: `make demo`) where it exists, else the tiny synthetic
cohort through `gbmmet run --preset tiny`, built once (about 2.5 minutes) and kept under
bench/out/dashboard/. About 4 minutes on 2 cores by default (pages 1.1, load 2 x 1.3).
Needs Debian's Chromium (`apt-get install -y chromium`). Writes bench/out/dashboard.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, save

PAGES = (  # (file, url path, title, the element that says the page is drawn)
    ("summary.py", "", "Summary", '[data-testid="stGraphVizChart"] svg'),  # the default page
    ("overview.py", "overview", "Overview", '[data-testid="stMetric"]'),
    ("readers.py", "readers", "Model vs readers", ".vega-embed canvas, .vega-embed svg"),
    ("roc.py", "roc", "ROC", ".vega-embed canvas, .vega-embed svg"),
    ("calibration.py", "calibration", "Calibration", ".vega-embed canvas, .vega-embed svg"),
    ("subgroups.py", "subgroups", "Subgroups", ".vega-embed canvas, .vega-embed svg"),
    ("patient.py", "patient", "Patient viewer", '[data-testid="stImage"] img'),
    ("training.py", "training", "Training", ".vega-embed canvas, .vega-embed svg"),
)
TARGET_S = 2.0
OUT = ROOT / "bench" / "out" / "dashboard"
TINY_LAKE, TINY_RUN = OUT / "lake", "tiny"
CONNECTIONS_ENV = "GBMMET_DASHBOARD_CONNECTIONS"
QUERY_LOG_ENV = "GBMMET_DASHBOARD_QUERY_LOG"


def progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def tiny_lake() -> Path:
    """The tiny synthetic cohort through the whole pipeline (`gbmmet run --preset tiny`), once."""
    if (TINY_LAKE / "_built").exists():
        return TINY_LAKE
    progress(f"building the tiny lake under {OUT} (once, about 2.5 minutes)")
    OUT.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--preset", "tiny", "--lake", str(TINY_LAKE),
                    "--data", str(OUT / "data"), "--epochs", "3", "--resamples", "200"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    (TINY_LAKE / "_built").touch()
    return TINY_LAKE


# -- one page at a time -------------------------------------------------------------------------
def server_side(lake: str, run: str) -> dict[str, dict[str, float]]:
    import logging

    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GBMMET_LAKE"] = lake
    out = {}
    for page, _, _, _ in PAGES:
        times = []
        for k in range(6):
            at = AppTest.from_file(str(ROOT / "dashboards" / "app.py"), default_timeout=120)
            at.query_params["run"] = run
            at.run()  # AppTest starts on the default page; the first one timed is cold:
            for name in list(logging.root.manager.loggerDict):  # no "missing ScriptRunContext" at each clear
                if name.startswith("streamlit"):
                    logging.getLogger(name).setLevel(logging.ERROR)
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
        for name, path, _, selector in PAGES:
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


# -- under load ---------------------------------------------------------------------------------
# The page is fully drawn: Streamlit idle, nothing stale, the page's title and own element there,
# every chart drawn and every image loaded. "error" where Streamlit shows an exception.
RENDERED_JS = """([title, selector]) => {
  if (document.querySelector('[data-testid="stException"]')) return 'error';
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app || app.getAttribute('data-test-script-state') !== 'notRunning') return false;
  if (document.querySelector('[data-testid="stStatusWidget"], [data-stale="true"], [data-testid="stSkeleton"]')) return false;
  if (![...document.querySelectorAll('h1')].some(h => h.textContent.trim() === title)) return false;
  if (!document.querySelector(selector)) return false;
  if (![...document.querySelectorAll('.vega-embed')].every(e => e.querySelector('canvas, svg'))) return false;
  if (![...document.images].every(i => i.complete)) return false;
  return 'ok';
}"""
EXCEPTION_JS = """() => { const e = document.querySelector('[data-testid="stException"]');
  return e ? e.textContent.slice(0, 300) : ''; }"""
# Why a page is not drawn (for the error's text): the first condition of RENDERED_JS that fails.
WHY_JS = """([title, selector]) => {
  const app = document.querySelector('[data-testid="stApp"]');
  if (!app) return 'no app';
  const state = app.getAttribute('data-test-script-state');
  if (state !== 'notRunning') return 'script ' + state + ', connection ' + app.getAttribute('data-test-connection-state');
  for (const s of ['[data-testid="stStatusWidget"]', '[data-stale="true"]', '[data-testid="stSkeleton"]'])
    if (document.querySelector(s)) return 'still there: ' + s;
  const h1 = [...document.querySelectorAll('h1')].map(h => h.textContent.trim());
  if (!h1.includes(title)) return 'titles ' + JSON.stringify(h1);
  if (!document.querySelector(selector)) return 'no ' + selector + '; the page says: '
    + (document.querySelector('[data-testid="stMain"]') || document.body).innerText.slice(0, 300);
  const charts = [...document.querySelectorAll('.vega-embed')];
  if (!charts.every(e => e.querySelector('canvas, svg'))) return 'charts not drawn: ' + charts.filter(e => !e.querySelector('canvas, svg')).length;
  return 'images loading: ' + [...document.images].filter(i => !i.complete).map(i => i.src.slice(-40)).join(' ');
}"""


class User:
    """One browser session: its page, the script runs its server finished, what it timed."""

    def __init__(self, k: int, context, page, url: str, run: str, sites: tuple[str, ...], seed: int,
                 timeout_s: float, deadline: float):
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        self.k, self.context, self.page, self.url, self.run = k, context, page, url, run
        self.other_site = sites[-1] if len(sites) > 1 else None
        self.rng = random.Random(seed * 1000 + k)
        self.timeout_s, self.deadline = timeout_s, deadline
        page.set_default_timeout(timeout_s * 1000)  # every click and wait bounded too
        self.finished, self.waiter = 0, None
        self.renders: list[dict] = []
        self.current = PAGES[0]
        self._msg, self._early = ForwardMsg, ForwardMsg.ScriptFinishedStatus.Value("FINISHED_EARLY_FOR_RERUN")
        page.on("websocket", lambda ws: ws.on("framereceived", self._frame))

    def _frame(self, payload) -> None:
        if isinstance(payload, str):
            return
        msg = self._msg()
        msg.ParseFromString(payload)
        if msg.WhichOneof("type") == "script_finished" and msg.script_finished != self._early:
            self.finished += 1
            if self.waiter is not None and not self.waiter.done() and self.finished >= self.waiter.want:
                self.waiter.set_result(time.perf_counter())

    async def timed(self, kind: str, what: str, act, target, retry: bool = True) -> None:
        """Do ``act``; time until the server finished a script run after it (``server_s``) and
        until ``target`` (a page of PAGES) is fully drawn (``s``), all within ``timeout_s``. An
        exception shown, or nothing drawn in time, is an error; after one, the page is opened again
        from its address (once, and only before the deadline)."""
        self.waiter = asyncio.get_running_loop().create_future()
        self.waiter.want = self.finished + 1
        t = time.perf_counter()
        left = lambda: max(0.001, t + self.timeout_s - time.perf_counter())  # noqa: E731
        error = server_s = None
        try:
            await asyncio.wait_for(act(), left())
            await asyncio.wait_for(asyncio.shield(self.waiter), left())
            server_s = self.waiter.result() - t
            state = await self.page.wait_for_function(RENDERED_JS, arg=[target[2], target[3]], polling=50,
                                                      timeout=left() * 1000)
            if await state.json_value() == "error":
                error = "exception: " + await self.page.evaluate(EXCEPTION_JS)
        except Exception as exc:  # noqa: BLE001  (a timeout, or the page gone: counted, not raised)
            error = f"{type(exc).__name__}: not drawn within {self.timeout_s:.0f} s"
            why = "the server's script run not finished" if not self.waiter.done() else None
            try:
                why = why or await asyncio.wait_for(self.page.evaluate(WHY_JS, [target[2], target[3]]), 10)
            except Exception as exc2:  # noqa: BLE001
                why = f"page gone ({type(exc2).__name__})"
            error += f"; {why}"
        self.renders.append({"session": self.k, "kind": kind, "what": what, "page": target[0],
                             "s": time.perf_counter() - t, "server_s": server_s, "error": error})
        self.current = target
        if error and retry and time.perf_counter() < self.deadline:  # start again from the page's address
            await self.timed("open", "reload", lambda: self.page.goto(f"{self.url}/{target[1]}?run={self.run}"),
                             target, retry=False)

    async def open(self) -> None:
        await self.timed("open", "first visit", lambda: self.page.goto(f"{self.url}/?run={self.run}"), PAGES[0])

    async def step(self) -> None:
        page, sidebar = self.page, self.page.get_by_test_id("stSidebar")
        if self.rng.random() < 0.5:  # another page, by the sidebar's link
            target = self.rng.choice([p for p in PAGES if p != self.current])
            await self.timed("page", target[0], lambda: sidebar.get_by_role("link", name=target[2], exact=True).click(),
                             target)
            return
        choices = ["cohort"] + (["site"] if self.other_site else [])
        if self.current[0] in ("summary.py", "readers.py"):
            choices.append("ci")
        if self.current[0] == "patient.py":
            choices.append("patient")
        choice = self.rng.choice(choices)
        if choice == "cohort":  # the validation cohort in or out
            act = lambda: self.toggle(sidebar, "Cohorts", "validation")  # noqa: E731
        elif choice == "site":  # the external site in or out (the internal test always stays)
            act = lambda: self.toggle(sidebar, "Sites", self.other_site)  # noqa: E731
        elif choice == "ci":  # another CI method on the page's radio
            options = page.get_by_test_id("stMain").locator('[data-testid="stRadioGroup"] > div:not([data-selected="true"])')
            n = await options.count()
            act = lambda: options.nth(self.rng.randrange(n)).click()  # noqa: E731
        else:  # another patient
            async def act():
                await page.get_by_role("combobox", name="Patient (pseudonymised id)").click()
                options = page.get_by_role("option")
                await options.first.wait_for()
                await options.nth(self.rng.randrange(await options.count())).click()
        await self.timed("filter", choice, act, self.current)

    async def toggle(self, sidebar, label: str, option: str) -> None:
        remove = sidebar.get_by_role("button", name=f"Remove {option}", exact=True)
        if await remove.count():
            await remove.click()
            return
        await sidebar.get_by_role("combobox", name=label).click()
        await self.page.get_by_role("option", name=option, exact=True).click()
        await self.page.keyboard.press("Escape")  # close the list, as a user would


def _server(port: int):
    import psutil

    for p in psutil.Process().children(recursive=True):
        try:
            if str(port) in p.cmdline():
                return p
        except psutil.Error:
            continue
    raise RuntimeError(f"no dashboard process serving port {port}")


def _cpu(procs) -> float:
    import psutil

    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))]


def query_stats(path: Path) -> dict:
    """What the server's query log says: queries run, repeated, and the time waiting for a
    connection against the time holding it."""
    lines = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    rows, made = [r for r in lines if not r.get("made")], [r for r in lines if r.get("made")]
    waits, holds = [r["wait_s"] for r in rows], [r["hold_s"] for r in rows]
    out = {"queries": len(rows), "distinct": len({r["what"] for r in rows}),
           "waited_over_10ms": sum(w > 0.01 for w in waits),
           "connections_made": len(made), "make_s": sum(r["make_s"] for r in made)}
    for name, v in (("wait", waits), ("hold", holds)):
        out[name] = {"p50_s": _pct(v, 50), "p95_s": _pct(v, 95), "max_s": max(v, default=0.0), "sum_s": sum(v)}
    longest = sorted(rows, key=lambda r: -r["hold_s"])[:3]
    out["longest_holds"] = [{"what": r["what"][:80], "hold_s": r["hold_s"]} for r in longest]
    return out


async def _load(url: str, run: str, sites: tuple[str, ...], server, sessions: int, seconds: float,
                timeout_s: float, seed: int, ramp_s: float, think_s: float) -> dict:
    import psutil
    from playwright.async_api import async_playwright

    from dashboards.headless import CHROMIUM

    rss = [server.memory_info().rss]
    rss_before, server_cpu0 = rss[0], _cpu([server])
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        # one browser, one context (a cache of the app's scripts shared, as a user's own browser
        # would have after the first visit), a page each: each page is its own Streamlit session
        context = await browser.new_context(viewport={"width": 1280, "height": 900})
        users, deadline = [], time.perf_counter() + seconds + 3600  # set below, once every session is made
        for k in range(sessions):
            users.append(User(k, context, await context.new_page(), url, run, sites, seed, timeout_s, deadline))
        me = psutil.Process()
        others = [p for p in me.children(recursive=True) if p.pid != server.pid]  # driver and Chromium
        others_cpu0, my_cpu0 = _cpu(others), time.process_time()
        wall0 = time.perf_counter()
        deadline = wall0 + seconds
        for u in users:
            u.deadline = deadline
        done = asyncio.Event()

        async def sample():  # the server's memory, twice a second, until the sessions stopped
            while not done.is_set():
                rss.append(server.memory_info().rss)
                try:
                    await asyncio.wait_for(done.wait(), 0.5)
                except TimeoutError:
                    pass

        async def user_loop(u: User) -> None:
            await asyncio.sleep(u.k * ramp_s / max(1, sessions - 1))  # arriving one after another
            await u.open()
            while time.perf_counter() < deadline:  # stops by itself: each step is bounded by timeout_s
                await asyncio.sleep(u.rng.uniform(0.5, 1.5) * think_s)  # reading the page
                await u.step()

        sampler = asyncio.create_task(sample())
        # bounded whatever happens: a step is at most a click, a wait and one reload, each timeout_s
        loops = [asyncio.create_task(user_loop(u)) for u in users]
        _, late = await asyncio.wait(loops, timeout=seconds + ramp_s + 1.5 * think_s + 2 * timeout_s + 30)
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for task in loops:  # an exception of the bench itself (not of a page) is raised here
            if task in late:
                continue
            task.result()
        wall = time.perf_counter() - wall0
        done.set()
        await sampler
        others = [p for p in me.children(recursive=True) if p.pid != server.pid]
        browser_cpu = _cpu(others) - others_cpu0
        bench_cpu = time.process_time() - my_cpu0
        server_cpu = _cpu([server]) - server_cpu0
        rss_after = server.memory_info().rss
        await context.close()
        await browser.close()
    renders = [r for u in users for r in u.renders]
    ok = [r["s"] for r in renders if not r["error"]]
    server_ok = [r["server_s"] for r in renders if not r["error"]]
    by_kind = {kind: {"n": len(v), "p50_s": _pct(v, 50), "p95_s": _pct(v, 95)}
               for kind in ("open", "page", "filter")
               for v in [[r["s"] for r in renders if r["kind"] == kind and not r["error"]]]}
    return {"sessions": sessions, "seconds": seconds, "wall_s": wall, "renders": len(renders),
            "errors": sum(bool(r["error"]) for r in renders) + len(late), "sessions_stuck": len(late),
            "ramp_s": ramp_s, "think_s": think_s, "timeout_s": timeout_s,
            "error_samples": [r for r in renders if r["error"]][:5],
            "p50_s": _pct(ok, 50), "p95_s": _pct(ok, 95), "max_s": max(ok, default=float("nan")),
            "server_p50_s": _pct(server_ok, 50), "server_p95_s": _pct(server_ok, 95),
            "by_kind": by_kind, "actions": {w: sum(r["what"] == w for r in renders)
                                            for w in sorted({r["what"] for r in renders})},
            "per_page_p50_s": {p[0]: _pct([r["s"] for r in renders if r["page"] == p[0]
                                                                and not r["error"]], 50) for p in PAGES},
            "rss_before_mb": rss_before / 2**20, "rss_peak_mb": max(rss) / 2**20,
            "rss_after_mb": rss_after / 2**20, "rss_closed_mb": server.memory_info().rss / 2**20,
            "server_cpu_s": server_cpu, "browser_cpu_s": browser_cpu, "bench_cpu_s": bench_cpu}


def under_load(lake: str, run: str, connections: int, sessions: int, seconds: float, timeout_s: float,
               seed: int, ramp_s: float, think_s: float) -> dict:
    from dashboards.headless import served
    from storage import catalog
    from storage.lake import Lake

    sites = tuple(r["site"] for r in catalog.query(Lake(lake), "select distinct site from patients order by site")
                  .to_pylist())
    log = OUT / f"queries-{connections}.jsonl"
    OUT.mkdir(parents=True, exist_ok=True)
    log.unlink(missing_ok=True)
    os.environ[QUERY_LOG_ENV], os.environ[CONNECTIONS_ENV] = str(log), str(connections)
    try:
        with served(lake, run=run) as url:
            server = _server(int(url.rsplit(":", 1)[1]))
            out = asyncio.run(_load(url, run, sites, server, sessions, seconds, timeout_s, seed, ramp_s, think_s))
    finally:
        del os.environ[QUERY_LOG_ENV], os.environ[CONNECTIONS_ENV]
    out["connections"] = connections
    out["queries"] = query_stats(log)
    return out


def print_load(results: list[dict]) -> None:
    first = results[0]
    print(f"\nunder load: {first['sessions']} browser sessions, each switching pages and filters for "
          f"{first['seconds']:.0f} s; side by side per DuckDB connections of the server")
    head = "".join(f"{'connections ' + str(r['connections']):>20}" for r in results)
    ratio = len(results) > 1
    print(f"{'':<38}{head}" + (f"{'first/last':>12}" if ratio else ""))

    def row(label, key, fmt="{:>20.2f}", get=None):
        vals = [get(r) if get else r[key] for r in results]
        line = f"{label:<38}" + "".join(fmt.format(v) for v in vals)
        if ratio and isinstance(vals[0], float) and min(vals[0], vals[-1]) > 1e-3:  # no ratio of nothing
            line += f"{vals[0] / vals[-1]:>11.2f}x"
        print(line)

    row("renders (errors must be 0)", None, "{:>20}", lambda r: f"{r['renders']} ({r['errors']} err)")
    row("time to full render p50 (s)", "p50_s")
    row("  p95 (s)", "p95_s")
    row("  max (s)", "max_s")
    row("  of which the server's run: p50 (s)", "server_p50_s")
    row("    p95 (s)", "server_p95_s")
    for kind in ("open", "page", "filter"):
        row(f"  {kind}: p50 / p95 (s)", None, "{:>20}",
            lambda r, k=kind: f"{r['by_kind'][k]['p50_s']:.2f} / {r['by_kind'][k]['p95_s']:.2f}")
    row("renders per second", None, get=lambda r: r["renders"] / r["wall_s"])
    row("wall (s)", "wall_s", "{:>20.1f}")
    row("CPU s: server", "server_cpu_s", "{:>20.1f}")
    row("CPU s: browser (Chromium, driver)", "browser_cpu_s", "{:>20.1f}")
    row("CPU s: this process", "bench_cpu_s", "{:>20.1f}")
    row("server RSS before (MB)", "rss_before_mb", "{:>20.0f}")
    row("  peak / after load (MB)", None, "{:>20}", lambda r: f"{r['rss_peak_mb']:.0f} / {r['rss_after_mb']:.0f}")
    row("  sessions closed (MB)", "rss_closed_mb", "{:>20.0f}")
    row("queries run (distinct)", None, "{:>20}", lambda r: f"{r['queries']['queries']} ({r['queries']['distinct']})")
    row("  waited > 10 ms for a connection", None, "{:>20}", lambda r: str(r["queries"]["waited_over_10ms"]))
    row("  connections made (s making them)", None, "{:>20}",
        lambda r: f"{r['queries']['connections_made']} ({r['queries']['make_s']:.2f})")
    for what in ("wait", "hold"):
        row(f"  {what}: p50 / p95 / max (ms)", None, "{:>20}", lambda r, w=what: "{:.0f} / {:.0f} / {:.0f}".format(
            *(1000 * r["queries"][w][k] for k in ("p50_s", "p95_s", "max_s"))))
        row(f"  {what}: total (s)", None, get=lambda r, w=what: r["queries"][w]["sum_s"])
    for r in results:
        for e in r["error_samples"]:
            print(f"  error, connections {r['connections']}, session {e['session']}, {e['kind']} {e['what']} "
                  f"on {e['page']}: {e['error']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lake", help="default: ./lake (the demo) where it exists, else the tiny lake, built once")
    ap.add_argument("--run", help="default: demo for ./lake, tiny for the tiny lake")
    ap.add_argument("--only", choices=("pages", "load"), help="one part only (default: both)")
    ap.add_argument("--sessions", type=int, default=20, help="browser sessions at once (default 20)")
    ap.add_argument("--seconds", type=float, default=60.0, help="how long each session works (default 60)")
    ap.add_argument("--connections", default="1,4",
                    help="the server's DuckDB connections, one load run each, side by side (default 1,4)")
    ap.add_argument("--ramp", type=float, default=10.0,
                    help="seconds over which the sessions open, one after another (default 10)")
    ap.add_argument("--think", type=float, default=1.0,
                    help="mean seconds a session reads a page before its next click (default 1)")
    ap.add_argument("--render-timeout", type=float, default=30.0,
                    help="a page not drawn within this many seconds is an error (default 30)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.lake:
        lake, run = args.lake, args.run or "demo"
    elif (ROOT / "lake").is_dir():
        lake, run = str(ROOT / "lake"), args.run or "demo"
    else:
        lake, run = str(tiny_lake()), args.run or TINY_RUN
    if not os.path.isdir(lake):
        sys.exit(f"no lake at {lake}: run `make demo` first (or pass --lake)")
    result = {"lake": lake, "run": run, "cpus": os.cpu_count()}
    if args.only != "load":
        wall0, cpu0 = time.perf_counter(), time.process_time()
        server = server_side(lake, run)
        browser = in_browser(lake, run)
        print(f"dashboard, lake {lake}, run {run}: seconds to the first full render "
              f"({time.perf_counter() - wall0:.0f} s wall, {time.process_time() - cpu0:.0f} s CPU in this process)")
        print(f"{'page':<14}{'server cold':>12}{'server warm':>12}{'cold/warm':>10}{'browser cold':>13}"
              f"{'browser warm':>13}{'cold/warm':>10}")
        for page, _, _, _ in PAGES:
            s, b = server[page], browser[page]
            print(f"{page:<14}{s['cold_s']:>12.2f}{s['warm_s']:>12.2f}{s['cold_s'] / s['warm_s']:>9.1f}x"
                  f"{b['cold_s']:>13.2f}{b['warm_s']:>13.2f}{b['cold_s'] / b['warm_s']:>9.1f}x")
        ok = browser["overview.py"]["warm_s"] < TARGET_S
        print(f"Overview, warm, in the browser: {browser['overview.py']['warm_s']:.2f} s (target < {TARGET_S:.0f} s): "
              + ("met" if ok else "NOT met"))
        result.update(server=server, browser=browser, target_s=TARGET_S, overview_warm_met=ok)
    if args.only != "pages":
        loads = []
        for n in (int(c) for c in args.connections.split(",")):
            progress(f"load: {args.sessions} sessions x {args.seconds:.0f} s, {n} connection(s)")
            loads.append(under_load(lake, run, n, args.sessions, args.seconds, args.render_timeout, args.seed,
                                    args.ramp, args.think))
        print_load(loads)
        result["load"] = loads
        result["load_errors"] = sum(r["errors"] for r in loads)
    path = save("dashboard", result)
    print(f"written {path}")
    if result.get("load_errors"):
        sys.exit(f"{result['load_errors']} errors under load")


if __name__ == "__main__":
    main()
