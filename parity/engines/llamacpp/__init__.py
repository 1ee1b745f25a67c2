"""The ``llamacpp`` engine: a GGUF file run by llama.cpp (llama-cpp-python), probes from its
graph's eval callback. Which file runs decides the verdict's dtype: ``prepare`` returns the run
options with it."""
from __future__ import annotations

from pathlib import Path

from parity.engines.contract import Engine, Progress, needs_candidate, runner_create
from parity.errors import UsageError
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    if opts.gguf and not Path(opts.gguf).exists():
        raise UsageError(f"--gguf {opts.gguf}: no such file.", note="check the path")
    needs_candidate(opts, (("--gguf", "gguf"), ("--gguf-type", "gguf_type")), "llamacpp")


def prepare(opts: RunOptions, progress: Progress | None = None) -> RunOptions:
    from parity.engines.llamacpp import runner

    return runner.prepare(opts, progress)


ENGINE = Engine(
    name="llamacpp",
    summary="a GGUF file run by llama.cpp (llama-cpp-python), probes from its graph's eval callback",
    requires=("llama_cpp", "gguf"),
    install="`make llamacpp` (or pip install 'parity-debugger[llamacpp]'): pip compiles llama.cpp, ~4-15 min on 2 cores",
    create=runner_create("parity.engines.llamacpp.runner"),
    check=check,
    prepare=prepare,
    flags=(
        Opt(("--gguf",), {"metavar": "FILE", "help": "--candidate llamacpp: the GGUF file llama.cpp runs (default: the --checkpoint GGUF, a fetched model's GGUF, else the reference converted by llama.cpp's convert_hf_to_gguf.py)"}),
        Opt(("--gguf-type",), {"choices": ["f32", "f16", "bf16", "q8_0"], "help": "--candidate llamacpp: convert the reference's weights to this GGUF type (default: --dtype's; q8_0: the reference reads the same file dequantized)"}),
    ),
)
