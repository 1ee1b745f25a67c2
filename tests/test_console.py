"""The console table: readable at 80, 100 and 160 columns, probe names whole, failures always
shown, long tables collapsed; and a real run in a terminal (a pty) at 100 columns."""
from __future__ import annotations

import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from parity.report import console
from report_samples import sample_reports

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "reports" / "test-artifacts"
ANSI = re.compile(r"\x1b\[[0-9;?]*[a-zA-Z]")


def table_lines(report, width: int, **kw) -> list[str]:
    out = Console(record=True, width=width, color_system=None)
    console.render(report, console=out, **kw)
    text = out.export_text()
    lines = text.splitlines()
    head = report.summary["message"].split(" | ")[0] + " | "  # where the (wrapped) verdict starts
    return lines[:next(i for i, ln in enumerate(lines) if ln.startswith(head))]  # the title and the table


@pytest.mark.parametrize("width", [80, 100, 160])
def test_table_fits_and_names_every_probe(width: int) -> None:
    broken, _ = sample_reports()
    lines = table_lines(broken, width, every_row=True)
    assert max(len(ln.rstrip()) for ln in lines[1:]) <= width
    body = "\n".join(lines)
    assert all(re.search(rf"^{re.escape(r.name)}\s", body, re.M) for r in broken.probes)
    assert "FAIL" in body and "PASS" in body and "…" not in body
    header = next(ln for ln in lines if ln.startswith("probe ")).split()  # the title may wrap
    assert header[:2] == ["probe", "max"] and header[-1] == "status"
    if width >= 100:
        assert "excess" in header and "cosine" in header


def test_wide_table_has_every_statistic() -> None:
    broken, _ = sample_reports()
    header = next(ln for ln in table_lines(broken, 260, wide=True) if ln.startswith("probe "))
    assert all(c in header for c in ("ref mean", "cand sum", "mean abs err", "max rel err", "excess", "cosine"))


def test_long_tables_collapse_passing_runs_but_keep_failures() -> None:
    broken, _ = sample_reports()
    assert len(broken.probes) > console.LONG_TABLE
    lines = table_lines(broken, 100)
    assert any(re.match(r"\.\.\. \d+ more", ln) for ln in lines)
    fails = [r.name for r in broken.probes if r.status == "fail"]
    shown = {ln.split()[0] for ln in lines[3:] if ln.strip()}  # after the title, header and rule
    assert set(fails[:console.SHOWN_FAILURES]) <= shown
    hidden = sum(int(m.group(1)) for ln in lines if (m := re.match(r"\.\.\. (\d+) more", ln)))
    assert hidden + len([n for n in shown if not n.startswith("...")]) == len(broken.probes)


def test_run_in_a_terminal_at_100_columns() -> None:
    """A pty, COLUMNS=100: what a user sees. The capture is kept for looking at."""
    env = {**os.environ, "COLUMNS": "100", "TERM": "xterm-256color"}
    primary, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "parity", "run", "--model", "qwen", "--candidate", "port", "--fault",
                             "silu-wrong-branch@2", "--no-files", "-q"], stdout=secondary, stderr=secondary, env=env)
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=300)
    os.close(primary)
    text = ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r", "")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "console-100.txt").write_text(text)
    assert proc.returncode == 1
    table = text.split("FAILED |")[0].splitlines()
    assert max(len(ln.rstrip()) for ln in table) <= 100
    assert "blocks.2.mlp_out" in text and "FAIL" in text and "excess" in table[1]
