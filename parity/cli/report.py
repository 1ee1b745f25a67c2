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
from parity.cli.common import say


#: what each command writes, by kind: its file in the run folder and the command that wrote it
KINDS = {"run": ("report.json", "parity run"), "generate": ("report.json", "parity generate"),
         "eval": ("report.json", "parity eval"), "quant-sweep": ("sweep.json", "parity quant-sweep")}


def read(path: str | Path) -> tuple[str, Path, Any]:
    """A saved report of any kind parity writes: (kind, file, its JSON). ``path`` is the file or
    the folder holding it (report.json, or a quant-sweep's sweep.json)."""
    from parity.validate import read_json

    p = Path(path)
    if p.is_dir():
        p = next((p / f for f in ("report.json", "sweep.json") if (p / f).is_file()), p / "report.json")
    if not p.is_file():
        raise UsageError(f"no report at '{path}'.", note="give a report.json (or sweep.json) written by parity, or its folder")
    data = read_json(p, UsageError, "report")
    if not isinstance(data, dict):
        raise UsageError(f"'{p}' is not a parity report (a JSON {type(data).__name__}, not an object).",
                         note="give a report.json written by `parity run`")
    return kind_of(data), p, data


def kind_of(data: dict[str, Any]) -> str:
    """run, generate, eval or quant-sweep: what wrote this report."""
    command = (data.get("run") or {}).get("command") if isinstance(data.get("run"), dict) else None
    if command == "quant-sweep" or ("table" in data and "probes" not in data):
        return "quant-sweep"
    if command == "eval" or ("eval" in data and "probes" not in data):
        return "eval"
    return "generate" if data.get("generation") else "run"


def load(path: str | Path) -> ReportData:
    """A saved run or generate report: report.json, or a run folder holding one."""
    kind, p, data = read(path)
    if kind not in ("run", "generate"):
        raise UsageError(f"'{p}' is a `{KINDS[kind][1]}` report, which has no probes to compare.",
                         note="`parity diff` compares two `parity run` or two `parity generate` reports; "
                              "`parity report` renders this one as HTML")
    return _report(p, data)


def _report(p: Path, data: dict[str, Any]) -> ReportData:
    from parity.report.schema import check_report

    check_report(data, f"'{p}' is not a parity report")
    try:
        return ReportData.from_dict(data)
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"'{p}' is not a parity report ({type(exc).__name__}: {exc}).",
                         note="give a report.json written by `parity run`") from None


def _check_doc(kind: str, p: Path, data: dict[str, Any]) -> None:
    """An eval or sweep document has the sections its page is drawn from."""
    need = {"eval": ("run", "summary", "eval"), "quant-sweep": ("run", "table")}[kind]
    missing = [k for k in need if not isinstance(data.get(k), (dict, list))]
    if missing:
        raise UsageError(f"'{p}' is not a `{KINDS[kind][1]}` report (no {', '.join(missing)}).",
                         note=f"give the {KINDS[kind][0]} `{KINDS[kind][1]}` wrote")


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
    """One HTML page from a saved report of any kind parity writes (run, generate, eval,
    quant-sweep)."""
    from parity.outputs import Outputs

    src = Path(ns.run)
    out = Path(ns.output) if ns.output else src.with_suffix(".html") if src.is_file() else src / "report.html"
    flag = "--output" if ns.output else "report page"
    with Outputs(files=[(flag, out)]) as outputs:
        kind, p, data = read(ns.run)
        with rendering(ns.run):
            if kind == "eval":
                from parity.report import evaluation

                _check_doc(kind, p, data)
                evaluation.write_html(data, outputs.file(out))
            elif kind == "quant-sweep":
                from parity.report import quant

                _check_doc(kind, p, data)
                quant.write_sweep_html(data, outputs.file(out))
            else:
                from parity.report import html

                html.write(_report(p, data), outputs.file(out))
    say(f"HTML report: {out}")
    return 0


def cmd_diff(ns: argparse.Namespace) -> int:
    from parity.report import compare

    from parity.outputs import Outputs

    with Outputs(files=[("--html", ns.html)]) as outputs:
        a, b = load(ns.run_a), load(ns.run_b)
        kinds = compare.kind(a), compare.kind(b)
        if kinds[0] != kinds[1]:
            raise UsageError(f"'{ns.run_a}' is a `parity {kinds[0]}` report and '{ns.run_b}' a `parity {kinds[1]}` "
                             "report: their rows are not the same things (probes vs decode steps).",
                             note="diff two `parity run` reports, or two `parity generate` reports")
        with rendering(f"{ns.run_a}' or '{ns.run_b}"):
            diff = compare.diff_generations(a, b) if kinds[0] == "generate" else compare.diff_reports(a, b)
            compare.render_console(diff, show_all=ns.all)
            if ns.html:
                from parity.report import html

                html.write_diff(diff, outputs.file(ns.html))
    if ns.html:
        say(f"HTML diff: {ns.html}")
    return 1 if diff.regressed else 0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("report", parents=[common], help="render a saved report (run, generate, eval, quant-sweep) "
                       "as one self-contained HTML page")
    p.add_argument("run", metavar="RUN.json", help="report.json (sweep.json) written by parity, or its folder")
    p.add_argument("-o", "--output", metavar="PATH", help="HTML file (default: next to the report)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("diff", parents=[common], help="what changed between two runs, probe by probe, or two generate runs, step by step "
                       "(exit 1 when a probe or step broke)")
    p.add_argument("run_a", metavar="RUN_A.json", help="the earlier run (report.json or its folder)")
    p.add_argument("run_b", metavar="RUN_B.json", help="the later run")
    p.add_argument("--html", metavar="PATH", help="also write the diff as an HTML page")
    p.add_argument("--all", action="store_true", help="list unchanged probes too")
    p.set_defaults(func=cmd_diff)
