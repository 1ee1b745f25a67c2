"""The HTML report in a real browser: headless Chromium driven by Playwright.

Skips (with the reason) where Debian's chromium or the playwright package is missing;
`make browser-deps` installs both and CI runs it. Saves a screenshot to
reports/test-artifacts/report.png.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path
from typing import Any

import pytest

from parity.report import compare, html
from report_samples import XSS_IMG, XSS_SCRIPT, hostile, sample_reports

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = [
    pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (run `make browser-deps`: apt-get install -y chromium)"),
    pytest.mark.skipif(importlib.util.find_spec("playwright") is None,
                       reason="playwright not installed (run `make browser-deps`: pip install playwright)"),
]


@pytest.fixture(scope="module")
def browser() -> Any:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser: Any) -> Any:
    pg = browser.new_page(viewport={"width": 1440, "height": 900})
    pg.problems = []
    pg.on("console", lambda m: pg.problems.append(f"console {m.type}: {m.text}") if m.type in ("error", "warning") else None)
    pg.on("pageerror", lambda e: pg.problems.append(f"page error: {e}"))
    pg.on("dialog", lambda d: (pg.problems.append(f"dialog: {d.message}"), d.dismiss()))
    pg.on("request", lambda r: pg.problems.append(f"request: {r.url}") if not r.url.startswith(("file:", "data:")) else None)
    yield pg
    pg.close()


def _names(pg: Any) -> list[str]:
    return pg.eval_on_selector_all("#probe-table tbody tr", "rs => rs.map(r => r.dataset.probe)")


def test_report_page(page: Any, tmp_path: Path) -> None:
    broken, _ = sample_reports()
    path = html.write(hostile(broken), tmp_path / "report.html")
    page.goto(path.as_uri())
    page.wait_for_load_state("load")

    # charts drawn: depth lines with real paths, dots, the tolerance line, heatmap cells
    paths = page.eval_on_selector_all(".metric-chart[data-metric=max_abs_err] g.series path", "ps => ps.map(p => p.getAttribute('d'))")
    assert len(paths) >= 3 and all(p and p.count("L") >= 2 for p in paths)
    assert page.locator(".metric-chart[data-metric=max_abs_err] circle.dot").count() >= 12
    assert page.locator(".metric-chart[data-metric=max_abs_err] svg").bounding_box()["height"] > 100
    assert page.locator("table.heat td[data-probe]").count() == 4 * 11
    assert page.locator("table.heat td.fail").count() > 0

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

    # details: first divergence shown on load, a click shows another probe
    assert "blocks.2.mlp_out" in page.inner_text("#detail")
    page.locator("#probe-table tbody tr[data-probe='logits']").click()
    detail = page.inner_text("#detail")
    assert "logits" in detail and "worst element" in detail and "reference" in detail

    # hostile text shows as text, runs nothing
    body = page.inner_text("body")
    assert XSS_SCRIPT in body and XSS_IMG in body
    assert page.locator("img").count() == 0
    page.locator("button.metric[data-metric=nrmse]").click()
    assert page.locator(".metric-chart[data-metric=nrmse]").is_visible()
    page.locator("button.metric[data-metric=max_abs_err]").click()
    assert page.problems == []

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator("#probe-table tbody tr[data-probe='blocks.2.mlp_out']").click()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(ARTIFACTS / "report.png"), full_page=True)
    assert (ARTIFACTS / "report.png").stat().st_size > 10_000


def test_diff_page(page: Any, tmp_path: Path) -> None:
    broken, fixed = sample_reports()
    path = html.write_diff(compare.diff_reports(broken, fixed), tmp_path / "diff.html")
    page.goto(path.as_uri())
    page.locator("#probe-table thead th", has_text="change").click()
    assert _names(page)[0] != "embed"
    page.select_option("#change-filter", "fixed")
    assert page.locator("#probe-table tbody tr:visible").count() == 15
    assert page.problems == []
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "diff.png"), full_page=True)
