"""The ``parity`` command line. Exit codes: 0 parity holds, 1 divergence found,
2 usage or input error (one line, with a ``Note:``; ``--debug`` shows the traceback).

Only argparse and light modules are imported at the top, so ``parity --help`` is fast;
each command imports what it needs.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from parity import __version__
from parity.errors import ParityError
from parity.options import add_group, run_options

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


def _progress(quiet: bool) -> Callable[[str], None] | None:
    if quiet:
        return None
    t0 = time.perf_counter()

    def say(what: str) -> None:
        print(f"[parity {time.perf_counter() - t0:6.2f}s] {what} ...", file=sys.stderr, flush=True)

    return say


def run_id(ns: argparse.Namespace) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{ns.model}-{ns.candidate}-{ns.dtype}"


def cmd_run(ns: argparse.Namespace) -> int:
    from parity.report import console as console_report
    from parity.report import files
    from parity.run import CandidateFailed, execute

    opts = run_options(ns)
    out = Path(ns.out) if ns.out else Path("reports") / run_id(ns)
    try:
        if getattr(ns, "mode", "all") == "bisect":
            from parity.bisect import execute_bisect, render_builds

            result = execute_bisect(opts, _progress(ns.quiet), marks=getattr(ns, "bisect_marks", 1) or 1)
            console_report.render(result.report, show_all=not ns.failures_only)
            print(render_builds(result.report.summary))
        else:
            result = execute(opts, _progress(ns.quiet))
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


def cmd_generate(ns: argparse.Namespace) -> int:
    from parity import gencli

    return gencli.cmd_generate(ns, _progress(ns.quiet), "gen-" + run_id(ns))


def probe_shape(point: str, cfg: Any) -> str:
    """Canonical shape (no batch) of a probe point, from the model config."""
    h = getattr(cfg, "hidden_size", None)
    heads = getattr(cfg, "num_attention_heads", None)
    kv = getattr(cfg, "num_key_value_heads", None) or heads
    hd = getattr(cfg, "head_dim", None) or (h // heads if h and heads else None)
    rot = getattr(cfg, "rotary_dim", None) or int((hd or 0) * getattr(cfg, "partial_rotary_factor", 1.0))
    vocab = getattr(cfg, "padded_vocab_size", None) or getattr(cfg, "vocab_size", None)
    shapes = {
        "rope.cos": f"[T, {rot}]", "rope.sin": f"[T, {rot}]",
        "attn.q": f"[T, {heads}, {hd}]", "attn.q_rot": f"[T, {heads}, {hd}]",
        "attn.k": f"[T, {kv}, {hd}]", "attn.k_rot": f"[T, {kv}, {hd}]", "attn.v": f"[T, {kv}, {hd}]",
        "logits": f"[T, {vocab}]",
    }
    return shapes.get(point, f"[T, {h}]")


def cmd_probes(ns: argparse.Namespace) -> int:
    from parity import probes as canon
    from parity.probemap import find_map
    from parity.source import ModelSource

    source = ModelSource.resolve(ns.model, ns.checkpoint, trust_remote_code=ns.trust_remote_code, shape=ns.shape)
    pmap = find_map(source.preset.probe_map, ns.probe_dirs)
    names = canon.select(pmap.names(source.num_blocks), ns.probes)
    print(f"# {source.family.name}: probe map {pmap.path} ({len(names)} probes)")
    for name in names:
        b = pmap.bind(name, source.config)
        spec = b.spec
        where = f"{spec.io}" + (f"[{spec.index}]" if spec.index is not None else "") + (f"[{spec.kwarg}]" if spec.kwarg else "")
        extra = f" transform={spec.transform}" if spec.transform else ""
        print(f"{name:28s} {probe_shape(canon.parse(name).point, source.config):22s} {b.module} {where}{extra}")
    return EXIT_OK


def cmd_doctor(ns: argparse.Namespace) -> int:
    import importlib.util

    from parity.backends import CANDIDATES

    print(f"parity {__version__}, Python {sys.version.split()[0]}")
    for pkg in ("torch", "transformers", "safetensors", "numpy", "pandas", "rich", "tiktoken", "onnx", "onnxruntime", "tensorrt", "tensorrt_llm", "jinja2", "gguf", "accelerate"):
        print(f"  {pkg:14s} {'installed' if importlib.util.find_spec(pkg) else 'missing'}")
    print("candidates:")
    for bi in CANDIDATES.values():
        state = "available" if bi.is_available() else "unavailable (needs " + ", ".join(bi.missing()) + ")"
        print(f"  {bi.name:14s} {state} - {bi.summary}")
    if CANDIDATES["port"].is_available():
        from parity import faults

        print("faults (--candidate port --fault NAME[@BLOCK]):")
        for name, summary in faults.describe().items():
            print(f"  {name:18s} {summary}")
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parity", description="Layer-by-layer numerical parity debugger for LLM inference.")
    parser.add_argument("--version", action="version", version=f"parity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")

    p = sub.add_parser("run", parents=[common], help="compare a candidate against the reference, probe by probe")
    for g in ("model", "input", "candidate", "engine", "compare", "output"):
        add_group(p, g)
    p.set_defaults(func=cmd_run)

    from parity import gencli

    gencli.add_parser(sub, common, cmd_generate)

    p = sub.add_parser("bisect", parents=[common], help="find the first divergent probe marking few probes per build (binary search)")
    for g in ("model", "input", "candidate", "engine", "compare", "output"):
        add_group(p, g)
    p.add_argument("--bisect-marks", type=int, default=1, metavar="K", help="probes marked per build (default: 1)")
    p.set_defaults(func=cmd_run, mode="bisect")

    from parity.dump_cli import add_commands as _add_dump_commands

    _add_dump_commands(sub, common)

    p = sub.add_parser("probes", parents=[common], help="list the probes a model provides, with shapes and locations")
    add_group(p, "model")
    p.add_argument("--probes", "-p", action="append", metavar="GLOB", help="filter by glob")
    p.set_defaults(func=cmd_probes)

    from parity.report_cli import add_parsers as add_report_parsers

    add_report_parsers(sub, common)

    from parity.fetch import add_parser as add_fetch_parser

    add_fetch_parser(sub, common)

    p = sub.add_parser("doctor", parents=[common], help="which packages and candidates are available here")
    p.set_defaults(func=cmd_doctor)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        return EXIT_USAGE
    try:
        return int(ns.func(ns))
    except ParityError as exc:
        if ns.debug:
            raise
        print(f"parity: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
