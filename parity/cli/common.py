"""What the commands share: exit codes, progress lines, run ids."""
from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path
from datetime import datetime
from typing import Any

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3


class StageProgress:
    """A command's progress, stage by stage (``progress("building reference")`` starts one;
    ``progress.update(text)`` refreshes the current one, e.g. a decode step).

    On a terminal: a live spinner line (rich) for the running stage with its elapsed time,
    replaced by a line with its duration when the next one starts. Elsewhere (CI logs, pipes):
    one timestamped line per stage, no updates. Nothing at all with -q (progress() is None)."""

    def __init__(self, live: bool | None = None) -> None:
        self.t0 = self.started = time.perf_counter()
        self.live = sys.stderr.isatty() if live is None else live
        self.current: str | None = None
        self._status: Any = None
        from parity.report.term import make_console

        self.console = make_console(stderr=True)

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if not self.live:  # wrapped at the console's width, continuation lines under the text
            from parity.report.term import prose

            prose(self.console, f"{what} ...", lead=f"[parity {now - self.t0:6.2f}s] ")
            self.console.file.flush()
            return
        self._done(now)
        self.current, self.started = what, now
        self._status = self.console.status(f"{what} ...", spinner="dots")
        self._status.start()

    def update(self, text: str) -> None:
        if self.live and self._status is not None:
            self._status.update(f"{self.current}: {text}")

    def _done(self, now: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
            from parity.report.term import prose

            prose(self.console, f"{self.current} ({now - self.started:.1f} s)", style="dim")

    def close(self) -> None:
        """End the running stage (before the command prints its results)."""
        if self.live:
            self._done(time.perf_counter())


def say(text: str, lead: str = "") -> None:
    """A line of a command's output on stdout, wrapped between words at the console's width
    (continuation lines indented under the text after ``lead``)."""
    from parity.report.term import make_console, prose

    prose(make_console(), text, lead=lead)


def progress(quiet: bool) -> StageProgress | None:
    return None if quiet else StageProgress()


def done(progress: StageProgress | None) -> None:
    if progress is not None:
        progress.close()


def run_id(ns: argparse.Namespace) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = getattr(ns, "model", None) or infer_model(getattr(ns, "checkpoint", None))
    return f"{stamp}-{model}-{ns.candidate}-{ns.dtype}"


DTYPES = ("fp32", "fp16", "bf16", "float32", "float16", "bfloat16")
DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_options(opts: Any) -> None:
    """The checks a run's options need no model, torch or engine for -- before any of them is
    imported or built, so that a typo costs milliseconds, not a reference forward. (The
    backends check the same things again where they are used.)"""
    from parity import engines
    from parity.errors import UsageError
    from parity.loading import families
    from parity.verdict.calibrate import check_budget, resolve_mode

    families.get(opts.model)
    if opts.dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{opts.dtype}'.", note="valid dtypes: " + ", ".join(DTYPES))
    for flag, dev in (("--device", opts.device), ("--ref-device", opts.ref_device)):
        if dev is not None and not DEVICE.match(dev):
            raise UsageError(f"unknown device '{dev}' ({flag}).", note="valid devices: cpu, cuda, cuda:N, auto")
    if opts.tokens is not None and opts.tokens < 1:
        raise UsageError(f"--tokens {opts.tokens}: need at least 1 token.", note="e.g. --tokens 32")
    from parity.loading.limits import MAX_TOKENS

    if opts.tokens is not None and opts.tokens > MAX_TOKENS:
        raise UsageError(f"--tokens {opts.tokens}: parity compares at most {MAX_TOKENS} tokens in one run.",
                         note="a few dozen tokens find most divergences")
    bi = engines.info(opts.candidate) if opts.candidate != "reference" else None
    check_tolerances(opts.atol, opts.rtol)
    resolve_mode(opts.tolerance, opts.atol is not None or opts.rtol is not None)
    if opts.budget is not None:
        check_budget(opts.budget)
    if opts.candidate == "dump" and not opts.dump:
        raise UsageError("--candidate dump needs --dump DIR.",
                         note="a folder written by `parity dump`, a tllm_debug/ folder, or rank<N>/*.pt dumps")
    if opts.checkpoint and not Path(opts.checkpoint).exists():
        from parity.loading.checkpoint import checkpoint_dir

        checkpoint_dir(opts.checkpoint)  # its own message
    for flag, path, kind in (("--dump", opts.dump, "folder"), ("--input-ids", opts.input_ids, "file"),
                             ("--port-map", opts.port_map, "file"), ("--dump-map", opts.dump_map, "file"),
                             ("--tokenizer", opts.tokenizer, "path"), ("--gguf", getattr(opts, "gguf", None), "file")):
        if path and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such {kind}.", note="check the path")
    _check_needs(opts)
    # Whether the engine is installed comes after the checks of the user's own paths and
    # values: a typo is answered the same on every machine, with or without the engine.
    if bi is not None and not bi.is_available():
        raise UsageError(f"candidate '{opts.candidate}' needs {', '.join(bi.missing())}, which is not installed.",
                         note=bi.install_note())
    _check_port(opts)
    _check_maps(opts)
    _check_quant(opts)
    for d in opts.probe_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--probe-dir {d}: no such folder.", note="a folder of probe map .toml files")


#: options that do something only with one candidate: (flag, attribute, the candidate)
NEEDS_CANDIDATE = (("--gguf", "gguf", "llamacpp"), ("--gguf-type", "gguf_type", "llamacpp"),
                   ("--dump", "dump", "dump"), ("--dump-map", "dump_map", "dump"),
                   ("--trtllm-map", "trtllm_map", "trtllm"), ("--sensitivity", "quant_sensitivity", "quant"))


def _check_needs(opts: Any) -> None:
    """An option that does nothing without its candidate is refused, not ignored."""
    from parity.errors import UsageError

    for flag, attr, candidate in NEEDS_CANDIDATE:
        if getattr(opts, attr, None) and opts.candidate != candidate:
            raise UsageError(f"{flag} needs --candidate {candidate} (it does nothing with --candidate {opts.candidate}).",
                             note=f"add --candidate {candidate}, or drop {flag}")
    for flag, attr, default in (("--ort-opt", "ort_opt", "all"), ("--ort-provider", "ort_provider", "CPUExecutionProvider")):
        if getattr(opts, attr, default) not in (default, None) and opts.candidate != "onnxruntime":
            raise UsageError(f"{flag} needs --candidate onnxruntime (it does nothing with --candidate {opts.candidate}).",
                             note=f"add --candidate onnxruntime, or drop {flag}")
    if getattr(opts, "system", None) is not None and not getattr(opts, "chat", False):
        raise UsageError("--system needs the chat format (it does nothing without it).",
                         note="add --chat (parity eval: drop --raw), or drop --system")


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """--atol/--rtol: finite and >= 0 (NaN would pass every probe, a negative one fail them all)."""
    from parity.errors import UsageError

    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag} {value}: need a finite number >= 0.", note=f"e.g. {flag} 1e-3")


def _check_maps(opts: Any) -> None:
    """--port-map, --dump-map and a parity dump's manifest.json read and checked against their
    schemas now: a typo in a map costs no reference forward (none of this imports torch)."""
    from parity.engines import dumps

    if opts.port_map and opts.candidate == "port":
        from parity.capture.probemap import load_map

        load_map(Path(opts.port_map))
    if opts.dump_map:
        dumps.load_name_map(opts.dump_map)
    if opts.candidate == "dump" and opts.dump and (Path(opts.dump) / dumps.MANIFEST).is_file():
        dumps.read_manifest(Path(opts.dump))


def _check_port(opts: Any) -> None:
    """--port and --port-map need --candidate port; the port file must exist (the messages
    of parity.run.reference.check_port_options and parity.engines.port, earlier)."""
    from parity.errors import UsageError

    if opts.candidate != "port":
        for flag, value in (("--port", opts.port), ("--port-map", opts.port_map)):
            if value:
                raise UsageError(f"{flag} needs --candidate port.", note="e.g. parity run --candidate port --port my_port.py:build")
    if opts.port:
        path, sep, name = opts.port.rpartition(":")
        file = Path(path if sep and name.isidentifier() else opts.port)
        if not file.is_file():
            raise UsageError(f"port file '{file}' does not exist.", note="--port path/to/file.py:factory")


def _check_quant(opts: Any) -> None:
    """--quant, --quant-twin and --quant-budget (parity.engines.schemes), before any model
    is built: an unknown scheme, or one that needs CUDA on a CPU device, is exit 2."""
    from parity.engines import schemes
    from parity.errors import UsageError

    quant, twin = getattr(opts, "quant", None), getattr(opts, "quant_twin", None)
    if opts.candidate == "quant" and not quant:
        raise UsageError("--candidate quant needs --quant SCHEME.", note="schemes: " + ", ".join(schemes.SCHEMES))
    if quant and opts.candidate != "quant":
        raise UsageError("--quant needs --candidate quant.", note="an engine running a scheme: --quant-twin SCHEME")
    if getattr(opts, "quant_exclude", None) and opts.candidate != "quant":
        raise UsageError("--quant-exclude needs --candidate quant.", note="add --candidate quant --quant SCHEME")
    budget = getattr(opts, "quant_budget", None)
    if budget is not None and not (math.isfinite(budget) and budget > 0):
        raise UsageError(f"--quant-budget {budget}: need a finite number > 0 (a logits nrmse).", note="e.g. --quant-budget 0.05")
    if twin and twin not in ("auto", "emulate", "float") and twin not in schemes.SCHEMES:
        raise UsageError(f"--quant-twin {twin}: not a twin.",
                         note="auto, emulate (llama.cpp's activation quantization), float, or a scheme: "
                              + ", ".join(schemes.SCHEMES))
    for name in (quant, None if twin in ("auto", "emulate", "float") else twin):
        if name:
            scheme = schemes.get(name)
            if scheme.needs_cuda:
                schemes.check_device(scheme, _resolved_device(opts.device))


def _resolved_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def with_model(opts: Any, ns: argparse.Namespace) -> Any:
    """``opts`` with the family inferred from the checkpoint when --model was not given."""
    import dataclasses

    if getattr(ns, "model", None) is not None:
        return opts
    return dataclasses.replace(opts, model=infer_model(getattr(ns, "checkpoint", None)))


def infer_model(checkpoint: str | None) -> str:
    """The family of ``checkpoint`` (config.json's or a GGUF file's model_type), else "qwen"."""
    if not checkpoint:
        return "qwen"
    import json

    from parity.loading import families

    path, mt = Path(checkpoint), None
    try:
        if (path / "config.json").is_file():
            mt = json.loads((path / "config.json").read_text()).get("model_type")
        elif path.is_file() and path.suffix == ".gguf":
            from parity.loading import gguf

            mt = gguf.read_info(path).model_type
    except Exception:  # noqa: BLE001 - unreadable: loading says why, with the default family
        mt = None
    return families.family_for_model_type(mt) or "qwen"
