"""The ``dump`` engine: tensors some runtime already wrote (a ``parity dump`` folder,
TensorRT-LLM's ``tllm_debug/`` .npy files, ``rank<N>/*.pt``; the format: parity.loading.dumps)."""
from __future__ import annotations

from pathlib import Path

from parity.engines.contract import Engine, needs_candidate, runner_create
from parity.errors import UsageError
from parity.options import Opt, RunOptions


NEEDS_DUMP = "a folder written by `parity dump`, a tllm_debug/ folder, or rank<N>/*.pt dumps"


def check(opts: RunOptions) -> None:
    """--dump and --dump-map: given where needed, present, and their maps and manifest valid."""
    from parity.loading import dumps

    if opts.candidate == "dump" and not opts.dump:
        raise UsageError("--candidate dump needs --dump DIR.", note=NEEDS_DUMP)
    for flag, path, kind in (("--dump", opts.dump, "folder"), ("--dump-map", opts.dump_map, "file")):
        if path and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such {kind}.", note="check the path")
    needs_candidate(opts, (("--dump", "dump"), ("--dump-map", "dump_map")), "dump")
    if opts.dump_map:
        dumps.load_name_map(opts.dump_map)
    if opts.candidate == "dump" and opts.dump and (Path(opts.dump) / dumps.MANIFEST).is_file():
        dumps.read_manifest(Path(opts.dump))


ENGINE = Engine(
    name="dump",
    summary="tensors dumped by any runtime (--dump DIR): parity dumps, tllm_debug/ .npy, rank<N>/*.pt",
    requires=("safetensors",),
    create=runner_create("parity.engines.dump.runner"),
    check=check,
    flags=(
        Opt(("--dump",), {"metavar": "DIR", "help": "--candidate dump: folder of dumped tensors (parity dump, tllm_debug/, rank<N>/*.pt)"}),
        Opt(("--dump-map",), {"metavar": "TOML", "help": "--candidate dump: map from dumped tensor names to canonical probes"}),
    ),
)
