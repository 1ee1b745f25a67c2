"""What the commands share: exit codes, progress lines, run ids."""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import datetime

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE = 0, 1, 2


def progress(quiet: bool) -> Callable[[str], None] | None:
    if quiet:
        return None
    t0 = time.perf_counter()

    def say(what: str) -> None:
        print(f"[parity {time.perf_counter() - t0:6.2f}s] {what} ...", file=sys.stderr, flush=True)

    return say


def run_id(ns: argparse.Namespace) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{ns.model}-{ns.candidate}-{ns.dtype}"
