"""HTML report and diff without a browser: escaping, embedded data, CLI commands."""
from __future__ import annotations

import json
import re
from pathlib import Path

from parity.report import compare, files, html
from report_samples import XSS_SCRIPT, hostile, sample_reports


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
