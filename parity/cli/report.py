"""``parity report`` (HTML from a saved report.json) and ``parity diff`` (two runs, probe by
probe). They import only the report package (no torch)."""
from __future__ import annotations

import argparse
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from parity.errors import UsageError
from parity.report.data import ReportData


def load(path: str | Path) -> ReportData:
    """A saved report: report.json, or a run folder holding one."""
    p = Path(path)
    if p.is_dir():
        p = p / "report.json"
    if not p.is_file():
        raise UsageError(f"no report at '{path}'.", note="give a report.json written by `parity run` or its folder")
    from parity.report.schema import check_report
    from parity.validate import read_json

    data = read_json(p, UsageError, "report")
    if not isinstance(data, dict):
        raise UsageError(f"'{p}' is not a parity report (a JSON {type(data).__name__}, not an object).",
                         note="give a report.json written by `parity run`")
    check_report(data, f"'{p}' is not a parity report")
    try:
        return ReportData.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"'{p}' is not a parity report ({type(exc).__name__}: {exc}).",
                         note="give a report.json written by `parity run`") from None


@contextlib.contextmanager
def rendering(what: str) -> Iterator[None]:
    """Rendering a report the user gave: a value of a shape no schema rule caught (a report.json
    edited by hand) is an input error naming the file, never a traceback."""
    try:
        yield
    except (TypeError, ValueError, KeyError, AttributeError, IndexError, ZeroDivisionError, OverflowError) as exc:
        text = " ".join(str(exc).split())[:160]
        raise UsageError(f"report '{what}' holds a value parity cannot render ({type(exc).__name__}: {text}).",
                         note="give a report.json as `parity run` wrote it (--debug shows where)") from exc


def cmd_report(ns: argparse.Namespace) -> int:
    from parity.report import html

    from parity.outputs import Outputs

    out = Path(ns.output) if ns.output else Path(ns.run).with_suffix(".html") if Path(ns.run).is_file() else Path(ns.run) / "report.html"
    flag = "--output" if ns.output else "report page"
    with Outputs(files=[(flag, out)]) as outputs:
        report = load(ns.run)
        with rendering(ns.run):
            html.write(report, outputs.file(out))
    print(f"HTML report: {out}")
    return 0


def cmd_diff(ns: argparse.Namespace) -> int:
    from parity.report import compare

    from parity.outputs import Outputs

    with Outputs(files=[("--html", ns.html)]) as outputs:
        a, b = load(ns.run_a), load(ns.run_b)
        from parity.report.schema import check_same_kind

        check_same_kind(a, b, ns.run_a, ns.run_b)
        with rendering(f"{ns.run_a}' or '{ns.run_b}"):
            diff = compare.diff_reports(a, b)
            compare.render_console(diff, show_all=ns.all)
            if ns.html:
                from parity.report import html

                html.write_diff(diff, outputs.file(ns.html))
    if ns.html:
        print(f"HTML diff: {ns.html}")
    return 1 if diff.regressed else 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[common], help="render a saved report.json as one self-contained HTML page")
    p.add_argument("run", metavar="RUN.json", help="report.json written by `parity run` (or its folder)")
    p.add_argument("-o", "--output", metavar="PATH", help="HTML file (default: next to the report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diff", parents=[common], help="what changed between two runs, probe by probe (exit 1 when a probe broke)")
    p.add_argument("run_a", metavar="RUN_A.json", help="the earlier run (report.json or its folder)")
    p.add_argument("run_b", metavar="RUN_B.json", help="the later run")
    p.add_argument("--html", metavar="PATH", help="also write the diff as an HTML page")
    p.add_argument("--all", action="store_true", help="list unchanged probes too")
    p.set_defaults(func=cmd_diff)
