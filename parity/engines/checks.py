"""The checks a run's options need no model, torch or engine for -- made before any of them
is imported or built, so that a typo costs milliseconds, not a reference forward. The CLI
and the pytest plugin both run them. Each engine checks its own flags (its declaration's
``check``), whichever candidate runs; the engines check the same things again where they
are used."""
from __future__ import annotations

import math
import re
from pathlib import Path

from parity import dtypes, engines
from parity.errors import UsageError
from parity.options import RunOptions

DEVICE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


def check_options(opts: RunOptions) -> None:
    from parity.loading import families
    from parity.loading.limits import MAX_TOKENS
    from parity.verdict.calibrate import check_budget, resolve_mode

    for d in opts.family_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--family-dir {d}: no such folder.", note="a folder with one <name>/preset.toml per family")
    families.get(opts.model, opts.family_dirs)
    dtypes.parse(opts.dtype)
    for flag, dev in (("--device", opts.device), ("--ref-device", opts.ref_device)):
        if dev is not None and not DEVICE.match(dev):
            raise UsageError(f"unknown device '{dev}' ({flag}).", note="valid devices: cpu, cuda, cuda:N, auto")
    if opts.tokens is not None and opts.tokens < 1:
        raise UsageError(f"--tokens {opts.tokens}: need at least 1 token.", note="e.g. --tokens 32")
    if opts.tokens is not None and opts.tokens > MAX_TOKENS:
        raise UsageError(f"--tokens {opts.tokens}: parity compares at most {MAX_TOKENS} tokens in one run.",
                         note="a few dozen tokens find most divergences")
    if opts.tp is not None and opts.tp < 1:  # 0 would quietly run the unsharded candidate
        raise UsageError(f"--tp {opts.tp}: need at least 1 rank.", note="e.g. --tp 2")
    engine = engines.info(opts.candidate) if opts.candidate != "reference" else None
    check_tolerances(opts.atol, opts.rtol)
    resolve_mode(opts.tolerance, opts.atol is not None or opts.rtol is not None)
    if opts.budget is not None:
        check_budget(opts.budget)
    if opts.checkpoint and not Path(opts.checkpoint).exists():
        from parity.loading.checkpoint import checkpoint_dir

        checkpoint_dir(opts.checkpoint)  # its own message
    for flag, path, kind in (("--input-ids", opts.input_ids, "file"), ("--tokenizer", opts.tokenizer, "path")):
        if path and not Path(path).exists():
            raise UsageError(f"{flag} {path}: no such {kind}.", note="check the path")
    for other in engines.all_engines():
        if other.check is not None:
            other.check(opts)
    if getattr(opts, "system", None) is not None and not getattr(opts, "chat", False):
        raise UsageError("--system needs the chat format (it does nothing without it).",
                         note="add --chat (parity eval: drop --raw), or drop --system")
    # Whether the engine is installed comes after the checks of the user's own paths and
    # values: a typo is answered the same on every machine, with or without the engine.
    if engine is not None and not engine.is_available():
        raise UsageError(f"candidate '{opts.candidate}' needs {', '.join(engine.missing())}, which is not installed.",
                         note=engine.install_note())
    for d in opts.probe_dirs:
        if not Path(d).is_dir():
            raise UsageError(f"--probe-dir {d}: no such folder.", note="a folder of probe map .toml files")


def check_tolerances(atol: float | None, rtol: float | None) -> None:
    """--atol/--rtol: finite and >= 0 (NaN would pass every probe, a negative one fail them all)."""
    for flag, value in (("--atol", atol), ("--rtol", rtol)):
        if value is not None and not (math.isfinite(value) and value >= 0):
            raise UsageError(f"{flag} {value}: need a finite number >= 0.", note=f"e.g. {flag} 1e-3")
