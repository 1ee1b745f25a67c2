"""The ``parity`` command line. Exit codes: 0 parity holds, 1 divergence found,
2 usage or input error (one line, with a ``Note:``; ``--debug`` shows the traceback),
3 an internal error (a bug in parity: one line, never 1).

One module per command (run and bisect, generate, dump and compare, probes and doctor,
report and diff, fetch), each with ``add_parser(s)``; only argparse and light modules are
imported at the top, so ``parity --help`` is fast: each command imports what it needs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from parity import __version__
from parity.cli import dump, eval as eval_cmd, fetch, generate, info, quant_sweep, report, run
from parity.cli.common import EXIT_INTERNAL, EXIT_USAGE
from parity.cli.streams import pipe_safe
from parity.errors import ParityError


class _Parser(argparse.ArgumentParser):
    """argparse with parity's one-line errors (``parity: error: ... Note: ...``, exit 2)."""

    def error(self, message: str) -> NoReturn:
        print(f"parity: error: {' '.join(message.split())}. Note: `{self.prog} --help` lists the options",
              file=sys.stderr)
        sys.exit(EXIT_USAGE)


def fallback_note(exc: ParityError, command: str) -> str:
    """What to do, for an error raised without a note of its own (most carry one)."""
    from parity import errors

    notes = {errors.ModelError: "`parity doctor` lists the model families and presets",
             errors.CheckpointError: "check the checkpoint file named above (--debug shows where it failed)",
             errors.ProbeError: "`parity probes` lists the probe names of a model",
             errors.BackendError: "`parity doctor` shows which engines are installed",
             errors.InputError: "check the input named above (--debug shows where it failed)"}
    for kind, note in notes.items():
        if isinstance(exc, kind):
            return note
    return f"`parity {command} --help` lists the options"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="parity", description="Layer-by-layer numerical parity debugger for LLM inference.")
    parser.add_argument("--version", action="version", version=f"parity {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    run.add_parsers(sub, common)  # run, bisect
    generate.add_parser(sub, common)
    eval_cmd.add_parser(sub, common)
    quant_sweep.add_parser(sub, common)
    dump.add_commands(sub, common)  # dump, compare
    info.add_parsers(sub, common)  # probes, doctor
    report.add_parsers(sub, common)  # report, diff
    fetch.add_parser(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; its exit code. A reader that closes stdout or stderr early (``| head``)
    changes nothing: the command finishes and returns its verdict's code (parity.cli.streams)."""
    with pipe_safe():
        return _main(argv)


def entry() -> None:
    """The ``parity`` console script (and ``python -m parity``): :func:`main`, then the exit.

    A run that used a GPU ends with os._exit once its output is flushed and the interpreter's
    exit functions have run: tearing down tens of GiB of device memory, pinned host buffers
    and the CUDA context object by object only delays the shell prompt (by up to seconds),
    and every file the command wrote is already closed. The process is parity's: transformers
    is imported without the packages a forward never uses (parity.loading.families)."""
    from parity.loading import families

    families.HIDE_UNUSED = True
    code = main()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_initialized():
        import atexit
        import contextlib
        import os

        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        atexit._run_exitfuncs()
        os._exit(code)
    sys.exit(code)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not getattr(ns, "func", None):
        parser.print_help()
        print("parity: error: no command given. Note: e.g. parity run --model qwen (parity run --help lists its "
              "options)", file=sys.stderr)
        return EXIT_USAGE
    try:
        return int(ns.func(ns))
    except ParityError as exc:
        if ns.debug:
            raise
        print(f"parity: error: {exc}" + ("" if exc.note else f" Note: {fallback_note(exc, ns.command)}"), file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # code parity runs (a port, remote model code) called sys.exit: never a verdict
        if ns.debug:
            raise
        print(f"parity: internal error: sys.exit({exc.code!r}) called during the command (not a verdict; rerun with "
              "--debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL
    except KeyboardInterrupt:
        print("parity: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - a bug in parity: never exit 1 ("the engine is broken")
        if ns.debug:
            raise
        text = " ".join(str(exc).split())[:300]
        print(f"parity: internal error: {type(exc).__name__}{': ' + text if text else ''} (a bug in parity, not a "
              "verdict; rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    sys.exit(main())
