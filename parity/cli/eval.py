"""``parity eval``: task-level parity -- greedy generations of the reference and a candidate
over a prompt set, token agreement and ROUGE (parity.run.evaluate)."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_DIVERGED, EXIT_OK, add_groups, check_options, produce, run_id, with_model
from parity.options import add_group


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("eval", parents=[common], help="greedy generations on reference and candidate over a prompt set: "
                       "token agreement, exact match, ROUGE-1/2/L/Lsum")
    add_groups(p, ("model", "input", "candidate", "quant"))
    g = p.add_argument_group("evaluation")
    g.add_argument("--dataset", metavar="FILE.jsonl", help="one JSON object per line: prompt or article, optional "
                   "target/highlights (default: the built-in summarization set)")
    g.add_argument("--limit", type=int, metavar="N", help="first N prompts only")
    g.add_argument("--max-new-tokens", type=int, default=48, metavar="N", help="greedy tokens per prompt at most (default: 48)")
    g.add_argument("--raw", dest="chat", action="store_false", help="prompts as plain text (default: the model's chat format)")
    g.add_argument("--stop-token", dest="stop_tokens", action="append", metavar="TEXT", help="chat stop token text (default: the preset's)")
    g.add_argument("--candidate-generation-config", metavar="FILE", help="the candidate's generation_config.json")
    g.add_argument("--min-rougel", type=float, metavar="X", help="exit 1 when the mean ROUGE-L (candidate vs reference, "
                   "0-100) is below X (default: report only, exit 0)")
    add_group(p, "output")
    p.set_defaults(func=cmd_eval, chat=True)


def options(ns: argparse.Namespace) -> Any:
    from dataclasses import fields

    from parity.options import GenerateOptions

    names = {f.name for f in fields(GenerateOptions)}
    return GenerateOptions(**{k: v for k, v in vars(ns).items() if k in names and v is not None})


def check_eval(ns: argparse.Namespace, opts: Any) -> None:
    from parity.errors import UsageError

    check_options(opts)  # the eval-only candidate "reference" (the reference against itself) passes it
    from parity.run.evaluate import check_max_new

    if ns.limit is not None and ns.limit < 1:
        raise UsageError(f"--limit {ns.limit}: need at least 1 prompt.", note="leave it out for every prompt of the set")
    check_max_new(ns.max_new_tokens)
    if ns.dataset is not None and not Path(ns.dataset).is_file():
        raise UsageError(f"--dataset {ns.dataset}: no such file.", note="a JSONL file, one JSON object per line")
    if ns.min_rougel is not None and not 0 <= ns.min_rougel <= 100:
        raise UsageError(f"--min-rougel {ns.min_rougel}: need a number in 0..100.", note="a ROUGE-L F1 in percent")


def cmd_eval(ns: argparse.Namespace) -> int:
    opts = with_model(options(ns), ns)
    check_eval(ns, opts)

    from parity.report import evaluation
    from parity.run.evaluate import execute, load_items

    load_items(ns.dataset, ns.limit)  # a malformed file fails before any model is built
    out = Path(ns.out) if ns.out else Path("reports") / ("eval-" + run_id(ns))
    doc = produce(ns, out, lambda prog: execute(opts, ns.dataset, ns.limit, prog), evaluation.render,
                  evaluation.write, evaluation.write_html)
    rl = doc["eval"]["overall"]["rougeL"]
    return EXIT_DIVERGED if ns.min_rougel is not None and (rl is None or rl < ns.min_rougel) else EXIT_OK
