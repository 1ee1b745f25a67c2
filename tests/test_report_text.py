"""Text renderers of calibrated (schema 1.1) and absolute reports: the console table, the
pytest failure explanation, the generation table and `parity diff`."""
from __future__ import annotations

import math
import re

import pytest
from rich.console import Console

from parity.verdict.calibrate import DEFAULT_BUDGET

from parity.report import compare, console, failure, generation
from parity.report.data import ReportData
from report_samples import absolute_reports, generation_report, sample_reports


def _text(render, *args) -> str:
    out = Console(record=True, width=260, color_system=None)
    render(*args, console=out)
    return out.export_text()


def _header(text: str) -> list[str]:
    line = next(ln for ln in text.splitlines() if "probe" in ln and "status" in ln or "step" in ln and "status" in ln)
    if "┃" in line:
        return [c.strip() for c in line.strip("┃│ ").split("┃")]
    return [c.strip() for c in re.split(r"\s{2,}", line.strip())]  # a table without vertical rules


@pytest.mark.parametrize(("x", "want"), [(0.57, "x0.57"), (1.0, "x1"), (1.3, "x1.3"), (455.4, "x455"),
                                         (24000.0, "x2.4e+04"), (math.inf, "xinf"), (None, "-")])
def test_excess_format(x: float | None, want: str) -> None:
    assert console.xfmt(x) == want


def test_console_excess_column_only_when_calibrated() -> None:
    calibrated, _ = sample_reports()
    cols = _header(_text(console.render, calibrated))
    assert cols[cols.index("max abs err") + 1:cols.index("max abs err") + 3] == ["excess", "isolated err"]
    assert console.xfmt(calibrated.row("blocks.2.mlp_out").excess) in _text(console.render, calibrated)
    absolute, _ = absolute_reports()
    cols = _header(_text(console.render, absolute))
    assert "excess" not in cols and cols[cols.index("max abs err") + 1] == "isolated err"


def test_failure_text_calibrated_against_twin() -> None:
    broken, _ = sample_reports()
    text = failure.explain(broken)
    r = broken.row("blocks.2.mlp_out")
    x = console.xfmt(r.excess)
    assert f"excess {x} > budget x{DEFAULT_BUDGET:g} over the precision twin ({broken.run['verdict']['twin']['label']})" in text
    assert f"vs twin {console.fmt(r.twin_nrmse, 3)}" in text and f"vs twin {console.fmt(r.twin_max_abs_err, 3)}" in text
    assert "atol" not in text and "elements over" not in text
    head = next(ln for ln in text.splitlines() if ln.strip().startswith("probe"))
    assert head.split() == ["probe", "status", "max_abs", "twin_max", "excess", "nrmse", "cosine"]
    assert any(ln.lstrip().startswith("> blocks.2.mlp_out") and x in ln for ln in text.splitlines())


def test_failure_text_absolute_keeps_tolerances() -> None:
    broken, _ = absolute_reports()
    text = failure.explain(broken)
    assert "vs tolerance atol 0.02 + rtol 0.02*|ref|" in text and "excess" not in text
    head = next(ln for ln in text.splitlines() if ln.strip().startswith("probe"))
    assert head.split() == ["probe", "status", "max_abs", "atol", "rtol", "nrmse", "cosine"]


def test_generation_console_excess_per_step() -> None:
    rep = generation_report()
    text = _text(generation.render, rep)
    cols = _header(text)
    assert cols[cols.index("max abs err") + 1] == "excess" and "x1" in text
    d = rep.to_dict()
    d["generation"]["tolerance"] = "absolute"
    for s in d["generation"]["steps"]:
        s["excess"] = None
    assert "excess" not in _header(_text(generation.render, ReportData.from_dict(d)))
    assert "excess" in generation.steps_csv(rep).splitlines()[0].split(",")


def test_diff_shows_both_runs_excess() -> None:
    broken, fixed = sample_reports()
    d = compare.diff_reports(broken, fixed)
    row = next(r for r in d.rows if r.name == "blocks.2.mlp_out")
    assert row.excess_a == broken.row(row.name).excess and row.excess_b == fixed.row(row.name).excess
    assert d.has_excess and "excess_a" in d.to_dict()["rows"][0]
    out = Console(record=True, width=200, color_system=None)
    compare.render_console(d, console=out)
    text = out.export_text()
    assert "excess A" in text and "excess B" in text and console.xfmt(row.excess_a) in text
    a, b = absolute_reports()
    assert not compare.diff_reports(a, b).has_excess


def test_csv_is_written_without_pandas_and_reads_back_like_a_dataframe() -> None:
    import io

    from parity.report import files

    broken, _ = sample_reports()
    text = files.to_csv(broken)
    pd = pytest.importorskip("pandas")
    ours = pd.read_csv(io.StringIO(text))
    frame = broken.to_pandas()
    assert list(frame.columns) == list(ours.columns) and len(frame) == len(broken.probes)
    pd.testing.assert_frame_equal(ours, pd.read_csv(io.StringIO(frame.to_csv(index=False))))
