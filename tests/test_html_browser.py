"""The HTML pages in a real browser: headless Chromium driven by Playwright.

Skips (with the reason) where Debian's chromium or the playwright package is missing;
`make browser-deps` installs both and CI runs it. Renders every kind of page -- a forward
run passing and failing, a generation passing and failing, a diff -- checks that it runs
without console errors, that its key elements are there and that no two labels of a chart
overlap, and saves a full-page screenshot of each to reports/test-artifacts/<page>.png.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest
from report_samples import (
    XSS_IMG,
    XSS_SCRIPT,
    failing_generation_report,
    generation_report,
    hostile,
    sample_reports,
)

from parity.report import compare, html

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
WIDTH = 1440

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run `make browser-deps`: apt-get install -y chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright not installed (run `make browser-deps`: pip install playwright)"),
]

#: pairs of drawn SVG labels whose boxes overlap (by more than 1px each way), in every visible chart
_OVERLAPS = """() => {
  const out = [];
  document.querySelectorAll("svg").forEach(svg => {
    const boxes = Array.from(svg.querySelectorAll("text")).map(t => [t.textContent, t.getBoundingClientRect()])
      .filter(([, r]) => r.width > 0 && r.height > 0);
    for (let i = 0; i < boxes.length; i++) {
      for (let j = i + 1; j < boxes.length; j++) {
        const [a, r] = boxes[i], [b, s] = boxes[j];
        const w = Math.min(r.right, s.right) - Math.max(r.left, s.left);
        const h = Math.min(r.bottom, s.bottom) - Math.max(r.top, s.top);
        if (w > 1 && h > 1) { out.push(a + " / " + b); }
      }
    }
  });
  return out;
}"""


@pytest.fixture(scope="module")
def browser() -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Any:
    pg = browser.new_page(viewport={"width": WIDTH, "height": 900})
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.on("request", lambda r: pg.problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    yield pg
    pg.close()


def _open(pg: Any, path: Path) -> None:
    pg.goto(path.as_uri())
    pg.wait_for_load_state("load")


def _names(pg: Any) -> list[str]:
    return pg.eval_on_selector_all("#probe-table tbody tr", "rs => rs.map(r => r.dataset.probe)")


def _laid_out(pg: Any) -> None:
    """Nothing drawn over anything: no overlapping chart labels, no page wider than the window."""
    assert pg.evaluate(_OVERLAPS) == []
    assert pg.evaluate("document.documentElement.scrollWidth") <= WIDTH


def _shot(pg: Any, name: str) -> None:
    assert pg.problems == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    pg.evaluate("window.scrollTo(0, 0)")
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert (ARTIFACTS / f"{name}.png").stat().st_size > 10_000


def _row_in_view(pg: Any, selector: str) -> bool:
    """Whether the row shows inside the probe table's scroll box, below its sticky header."""
    return pg.evaluate("""sel => {
      const box = document.getElementById("probe-scroll").getBoundingClientRect();
      const head = document.querySelector("#probe-table thead").getBoundingClientRect();
      const r = document.querySelector(sel).getBoundingClientRect();
      return r.top >= head.bottom - 1 && r.bottom <= box.bottom + 1;
    }""", selector)


def test_forward_failing_page(page: Any, tmp_path: Path) -> None:
    broken, _ = sample_reports()
    path = html.write(hostile(broken), tmp_path / "report.html")
    _open(page, path)
    assert page.inner_text("header .badge") == "DIVERGED"

    # charts drawn: depth lines with real paths, dots, the budget line, heatmap cells
    paths = page.eval_on_selector_all(".metric-chart[data-metric=max_abs_err] g.series path", "ps => ps.map(p => p.getAttribute('d'))")
    assert len(paths) >= 3 and all(p and p.count("L") >= 2 for p in paths)
    assert page.locator(".metric-chart[data-metric=max_abs_err] circle.dot").count() >= 12
    assert page.locator(".metric-chart[data-metric=max_abs_err] svg").bounding_box()["height"] > 100
    assert page.locator(".excess-chart line.limit").count() == 1
    assert page.locator("table.heat td[data-probe]").count() == 4 * 11
    assert page.locator("table.heat td.fail").count() > 0

    # failures are not below the fold: on load the table's box shows the first divergence
    first = "#probe-table tbody tr[data-probe='blocks.2.mlp_out']"
    assert _row_in_view(page, first) and "blocks.2.mlp_out" in page.inner_text("#detail")
    page.locator("#probe-scroll").evaluate("b => { b.scrollTop = 0; }")
    assert not _row_in_view(page, first)
    page.locator("#jump-fail").click()
    assert _row_in_view(page, first)
    # no column clipped: the table fits its box (or scrolls sideways within it)
    box = page.locator("#probe-scroll").evaluate("b => [b.scrollWidth, b.clientWidth, getComputedStyle(b).overflowX]")
    assert box[0] <= box[1] or box[2] == "auto"
    # failures first, then back to execution order
    page.locator("#fail-first").click()
    names = _names(page)
    failing = [r.name for r in broken.probes if r.status == "fail"]
    assert names[:len(failing)] == failing
    page.locator("#fail-first").click()
    assert _names(page)[0] == "embed"

    # sorting: click "max abs err" (ascending, then descending)
    before = _names(page)
    header = page.locator("#probe-table thead th", has_text="max abs err")
    header.click()
    header.click()
    after = _names(page)
    assert after != before and after[0] == "blocks.3.resid_post"
    errs = page.eval_on_selector_all("#probe-table tbody tr td:nth-child(4)", "ts => ts.map(t => parseFloat(t.dataset.v))")
    assert errs == sorted(errs, reverse=True)

    # filtering by name and by status
    page.fill("#filter", "mlp_out")
    assert page.locator("#probe-table tbody tr:visible").count() == 4
    page.fill("#filter", "")
    page.select_option("#status-filter", "fail")
    assert page.locator("#probe-table tbody tr:visible").count() == broken.summary["probes_failed"]
    page.select_option("#status-filter", "")

    # details: a click shows another probe
    page.locator("#probe-table tbody tr[data-probe='logits']").click()
    detail = page.inner_text("#detail")
    assert "logits" in detail and "worst element" in detail and "reference" in detail

    # hostile text shows as text, runs nothing
    body = page.inner_text("body")
    assert XSS_SCRIPT in body and XSS_IMG in body
    assert page.locator("img").count() == 0
    page.locator("button.metric[data-metric=nrmse]").click()
    assert page.locator(".metric-chart[data-metric=nrmse]").is_visible()
    _laid_out(page)
    page.locator("button.metric[data-metric=max_abs_err]").click()
    _laid_out(page)

    assert page.problems == []

    _open(page, html.write(broken, tmp_path / "clean.html"))  # the screenshot: the page as a run writes it
    assert _row_in_view(page, first)
    _laid_out(page)
    _shot(page, "forward-fail")


def test_forward_passing_page(page: Any, tmp_path: Path) -> None:
    _, fixed = sample_reports()
    _open(page, html.write(fixed, tmp_path / "pass.html"))
    assert page.inner_text("header .badge") == "PASS"
    assert page.locator("#jump-fail").count() == 0 and page.locator("#probe-table tr.fail").count() == 0
    # within the budget, nothing looks like a warning: every heatmap cell is pale or green
    colors = page.eval_on_selector_all("table.heat td[data-probe]", "ts => ts.map(t => getComputedStyle(t).backgroundColor)")
    rgb = [tuple(int(v) for v in c[c.index("(") + 1:-1].split(",")[:3]) for c in colors]
    assert len(rgb) == 4 * 11 and all(g >= r and g >= b for r, g, b in rgb), rgb
    _laid_out(page)
    _shot(page, "forward-pass")


def _generation_checks(page: Any, report: Any) -> None:
    gen = report.generation
    assert page.locator("#probe-table").count() == 0 and page.locator("table.heat").count() == 0
    body = page.inner_text("body")
    assert "No block probes" not in body and "0 / 0 probes" not in body and '{"' not in body
    assert page.locator(".step-chart[data-metric=max_abs_err] svg").bounding_box()["height"] > 100
    assert page.locator(".step-chart[data-metric=excess] line.limit").count() == 1
    assert page.locator(".step-chart[data-metric=excess] circle.dot").count() == sum(s["comparable"] for s in gen["steps"])
    assert page.locator("table.stream tr.ref td").count() == len(gen["steps"])
    assert page.locator("#step-table tbody tr").count() == len(gen["steps"])
    assert page.locator("table.prompt-table").is_visible() and page.locator("table.config-table").is_visible()
    assert page.locator("table.stop-table").is_visible() and page.locator("table.sampling-table").is_visible()
    # a click on a step (chart dot, stream column) marks its row in the step table
    page.locator("table.stream tr.steps td[data-step='0']").click()
    assert "sel" in page.locator("#step-table tbody tr[data-step='0']").get_attribute("class")
    _laid_out(page)


def test_generation_passing_page(page: Any, tmp_path: Path) -> None:
    rep = generation_report()
    _open(page, html.write(rep, tmp_path / "gen.html"))
    assert page.inner_text("header .badge") == "PASS"
    _generation_checks(page, rep)
    assert page.locator("table.stream .tok.differs").count() == 0 and page.locator("#step-table tr.fail").count() == 0
    assert page.locator("line.mark").count() == 0
    page.reload()
    _shot(page, "generation-pass")


def test_generation_failing_page(page: Any, tmp_path: Path) -> None:
    rep = failing_generation_report()
    _open(page, html.write(rep, tmp_path / "gen-fail.html"))
    first = rep.generation["first_divergent_step"]
    assert page.inner_text("header .badge") == "DIVERGED"
    _generation_checks(page, rep)
    assert page.locator(".step-chart line.mark").count() == 2  # the first divergent step, on both charts
    assert page.locator("table.stream .tag.fail").inner_text() == "first divergence"
    assert page.locator("table.stream .tok.differs").count() >= 1
    row = page.locator(f"#step-table tbody tr[data-step='{first}']")
    assert "fail" in row.get_attribute("class")
    red = row.locator("td").first.evaluate("t => getComputedStyle(t).backgroundColor")
    assert red != "rgba(0, 0, 0, 0)" and red != "rgb(255, 255, 255)"
    page.reload()
    _shot(page, "generation-fail")


def test_diff_page(page: Any, tmp_path: Path) -> None:
    broken, fixed = sample_reports()
    path = html.write_diff(compare.diff_reports(broken, fixed), tmp_path / "diff.html")
    _open(page, path)
    # one chart, both runs along depth, the budget; failing probes red
    assert page.locator(".metric-chart[data-metric=excess] g.series").count() == 2
    assert page.locator(".metric-chart[data-metric=excess] circle.dot.fail").count() == broken.summary["probes_failed"]
    assert page.locator(".metric-chart[data-metric=excess] line.limit").count() == 1
    page.locator("button.metric[data-metric=max_abs_err]").click()
    assert page.locator(".metric-chart[data-metric=max_abs_err]").is_visible()
    _laid_out(page)
    page.locator("button.metric[data-metric=excess]").click()
    assert page.locator("#probe-table td.st-fail").count() == broken.summary["probes_failed"]
    page.locator("#probe-table thead th", has_text="change").click()
    assert _names(page)[0] != "embed"
    page.select_option("#change-filter", "fixed")
    assert page.locator("#probe-table tbody tr:visible").count() == 15
    page.select_option("#change-filter", "")
    _laid_out(page)
    _shot(page, "diff")
