"""The dashboard in a real headless browser: ``gbmmet dashboard`` serves the small real lake on a
free loopback port, Debian's Chromium (through Playwright) opens every page at 1280 px wide, checks
what is visible against the lake, that nothing is cut off, that text is dark enough, that images
have alt text and that no request leaves the host, downloads a CSV and a PNG, and saves a screenshot
of each page under ``tests/screenshots/dashboard/`` (look at them).

Never flaky: every assertion waits for the very content it reads (Playwright's ``expect`` retries
until it holds or 30 s pass); nothing waits on time."""

from __future__ import annotations

import csv
import io
import re
import socket
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

import pytest

from dashboards.headless import CHROMIUM, browser, served
from gbmmet import constants as C
from storage import catalog
from storage.lake import Lake
from tests.dashboards.conftest import RUN

SHOTS = Path(__file__).resolve().parents[1] / "screenshots" / "dashboard"
WIDTH = 1280  # a laptop's window: nothing may be cut off at this width, sidebar open
TIMEOUT_MS = 30_000
LOCAL = {"127.0.0.1", "localhost", "::1", ""}  # "" for data: and blob: addresses

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"no {CHROMIUM}: `apt-get install -y chromium` (.ci/run installs it)")

# Everything on the page that can be wider than the main column, and what may be cut short inside.
CLIPPED_JS = """() => {
  const main = document.querySelector('[data-testid="stMainBlockContainer"]');
  const box = main.getBoundingClientRect();
  const right = box.right - parseFloat(getComputedStyle(main).paddingRight) + 1;
  const shown = e => e.offsetParent !== null && e.getClientRects().length > 0;
  const name = e => (e.dataset && e.dataset.testid) || e.className || e.tagName;
  const bad = [];
  for (const e of main.querySelectorAll('.vega-embed, [data-testid="stTable"], [data-testid="stDataFrame"], '
                                        + '[data-testid="stImage"], [data-testid="stMetric"], [data-testid="stAlert"]')) {
    if (shown(e) && e.getBoundingClientRect().right > right)
      bad.push(`${name(e)} ends at ${Math.round(e.getBoundingClientRect().right)} px, the column at ${Math.round(right)}`);
  }
  for (const e of main.querySelectorAll('[data-testid="stTable"] div, .dvn-scroller, [data-testid="stMetricLabel"] *, '
                                        + '[data-testid="stMetricValue"] *')) {
    if (shown(e) && e.clientWidth > 0 && e.scrollWidth > e.clientWidth + 1)
      bad.push(`${name(e)} holds ${e.scrollWidth} px in ${e.clientWidth}: "${e.textContent.slice(0, 40)}"`);
  }
  return bad;
}"""

# WCAG contrast of the page's text against what is behind it (the nearest background drawn, else
# white), the opacity of every ancestor counted.
CONTRAST_JS = """() => {
  const lum = c => { const v = c / 255; return v <= 0.04045 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
  const L = rgb => 0.2126 * lum(rgb[0]) + 0.7152 * lum(rgb[1]) + 0.0722 * lum(rgb[2]);
  const rgba = text => { const m = text.match(/[\\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const over = (c, bg) => c.slice(0, 3).map((v, i) => v * c[3] + bg[i] * (1 - c[3]));
  const behind = e => {  // the nearest background drawn under the text's centre
    const r = e.getBoundingClientRect(), x = r.left + r.width / 2, y = r.top + r.height / 2;
    for (let a = e; a; a = a.parentElement) {
      const c = rgba(getComputedStyle(a).backgroundColor), b = a.getBoundingClientRect();
      if (c[3] > 0 && b.left <= x && x <= b.right && b.top <= y && y <= b.bottom) return over(c, [255, 255, 255]);
    }
    return [255, 255, 255];
  };
  const bad = [];
  const sel = '[data-testid="stCaptionContainer"], [data-testid="stMetricLabel"], [data-testid="stMetricValue"], '
            + '[data-testid="stTable"] td, [data-testid="stTable"] th, [data-testid="stMarkdownContainer"] p, '
            + '[data-testid="stWidgetLabel"], [data-testid="stSidebarNavLink"] span, h1, h2, h3, '
            + '[data-testid="stMultiSelect"] span, [data-testid="stSliderThumbValue"], [data-testid="stAlertContainer"] p, button p';
  for (const e of document.querySelectorAll(sel)) {
    if (!e.textContent.trim() || e.offsetParent === null) continue;
    if (getComputedStyle(e).fontFamily.includes('Material')) continue;  // an icon (non-text: 3:1), not text
    const c = rgba(getComputedStyle(e).color);
    let alpha = c[3];
    for (let a = e; a; a = a.parentElement) alpha *= parseFloat(getComputedStyle(a).opacity);
    if (alpha < 0.05) continue;  // not drawn (e.g. a slider's end labels, shown on hover)
    const bg = behind(e);
    const fg = over([c[0], c[1], c[2], alpha], bg);
    const [hi, lo] = [L(fg), L(bg)].sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) bad.push(`${ratio.toFixed(2)}:1 "${e.textContent.trim().slice(0, 40)}"`);
  }
  return bad;
}"""


def _one(lake, query, *params):
    return catalog.query(Lake(lake), query, list(params)).to_pylist()


def _expect():
    from playwright.sync_api import expect

    expect.set_options(timeout=TIMEOUT_MS)
    return expect


def metric(page, label: str):
    """The value of the metric labelled exactly ``label`` (a locator: it waits for the metric)."""
    label_el = page.locator('[data-testid="stMetricLabel"]', has_text=re.compile(rf"^\s*{re.escape(label)}\s*$"))
    return page.locator('[data-testid="stMetric"]', has=label_el).locator('[data-testid="stMetricValue"]')


def main(page):
    """The page's main column (not the sidebar, whose glossary holds many of the same words)."""
    return page.locator('[data-testid="stMain"]')


def goto(page, url: str, title: str, charts: int = 0, images: int = 0) -> None:
    """Open ``url`` and wait until its own content is drawn: the page's title, ``charts`` charts
    rendered, ``images`` images loaded, and Streamlit no longer running the script."""
    page.goto(url, timeout=TIMEOUT_MS)
    settle(page, title, charts, images)


def settle(page, title: str, charts: int = 0, images: int = 0) -> None:
    expect = _expect()
    expect(page.locator("h1", has_text=re.compile(rf"^{re.escape(title)}$"))).to_be_visible()
    page.wait_for_function("n => document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length >= n",
                           arg=charts, timeout=TIMEOUT_MS)
    page.wait_for_function("n => [...document.querySelectorAll('[data-testid=\"stImage\"] img')]"
                           ".filter(i => i.complete && i.naturalWidth > 0).length >= n", arg=images, timeout=TIMEOUT_MS)
    expect(page.locator('[data-testid="stStatusWidget"]')).to_have_count(0)
    expect(page.locator('[data-testid="stSkeleton"]')).to_have_count(0)


def check_page(page, name: str) -> None:
    """Nothing cut off at this width, text dark enough, images with alt text; then a screenshot of
    the whole page at ``WIDTH`` px."""
    clipped = page.evaluate(CLIPPED_JS)
    assert not clipped, (name, clipped)
    faint = page.evaluate(CONTRAST_JS)
    assert not faint, (name, faint)
    alts = page.locator('[data-testid="stImage"] img').evaluate_all("imgs => imgs.map(i => i.alt)")
    assert all(a.strip() for a in alts), (name, alts)
    height = page.evaluate("() => document.querySelector('[data-testid=\"stMainBlockContainer\"]').scrollHeight")
    page.set_viewport_size({"width": WIDTH, "height": min(max(height + 120, 900), 12_000)})
    page.wait_for_function("() => [...document.querySelectorAll('.vega-embed')].every(e => e.querySelector('canvas, svg'))",
                           timeout=TIMEOUT_MS)
    page.screenshot(path=SHOTS / f"{name}.png")
    page.set_viewport_size({"width": WIDTH, "height": 900})


def _other_address() -> str | None:
    """An address of this machine other than loopback, if it has one."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: this only picks a route
            addr = s.getsockname()[0]
    except OSError:
        return None
    return None if addr.startswith("127.") else addr


def test_every_page_in_headless_chromium(dash_lake):
    expect = _expect()
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"):
        old.unlink()
    n_patients = _one(dash_lake, "select count(*) n from patients")[0]["n"]
    n_slices = _one(dash_lake, "select count(*) n from slices")[0]["n"]
    auc = {r["cohort"]: r["value"] for r in _one(
        dash_lake, "select cohort, value from metrics where run_id = ? and subgroup = 'all' and rater = 'model' "
        "and metric = 'auc' and ci_method = 'delong' and cutoff_kind = ?", RUN, C.CUTOFF_VAL)}
    last = _one(dash_lake, "select fold, val_acc from train_history where run_id = ? "
                "qualify epoch = max(epoch) over (partition by fold) order by fold", RUN)
    brier = {r["cohort"]: r["value"] for r in _one(
        dash_lake, "select cohort, value from metrics where run_id = ? and metric = 'brier'", RUN)}

    with served(dash_lake, run=RUN) as url, browser(width=WIDTH, height=900) as page:
        hosts: list[str] = []
        page.on("request", lambda r: hosts.append(urlparse(r.url).hostname or ""))
        page.on("websocket", lambda ws: hosts.append(urlparse(ws.url).hostname or ""))
        other = _other_address()
        if other:  # bound to loopback only: another address of this machine does not answer
            port = int(url.rsplit(":", 1)[1])
            with pytest.raises(OSError):
                urllib.request.urlopen(f"http://{other}:{port}/_stcore/health", timeout=3)

        goto(page, f"{url}/?run={RUN}", "Summary")  # the default page
        check_page(page, "0-summary")

        goto(page, f"{url}/overview?run={RUN}", "Overview", charts=1)
        expect(metric(page, "Patients")).to_have_text(str(n_patients))
        expect(metric(page, "ROI slices")).to_have_text(str(n_slices))
        expect(metric(page, "Preprocessing failures")).to_have_text("1")
        expect(main(page).get_by_text("Patients and slices per cohort, site and diagnosis")).to_be_visible()
        favicon = page.locator("link[rel='shortcut icon']").get_attribute("href") or ""
        assert urlparse(favicon).hostname in LOCAL | {None}, favicon  # an emoji drawn in place, not a font server's
        page.locator('[data-testid="stSidebar"]').get_by_text("Glossary").click()  # in the sidebar of every page
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("Holm's adjustment of p values", exact=False)
               ).to_be_visible()
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download CSV").first.click()
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert sum(int(r["patients"]) for r in rows) == n_patients and dl.value.suggested_filename == f"{RUN}-counts.csv"
        with page.expect_download() as dl:
            page.get_by_role("button", name="Download PNG").first.click()
        assert Path(dl.value.path()).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        check_page(page, "1-overview")

        # the sidebar's navigation, as a user would click it: the old page stays until the new one replaces it
        page.get_by_role("link", name="Model vs readers").click()
        page.wait_for_url("**/readers**", timeout=TIMEOUT_MS)
        settle(page, "Model vs readers", charts=2)  # the headline forest plot and the differences'
        expect(main(page).get_by_text("Paired differences", exact=True)).to_be_visible()
        expect(main(page).get_by_text("not evidence of equivalence", exact=False)).to_be_visible()
        expect(main(page).get_by_text("How each difference was tested", exact=True)).to_be_visible()
        expect(page.locator('[data-testid="stTable"] th', has_text="what the test counted")).to_be_visible()
        check_page(page, "2-model-vs-readers")
        # the paper's subsampling, chosen: its coverage note appears
        page.get_by_test_id("stRadioGroup").get_by_text("paper's 90 % subsampling", exact=False).click()
        expect(main(page).get_by_text("covered 29-52 %", exact=False)).to_be_visible()

        goto(page, f"{url}/roc?run={RUN}", "ROC", charts=1)
        expect(metric(page, "AUC, internal test")).to_have_text(f"{auc['test']:.3f}")
        expect(metric(page, "AUC, external")).to_have_text(f"{auc['external']:.3f}")
        expect(main(page).get_by_text("Wilson's score interval", exact=False).first).to_be_visible()
        check_page(page, "3-roc")

        goto(page, f"{url}/calibration?run={RUN}", "Calibration", charts=3)  # reliability, decision, distribution
        table = page.locator('[data-testid="stTable"]', has=page.locator("th", has_text="Brier score"))
        expect(table.locator("tr", has_text="internal test")).to_contain_text(f"{brier['test']:.3f}")
        expect(table.locator("tr", has_text="external")).to_contain_text(f"{brier['external']:.3f}")
        expect(main(page).get_by_text("Score distribution", exact=True)).to_be_visible()
        check_page(page, "3b-calibration")

        goto(page, f"{url}/subgroups?run={RUN}", "Subgroups", charts=1)
        expect(main(page).get_by_text("AUC by subgroup", exact=False).first).to_be_visible()
        check_page(page, "4-subgroups")

        test_patient = _one(dash_lake, "select patient_id, predictive_index from patient_predictions "
                            "where run_id = ? and split = 'test' order by patient_id limit 1", RUN)[0]
        goto(page, f"{url}/patient?run={RUN}&patient={test_patient['patient_id']}", "Patient viewer", charts=2,
             images=3)
        expect(metric(page, "Predictive index")).to_have_text(f"{test_patient['predictive_index']:.3f}")
        expect(main(page).get_by_text("Grad-CAM of the ensemble over CE-T1")).to_be_visible()
        expect(page.locator('[data-testid="stTable"] td', has_text=re.compile("right|wrong")).first).to_be_visible()
        check_page(page, "5-patient")

        # a link to a validation patient: the sidebar leaves validation out by default; said so, shown on request
        val = _one(dash_lake, "select patient_id from patient_predictions where run_id = ? and split = 'val' "
                   "order by patient_id limit 1", RUN)[0]["patient_id"]
        goto(page, f"{url}/patient?run={RUN}&patient={val}", "Patient viewer")
        expect(main(page).get_by_text(f"Patient {val} is in the validation cohort", exact=False)).to_be_visible()
        expect(page.locator('[data-testid="stImage"]')).to_have_count(0)  # no other patient shown instead
        assert f"patient={val}" in page.url
        check_page(page, "5b-patient-filtered-out")
        page.get_by_role("button", name="Show it").click()
        settle(page, "Patient viewer", charts=2, images=2)  # validation slices have no Grad-CAM
        expect(page.get_by_role("combobox", name="Patient (pseudonymised id)")).to_have_value(re.compile(val))
        expect(page.locator('[data-testid="stSidebar"]').get_by_text("validation", exact=True)).to_be_visible()
        assert f"patient={val}" in page.url  # the address still names the patient asked for

        goto(page, f"{url}/patient?run={RUN}&patient=p-nobody", "Patient viewer")
        expect(main(page).get_by_text("There is no patient p-nobody in this lake", exact=False)).to_be_visible()
        assert "patient=p-nobody" in page.url  # not silently replaced by another patient

        goto(page, f"{url}/training?run={RUN}", "Training", charts=2)
        for r in last:
            expect(metric(page, f"Fold {r['fold']}: held-out accuracy")).to_have_text(f"{r['val_acc']:.3f}")
        check_page(page, "6-training")

        goto(page, f"{url}/roc?run=no-such-run", "ROC")
        expect(main(page).get_by_text("There is no finished training run no-such-run", exact=False)).to_be_visible()
        check_page(page, "7-unknown-run")

    outside = sorted({h for h in hosts if h not in LOCAL})
    assert not outside, f"requests left the host: {outside}"
    assert hosts, "no request recorded"
    shots = sorted(SHOTS.glob("*.png"))
    assert len(shots) == 10 and all(s.stat().st_size > 10_000 for s in shots), shots
