"""``parity run`` and ``parity bisect``: a candidate against the reference, probe by probe."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_DIVERGED, EXIT_OK, add_groups, check_options, done, progress, run_id, say, with_model
from parity.options import run_options


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("run", parents=[common], help="compare a candidate against the reference, probe by probe")
    add_groups(p, ("model", "input", "candidate", "quant", "engine", "compare", "output"))
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("bisect", parents=[common], help="find the first divergent probe marking few probes per build (binary search)")
    add_groups(p, ("model", "input", "candidate", "engine", "compare", "output"))
    p.add_argument("--bisect-marks", type=int, default=1, metavar="K", help="probes marked per build (default: 1)")
    p.set_defaults(func=cmd_run, mode="bisect")


def cmd_run(ns: argparse.Namespace) -> int:
    opts = with_model(run_options(ns), ns)
    check_options(opts)  # before torch is imported
    marks = getattr(ns, "bisect_marks", 1)
    if marks is not None and marks < 1:
        from parity.errors import UsageError

        raise UsageError(f"--bisect-marks {marks}: need at least 1 probe per build.", note="e.g. --bisect-marks 2")
    from parity.outputs import Outputs

    out = Path(ns.out) if ns.out else Path("reports") / run_id(ns)
    with Outputs(None if ns.no_files else out, [("--html", getattr(ns, "html", None))]) as outputs:
        return _run(ns, opts, outputs, marks or 1)


def _run(ns: argparse.Namespace, opts: Any, outputs: Any, marks: int) -> int:
    from parity.report import console as console_report
    from parity.report import files
    from parity.run.candidate import execute
    from parity.run.common import CandidateFailed

    prog = progress(ns.quiet)
    bisect = getattr(ns, "mode", "all") == "bisect"
    try:
        if bisect:
            from parity.run.bisect import execute_bisect, render_builds

            result = execute_bisect(opts, prog, marks=marks)
        else:
            result = execute(opts, prog)
    except CandidateFailed as exc:  # the candidate raised mid-forward: keep what it got to
        done(prog)
        console_report.render(exc.report, **_table(ns))
        if not ns.no_files:
            paths = files.write(exc.report, outputs.dir)
            exc.note = f"partial report: {outputs.final(paths['json'])}; --debug shows the traceback"
            outputs.commit()
        raise
    finally:
        done(prog)
    report = result.report
    console_report.render(report, **_table(ns))
    if bisect:
        for line in render_builds(report.summary).splitlines():
            say(line)
    lines = []
    if not ns.no_files:
        paths = files.write(report, outputs.dir)
        tensors = files.write_tensors(result, outputs.dir) if ns.keep_tensors else None
        lines.append(f"Reports: {outputs.final(paths['json'])}  {outputs.final(paths['csv'])}"
                     + (f"  {outputs.final(tensors)}" if tensors else ""))
    if getattr(ns, "html", None):
        from parity.report import html

        html.write(report, outputs.file(ns.html))
        lines.append(f"HTML report: {ns.html}")
    outputs.commit()  # every file in place, or none
    for line in lines:
        say(line)
    return EXIT_OK if report.summary.passed else EXIT_DIVERGED


def _table(ns: argparse.Namespace) -> dict[str, bool]:
    """The console table's options (parity.report.console.render)."""
    return {"show_all": not ns.failures_only, "wide": getattr(ns, "wide", False), "every_row": getattr(ns, "every_row", False)}
