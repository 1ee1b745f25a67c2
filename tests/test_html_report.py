"""HTML report and diff without a browser: escaping, embedded data, CLI commands."""
from __future__ import annotations

import json
import re
from pathlib import Path

from parity.verdict.calibrate import DEFAULT_BUDGET as B
from parity.report import charts, compare, console, files, html
from parity.report.data import ReportData
from report_samples import XSS_SCRIPT, absolute_reports, generation_report, hostile, sample_reports, schema_10


def test_script_json_cannot_break_out() -> None:
    text = html.script_json({"a": "</script><script>alert(1)</script>", "b": "x\u2028y & <!--"})
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"a": "</script><script>alert(1)</script>", "b": "x\u2028y & <!--"}


def test_page_embeds_the_report_and_escapes_markup() -> None:
    broken, _ = sample_reports()
    rep = hostile(broken)
    page = html.render(rep)
    assert XSS_SCRIPT not in page and "<img" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert len(re.findall(r"<script\b", page)) == 2  # the JSON data and the page script
    data = re.search(r'<script type="application/json" id="parity-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == json.loads(files.to_json(rep))
    assert "https://" not in page and "http://" not in page  # nothing fetched
    assert "src=" not in page.replace("&lt;img src=x", "").replace("\\u003cimg src=x", "")  # no element loads anything
    assert "blocks.2.mlp_out" in page and "<svg" in page and 'class="heat"' in page
    assert "Generation" in page and "cand_token" in page


def test_report_and_diff_commands(tmp_path: Path, run_cli) -> None:
    broken, fixed = sample_reports()
    files.write(broken, tmp_path / "before")
    files.write(fixed, tmp_path / "after")
    code, out, _ = run_cli("report", str(tmp_path / "before" / "report.json"), "-o", str(tmp_path / "b.html"))
    assert code == 0 and (tmp_path / "b.html").read_text().startswith("<!DOCTYPE html>")
    code, out, _ = run_cli("diff", str(tmp_path / "before"), str(tmp_path / "after"), "--html", str(tmp_path / "d.html"))
    assert code == 0 and "fixed" in out and "blocks.2.mlp_out" in out
    assert "blocks.2.mlp_out" in (tmp_path / "d.html").read_text()
    code, out, _ = run_cli("diff", str(tmp_path / "after"), str(tmp_path / "before"))
    assert code == 1 and "broke" in out
    (tmp_path / "junk.json").write_text("{}")
    code, _, err = run_cli("report", str(tmp_path / "junk.json"))
    assert code == 2 and err.startswith("parity: error:") and "not a parity report" in err and len(err.strip().splitlines()) == 1


def test_diff_rows() -> None:
    broken, fixed = sample_reports()
    d = compare.diff_reports(broken, fixed)
    changes = {r.name: r.change for r in d.rows}
    assert changes["blocks.2.mlp_out"] == "fixed" and changes["embed"] == "same" and not d.regressed
    assert compare.diff_reports(fixed, broken).regressed


def test_run_writes_html(tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli("run", "--tokens", "4", "-q", "--out", str(tmp_path / "r"), "--html", str(tmp_path / "r.html"))
    assert code == 0 and "HTML report:" in out
    assert "PASSED" in (tmp_path / "r.html").read_text()


# --------------------------------------------------------------------------- calibrated verdicts (schema 1.1)

_HEAT_CELL = re.compile(r'<td class="(\w+)" style="background:(#[0-9a-f]{6})" data-probe="([^"]+)" data-excess="([^"]*)"')


def _between(page: str, start: str, end: str = "</svg>") -> str:
    return page.split(start, 1)[1].split(end, 1)[0]


def test_calibrated_page_draws_twin_excess_and_budget() -> None:
    broken, _ = sample_reports()
    assert broken.run["verdict"]["mode"] == "calibrated" and broken.run["tolerances"] is None
    assert all(r.excess is not None and r.twin_max_abs_err is not None for r in broken.probes if r.compared)
    page = html.render(broken)
    # the twin's error dashed beside the candidate's, same metric, in both error charts
    for metric in ("max_abs_err", "nrmse"):
        chart = _between(page, f'class="metric-chart" data-metric="{metric}"')
        assert chart.count('<path class="twin"') >= 3 and chart.count('<path class="cand"') >= 3
        assert 'stroke-dasharray="5 3"' in chart and 'class="limit"' not in chart  # no atol line
    # excess along depth, the budget as the limit
    excess = _between(page, 'class="excess-chart"')
    assert 'class="limit"' in excess and f"budget x{B:g}" in excess and "twin x1" in excess and "x100" in excess
    assert 'data-probe="blocks.2.mlp_out"' in excess and "atol" not in page.split('id="heatmap"')[0]
    # the heatmap shades by excess: red over the budget, pale within the twin
    assert "Block × component (excess over twin)" in page
    cells = _HEAT_CELL.findall(page)
    assert len(cells) == 4 * 11
    for status, color, name, x in cells:
        assert color == charts.excess_shade(float(x), B, status == "fail"), name
        red = int(color[1:3], 16) > int(color[3:5], 16) + 60
        assert red == (status == "fail") == (float(x) > B), name
    x = console.xfmt(broken.row("blocks.2.mlp_out").excess)
    assert f">{x}<" in page  # blocks.2.mlp_out's excess as cell text and table cell
    # the probe table and the facts
    assert ">twin max abs</th>" in page and ">excess</th>" in page and ">twin nrmse</th>" in page and ">atol</th>" not in page
    facts = page.split('class="kv verdict-facts"', 1)[1].split("</table>", 1)[0]
    twin = broken.run["verdict"]["twin"]
    assert "<td>calibrated</td>" in facts and f"x{B:g} (a probe fails above {B:g}" in facts and "float16 rounding unit" in facts
    assert html.fmt(broken.run["verdict"]["floor"]) in facts and twin["label"] in facts and f"<td>{twin['state']}</td>" in facts
    growth = console.xfmt(broken.summary["first_divergence"]["growth"])
    assert "largest excess" in page and f"excess {growth} over upstream" in page


def test_absolute_page_keeps_the_atol_line_and_error_heatmap() -> None:
    broken, _ = absolute_reports()
    page = html.render(broken)
    chart = _between(page, 'class="metric-chart" data-metric="max_abs_err"')
    assert 'class="limit"' in chart and "atol 0.02" in chart and '<path class="twin"' not in page
    assert 'class="excess-chart"' not in page and "Block × component (max abs err)" in page
    assert not _HEAT_CELL.search(page) and ">atol</th>" in page and ">excess</th>" not in page
    fd = broken.summary["first_divergence"]
    assert "<td>absolute</td>" in page and f"max abs err</th><td>{html.fmt(fd['max_abs_err'])} &gt; atol 0.02" in page


def test_schema_10_report_still_renders(tmp_path: Path, run_cli) -> None:
    broken, _ = absolute_reports()
    old = schema_10(broken)
    assert ReportData.from_dict(old).schema_version == "1.0" and "verdict" not in old["run"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    code, out, err = run_cli("report", str(tmp_path / "old.json"), "-o", str(tmp_path / "old.html"))
    assert code == 0, err
    page = (tmp_path / "old.html").read_text()
    assert "<td>absolute</td>" in page and "atol 0.02" in page and "Block × component (max abs err)" in page
    assert 'class="excess-chart"' not in page and '<path class="twin"' not in page and "twin max abs" not in page
    assert "blocks.2.mlp_out" in page and page.count("<svg") == 2


def test_generation_section_shows_excess_per_step() -> None:
    d = generation_report().to_dict()
    assert d["generation"]["tolerance"] == "calibrated" and all(s["excess"] is not None for s in d["generation"]["steps"])
    d["generation"]["steps"][1].update(excess=12.5, passed=False)  # one step over the budget
    page = html.render(ReportData.from_dict(d))
    step_chart = _between(page, 'class="chart step-chart"')
    assert f"budget x{B:g}" in step_chart and 'class="limit"' in step_chart and step_chart.count('class="dot"') == 3
    assert 'fill="#cf222e"' in step_chart  # the failing step
    head = re.search(r"<thead><tr>(.*?)</tr></thead>", page.split(">steps</h3>", 1)[1]).group(1)
    cols = re.findall(r">([a-z_]+)</th>", head)
    assert cols[cols.index("max_abs_err") + 1:cols.index("max_abs_err") + 3] == ["excess", "twin_max_abs_err"]
    assert ">x12<" in page and ">x1<" in page
