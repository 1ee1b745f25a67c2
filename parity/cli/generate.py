"""``parity generate``: its options and command. Imported by the CLI without torch; the
decode machinery (parity.run.generate) is imported only when the command runs."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import add_groups, check_options, produce, run_id, with_model
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
    add_groups(p, ("model", "input", "candidate"))
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

    from parity.report import generation as gen_report  # light: no torch

    out = Path(ns.out) if ns.out else Path("reports") / ("gen-" + run_id(ns))
    result = produce(ns, out, lambda prog: _execute(opts, prog), lambda r: gen_report.render(r.report),
                     lambda r, d: gen_report.write(r.report, d), _write_html)
    return 0 if result.passed else 1


def _execute(opts: Any, prog: Any) -> Any:  # torch is imported once the outputs are checked
    from parity.run.generate import execute

    return execute(opts, prog)


def _write_html(result: Any, path: Path) -> None:  # the output group's --html, where the HTML report exists
    from parity.report import html  # type: ignore[attr-defined]

    html.write(result.report, path)
