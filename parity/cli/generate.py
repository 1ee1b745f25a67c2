"""``parity generate``: its options and command. Imported by the CLI without torch; the
decode machinery (parity.run.generate) is imported only when the command runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import check_options, done, progress, run_id, with_model, say
from parity.options import VERDICT_OPTS, Opt, add_group

GENERATION_OPTS: list[Opt] = [
    Opt(("--max-new-tokens",), {"type": int, "default": 16, "metavar": "N", "help": "greedy decode steps at most (default: 16)"}),
    Opt(("--teacher-forcing",), {"action": "store_true", "help": "feed the reference's tokens to the candidate, so comparison continues past a flip"}),
    Opt(("--stop-token",), {"dest": "stop_tokens", "action": "append", "metavar": "TEXT", "help": "chat stop token text, repeatable (default: the preset's [chat] stop_tokens)"}),
    Opt(("--candidate-generation-config",), {"metavar": "FILE", "help": "the candidate's generation_config.json (default: the reference's settings)"}),
    Opt(("--overlap-k",), {"type": int, "default": 5, "metavar": "K", "help": "top-k overlap per step (default: 5)"}),
    *VERDICT_OPTS,
    Opt(("--atol",), {"type": float, "help": "logits absolute tolerance (implies --tolerance absolute; default: the preset's per-dtype table)"}),
    Opt(("--rtol",), {"type": float, "help": "logits relative tolerance (implies --tolerance absolute)"}),
]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("generate", parents=[common], help="greedy decode on both sides with KV cache; compare step by step")
    for g in ("model", "input", "candidate"):
        add_group(p, g)
    group = p.add_argument_group("generation")
    for o in GENERATION_OPTS:
        group.add_argument(*o.flags, **o.kwargs)
    add_group(p, "output")
    p.set_defaults(func=cmd_generate)


def options(ns: argparse.Namespace) -> Any:
    from dataclasses import fields

    from parity.options import GenerateOptions

    names = {f.name for f in fields(GenerateOptions)}
    given = {k: v for k, v in vars(ns).items() if k in names and v is not None}
    return GenerateOptions(**given)


def cmd_generate(ns: argparse.Namespace) -> int:
    opts = with_model(options(ns), ns)
    check_options(opts)  # before torch is imported

    from parity.outputs import Outputs

    out = Path(ns.out) if ns.out else Path("reports") / ("gen-" + run_id(ns))
    with Outputs(None if ns.no_files else out, [("--html", getattr(ns, "html", None))]) as outputs:
        return _generate(ns, opts, outputs)


def _generate(ns: argparse.Namespace, opts: Any, outputs: Any) -> int:
    from parity.report import generation as gen_report
    from parity.run.generate import execute
    prog = progress(ns.quiet)
    try:
        result = execute(opts, prog)
    finally:
        done(prog)
    gen_report.render(result.report)
    lines = []
    if not ns.no_files:
        paths = gen_report.write(result.report, outputs.dir)
        lines.append(f"Reports: {outputs.final(paths['json'])}  {outputs.final(paths['csv'])}")
    if getattr(ns, "html", None):  # the output group's --html, where the HTML report exists
        from parity.report import html  # type: ignore[attr-defined]

        html.write(result.report, outputs.file(ns.html))
        lines.append(f"HTML report: {ns.html}")
    outputs.commit()
    for line in lines:
        say(line)
    return 0 if result.passed else 1
