"""HTML report and diff without a browser: escaping, embedded data, CLI commands."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

from report_samples import (
    XSS_IMG,
    XSS_SCRIPT,
    absolute_reports,
    failing_generation_report,
    generation_report,
    hostile,
    sample_reports,
    schema_10,
)

from parity.report import charts, compare, console, files, html
from parity.report.data import ReportData
from parity.verdict.calibrate import DEFAULT_BUDGET as B


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
    data = re.search(r'<script type="application/json" id="parity-data">(.*?)</script>', page, re.DOTALL).group(1)
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
    code, _, err = run_cli("report", str(tmp_path / "old.json"), "-o", str(tmp_path / "old.html"))
    assert code == 0, err
    page = (tmp_path / "old.html").read_text()
    assert "<td>absolute</td>" in page and "atol 0.02" in page and "Block × component (max abs err)" in page
    assert 'class="excess-chart"' not in page and '<path class="twin"' not in page and "twin max abs" not in page
    assert "blocks.2.mlp_out" in page and page.count("<svg") == 2


def _visible(page: str) -> str:
    """The page without its embedded JSON data and scripts: what is drawn."""
    return re.sub(r"<script\b.*?</script>", "", page, flags=re.DOTALL)


def test_generation_page_has_its_own_view() -> None:
    d = generation_report().to_dict()
    gen = d["generation"]
    assert gen["tolerance"] == "calibrated" and all(s["excess"] is not None for s in gen["steps"])
    gen["steps"][1].update(excess=12.5, passed=False, cand_token=11, match=False, flip="near-tie", gap=0.01)
    gen.update(first_divergent_step=1, first_token_flip_step=1, verdict="fail",
               stop_set_diff={"reference": ["151643 <|endoftext|>", "151645 <|im_end|>"], "candidate": ["151643 <|endoftext|>"],
                              "missing_in_candidate": ["151645 <|im_end|>"], "extra_in_candidate": []},
               sampling_diff=[{"key": "temperature", "reference": 0.7, "candidate": 1.0},
                              {"key": "eos_token_id", "reference": [151643, 151645], "candidate": None}])
    d["summary"].update(verdict="fail", message="FAILED | step 1 | logits excess x12 > budget x4")
    page = html.render(ReportData.from_dict(d))
    shown = _visible(page)
    # none of the forward-pass layout: no depth chart, heatmap, probe table or probe counts
    for absent in ("No block probes", "0 / 0 probes", 'id="probe-table"', 'class="heat"', "Error vs depth", '{"'):
        assert absent not in shown, absent
    assert '<span class="badge fail">DIVERGED</span>' in page  # the forward runs' wording
    # the step charts: max abs err (the twin dashed) and excess (the budget), the first divergence marked
    mae = _between(page, 'class="step-chart" data-metric="max_abs_err"')
    exc = _between(page, 'class="step-chart" data-metric="excess"')
    assert '<path class="twin"' in mae and 'class="limit"' not in mae
    assert f"budget x{B:g}" in exc and 'class="limit"' in exc and "twin x1" in exc
    for chart in (mae, exc):
        assert chart.count('class="dot') == 3 and chart.count('class="dot fail"') == 1 and 'fill="#cf222e"' in chart
        assert '<line class="mark"' in chart and "first divergence + flip" in chart
    # the token streams side by side, the differing token and the first divergence marked
    stream = page.split('<table class="stream">', 1)[1].split("</table>", 1)[0]
    assert '<tr class="ref"><th>reference</th>' in stream and '<tr class="cand"><th>candidate</th>' in stream
    assert stream.count('class="tok differs"') == 1 and '<span class="tok differs">11</span>' in stream
    assert '<span class="tag fail">first divergence</span>' in stream
    # failing steps coloured; the excess right after max abs err
    rows = re.findall(r'<tr class="(\w+)[^"]*" data-step="(\d+)">', page.split('id="step-table"', 1)[1])
    assert rows == [("pass", "0"), ("fail", "1"), ("pass", "2")]
    head = re.findall(r">([a-z -]+)</th>", page.split('id="step-table"', 1)[1].split("</thead>", 1)[0])
    assert head[head.index("max abs err") + 1:head.index("max abs err") + 3] == ["excess", "twin max abs"]
    assert ">x12<" in page and ">x1<" in page
    # stop set and sampling differences as tables, prompt and configs as key / value tables
    stops = page.split('class="kv sides stop-table"', 1)[1].split("</table>", 1)[0]
    assert "stop set: differs" in stops and '<tr class="differs"><th>missing in candidate</th><td></td><td>151645 &lt;|im_end|&gt;</td>' in stops
    sampling = page.split('class="kv sides sampling-table"', 1)[1].split("</table>", 1)[0]
    assert "2 differ" in sampling and '<tr class="differs"><th>temperature</th><td>0.7</td><td>1</td></tr>' in sampling
    assert "<th>eos_token_id</th><td>151643, 151645</td><td>-</td>" in sampling
    prompt = page.split('class="kv prompt-table"', 1)[1].split("</table>", 1)[0]
    assert f"<th>tokens</th><td>{gen['prompt']['tokens']}</td>" in prompt and "ids</summary>" in prompt
    configs = page.split('class="kv sides config-table"', 1)[1].split("</table>", 1)[0]
    for k, v in gen["reference"]["config"].items():
        assert f"<th>{k}</th><td>{html.show(v)}</td>" in configs
    assert "<th>twin</th><td>the " in page.split('class="kv verdict-facts"', 1)[1]  # generate's twin, not "none recorded"


def test_generation_page_of_a_real_failing_run() -> None:
    rep = failing_generation_report()
    page = html.render(rep)
    first = rep.generation["first_divergent_step"]
    assert rep.summary["verdict"] == "fail" and '<span class="badge fail">DIVERGED</span>' in page
    assert f'<td class="fail first" data-step="{first}"><span class="tok">' in page
    table = page.split('id="step-table"', 1)[1]
    assert re.search(rf'<tr class="fail first" data-step="{first}">', table) and "not compared" in table
    passing = html.render(generation_report())
    assert '<span class="badge pass">PASS</span>' in passing and 'class="tag fail"' not in passing
    assert "none: every compared step within the budget" in passing


def test_forward_badges_and_failures_in_view() -> None:
    broken, fixed = sample_reports()
    page = html.render(broken)
    assert '<span class="badge fail">DIVERGED</span>' in page and '<span class="badge pass">PASS</span>' in html.render(fixed)
    n = broken.summary["probes_failed"]
    assert f'<button type="button" id="jump-fail" class="failing">{n} failing: jump to blocks.2.mlp_out' in page
    assert 'id="fail-first"' in page and 'id="jump-fail"' not in html.render(fixed)
    assert "break-all" not in page  # no number is split mid-value


def test_within_budget_shades_are_green_not_amber() -> None:
    def rgb(c: str) -> tuple[int, int, int]:
        return int(c[1:3], 16), int(c[3:5], 16), int(c[5:7], 16)

    for x in (0.5, 1.0, 1.5, 2.0):  # up to half the budget: pale to green
        r, g, b = rgb(charts.excess_shade(x, 4.0, False))
        assert g > r and g > b, x
    for x in (3.0, 4.0):  # approaching the budget: yellow to amber
        r, g, b = rgb(charts.excess_shade(x, 4.0, False))
        assert r > g > b and r - g < 60, x
    for x in (4.1, 40.0, 1e5):  # over: red
        r, g, b = rgb(charts.excess_shade(x, 4.0, True))
        assert r > g + 60 and r > b + 60, x
    for frac in (1e-3, 0.1, 0.3, 0.5):  # absolute runs: at 0.1-0.5 of atol still green
        r, g, b = rgb(charts.error_shade(frac, 1.0, False))
        assert g > r and g > b, frac
    r, g, b = rgb(charts.error_shade(0.9, 1.0, False))
    assert r > g > b


def test_diff_page_overlays_both_runs_and_colours_failures() -> None:
    broken, fixed = sample_reports()
    d = compare.diff_reports(broken, fixed)
    assert d.budget_a == d.budget_b == B
    page = html.render_diff(d)
    chart = _between(page, 'class="metric-chart" data-metric="excess"')
    assert '<g class="series" data-point="run A">' in chart and '<g class="series" data-point="run B">' in chart
    assert f"budget x{B:g}" in chart and chart.count('class="dot fail"') == broken.summary["probes_failed"]
    assert 'class="metric-chart" data-metric="max_abs_err"' in page
    row = re.search(r'<tr data-probe="blocks.2.mlp_out".*?</tr>', page, re.DOTALL).group(0)
    assert '<td class="l st-fail">fail</td><td class="l st-pass">pass</td>' in row and 'class="excess over"' in row
    absolute = html.render_diff(compare.diff_reports(*absolute_reports()))
    assert 'data-metric="excess"' not in absolute and 'class="metric-chart" data-metric="max_abs_err"' in absolute


def test_axis_labels_are_thinned_to_fit() -> None:
    """Many blocks: block numbers at a stride wide enough for their labels, clear of head and tail."""
    broken, _ = sample_reports()
    d = broken.to_dict()
    rows = [p for p in d["probes"] if not p["name"].startswith("blocks.")]
    for b in range(48):
        for p in d["probes"]:
            if p["name"].startswith("blocks.0."):
                rows.append({**p, "name": p["name"].replace("blocks.0.", f"blocks.{b}."), "block": b})
    d["probes"], d["run"]["num_blocks"] = rows, 48
    chart = charts.depth_chart(ReportData.from_dict(d), "excess")
    labels = [(x, lb, anchor) for x, lb, anchor, dy in chart.xticks if dy == 15]  # the tick row
    assert [t[1] for t in chart.xticks[:2]] == ["head", "tail"] and 6 < len(labels) < 30
    spans = sorted((x - charts._tw(lb) * {"middle": 0.5, "end": 1, "start": 0}[a],
                    x + charts._tw(lb) * {"middle": 0.5, "end": 0, "start": 1}[a]) for x, lb, a in labels)
    assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(spans))


def test_generation_page_keeps_hostile_strings_inert() -> None:
    d = generation_report().to_dict()
    gen = d["generation"]
    gen["prompt"]["text"] = XSS_SCRIPT
    gen["special_tokens"] = {XSS_IMG: gen["steps"][0]["ref_token"]}
    gen["reference"].update(text=XSS_SCRIPT + " text", stop_tokens=[XSS_IMG], source=XSS_IMG)
    gen["candidate"]["config"] = {XSS_SCRIPT: XSS_IMG, "nested": {"k": XSS_SCRIPT}, "ids": [XSS_IMG]}
    gen["sampling_diff"] = [{"key": XSS_SCRIPT, "reference": XSS_IMG, "candidate": [XSS_SCRIPT]}]
    gen["hint"] = XSS_SCRIPT
    d["run"]["reference"]["implementation"] = "a." * 20 + XSS_SCRIPT  # long: gets line-break chances
    page = html.render(ReportData.from_dict(d))
    assert XSS_SCRIPT not in page and "<img" not in page and len(re.findall(r"<script\b", page)) == 2
    assert page.count("&lt;script&gt;alert(1)&lt;/script&gt;") >= 5 and "&#34;&gt;&lt;img src=x onerror=alert(1)&gt;" in page
    assert "a.<wbr>a.<wbr>" in page and "&lt;/script&gt;" in page
