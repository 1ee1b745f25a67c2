"""``parity run`` and ``parity bisect``: a candidate against the reference, probe by probe."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_DIVERGED, EXIT_OK, progress, run_id
from parity.options import add_group, run_options


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="compare a candidate against the reference, probe by probe")
    for g in ("model", "input", "candidate", "engine", "compare", "output"):
        add_group(p, g)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bisect", parents=[common], help="find the first divergent probe marking few probes per build (binary search)")
    for g in ("model", "input", "candidate", "engine", "compare", "output"):
        add_group(p, g)
    p.add_argument("--bisect-marks", type=int, default=1, metavar="K", help="probes marked per build (default: 1)")
    p.set_defaults(func=cmd_run, mode="bisect")


def cmd_run(ns: argparse.Namespace) -> int:
    from parity.report import console as console_report
    from parity.report import files
    from parity.run.candidate import execute
    from parity.run.common import CandidateFailed

    opts = run_options(ns)
    out = Path(ns.out) if ns.out else Path("reports") / run_id(ns)
    try:
        if getattr(ns, "mode", "all") == "bisect":
            from parity.run.bisect import execute_bisect, render_builds

            result = execute_bisect(opts, progress(ns.quiet), marks=getattr(ns, "bisect_marks", 1) or 1)
            console_report.render(result.report, show_all=not ns.failures_only)
            print(render_builds(result.report.summary))
        else:
            result = execute(opts, progress(ns.quiet))
            console_report.render(result.report, show_all=not ns.failures_only)
    except CandidateFailed as exc:  # the candidate raised mid-forward: keep what it got to
        console_report.render(exc.report, show_all=not ns.failures_only)
        if not ns.no_files:
            paths = files.write(exc.report, out)
            exc.note = f"partial report: {paths['json']}; --debug shows the traceback"
        raise
    report = result.report
    if not ns.no_files:
        paths = files.write(report, out)
        print(f"Reports: {paths['json']}  {paths['csv']}")
    if getattr(ns, "html", None):
        from parity.report import html

        print(f"HTML report: {html.write(report, ns.html)}")
    return EXIT_OK if report.summary["verdict"] == "pass" else EXIT_DIVERGED
