"""``parity quant-sweep``: fp16 and each quantization scheme against the float32 reference,
one table (parity.run.quant_sweep)."""
from __future__ import annotations

import argparse
from datetime import datetime
from pathlib import Path
from typing import Any

from parity.cli.common import EXIT_DIVERGED, EXIT_OK, add_groups, check_options, produce, with_model
from parity.options import add_group, run_options


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("quant-sweep", parents=[common], help="fp16 and int8-wo, int4-wo, int8-kv, w8a8-sq, fp8 (ModelOpt) "
                       "against the float32 reference: one table (exit 1 when a scheme is over its budget)")
    add_groups(p, ("model", "input"))
    g = p.add_argument_group("sweep")
    g.add_argument("--schemes", metavar="A,B,...", help="schemes, comma-separated (default: int8-wo,int4-wo,int8-kv,w8a8-sq,fp8)")
    g.add_argument("--dtype", default="fp16", help="activation dtype of the twin and the schemes (default: fp16)")
    g.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto (default: cuda when present)")
    g.add_argument("--ref-device", help="reference device (default: the candidate's)")
    g.add_argument("--no-rouge", dest="rouge", action="store_false", help="skip the greedy outputs and ROUGE-L")
    g.add_argument("--dataset", metavar="FILE.jsonl", help="prompts for ROUGE-L (default: the built-in summarization set)")
    g.add_argument("--limit", type=int, metavar="N", help="first N prompts only")
    g.add_argument("--max-new-tokens", type=int, default=32, metavar="N", help="greedy tokens per prompt (default: 32)")
    add_group(p, "output")
    p.set_defaults(func=cmd_sweep, candidate="torch")


def check_sweep(ns: argparse.Namespace) -> None:
    """--limit, --max-new-tokens and --dataset: values that do something, and files that exist."""
    from parity.errors import UsageError

    if ns.limit is not None and ns.limit < 1:
        raise UsageError(f"--limit {ns.limit}: need at least 1 prompt.", note="leave it out for every prompt of the set")
    from parity.run.evaluate import check_max_new

    check_max_new(ns.max_new_tokens)
    if not ns.rouge:
        for flag, given in (("--dataset", ns.dataset), ("--limit", ns.limit)):
            if given is not None:
                raise UsageError(f"{flag} does nothing with --no-rouge (the prompts are only generated for ROUGE-L).",
                                 note=f"drop {flag}, or drop --no-rouge")
    if ns.dataset is not None:
        from parity.run.evaluate import load_items

        load_items(ns.dataset, ns.limit)


def cmd_sweep(ns: argparse.Namespace) -> int:
    from parity.engines.quant import schemes
    from parity.errors import UsageError

    opts = with_model(run_options(ns), ns)
    check_options(opts)
    names = [n.strip() for n in (ns.schemes if ns.schemes is not None else ",".join(schemes.SWEEP)).split(",") if n.strip()]
    if not names:
        raise UsageError(f"--schemes {ns.schemes!r} names no scheme.", note="valid schemes: " + ", ".join(schemes.SCHEMES))
    for n in names:
        schemes.get(n)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UsageError(f"--schemes names {', '.join(twice)} more than once.", note="each scheme once: its row would repeat")
    check_sweep(ns)

    from parity.report import quant as quant_report
    from parity.run.quant_sweep import execute

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(ns.out) if ns.out else Path("reports") / f"{stamp}-{opts.model}-quant-sweep"
    doc = produce(ns, out, lambda prog: execute(opts, names, prog, rouge=ns.rouge, dataset=ns.dataset, limit=ns.limit,
                                                max_new_tokens=ns.max_new_tokens),
                  quant_report.render_sweep, quant_report.write_sweep, quant_report.write_sweep_html)
    # exit 1 when a scheme that ran is over its budget (what a CI step gating on the sweep
    # expects); a scheme that could not run here (needs CUDA) is listed, not a divergence
    return EXIT_DIVERGED if quant_report.diverged_schemes(doc) else EXIT_OK
