"""benchmarks/results.json: one entry per figure (name, value, unit, target, machine, date).

``record(entries)`` replaces entries of the same name and machine and rewrites the file
atomically; ``table()`` renders the markdown table used in benchmarks/README.md.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).with_name("results.json")

TARGETS: dict[str, tuple[str, float]] = {
    "gpu_probe_overhead_ratio": ("<=", 1.08),
    "gpu_run_512_seconds": ("<=", 20.0),
    "gpu_fresh_run_512_seconds": ("<=", 8.0),
    "gpu_fresh_run_512_seconds_llama": ("<=", 8.0),
    "gpu_peak_mem_over_weights_gib_4096": ("<=", 2.0),
    "gpu_probe_overhead_ratio_llama": ("<=", 1.08),
    "gpu_run_512_seconds_llama": ("<=", 20.0),
    "gpu_run_512_seconds_bf16": ("<=", 20.0),
    "gpu_run_512_seconds_llama_bf16": ("<=", 20.0),
    "gpu_peak_mem_over_weights_gib_4096_llama": ("<=", 2.0),
    "cpu_default_run_seconds": ("<=", 10.0),
    "cpu_help_seconds": ("<=", 0.5),
    "cpu_import_seconds": ("<=", 0.5),
    "polygraphy_time_ratio": ("<=", 0.5),
    "polygraphy_rss_ratio": ("<=", 1.0),
}


def target_of(name: str) -> str | None:
    t = TARGETS.get(name)
    return None if t is None else f"{t[0]} {t[1]:g}"


def holds(name: str, value: float) -> bool | None:
    t = TARGETS.get(name)
    if t is None:
        return None
    return value <= t[1] if t[0] == "<=" else value >= t[1]


def load(path: Path = RESULTS) -> list[dict[str, Any]]:
    return json.loads(path.read_text()) if path.is_file() else []


def _kind(machine: str) -> str:
    """The machine without its software versions ("NVIDIA H200 (torch ...)" -> "NVIDIA H200")."""
    return machine.split(" (")[0]


def record(entries: list[dict[str, Any]], path: Path = RESULTS) -> None:
    current = load(path)
    keys = {(e["name"], _kind(e["machine"])) for e in entries}  # a newer figure replaces the older one
    merged = [e for e in current if (e["name"], _kind(e["machine"])) not in keys]
    for e in entries:
        e = dict(e)
        e.setdefault("target", target_of(e["name"]))
        e["holds"] = holds(e["name"], e["value"])
        merged.append(e)
    merged.sort(key=lambda e: (e["machine"], e["name"]))
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(merged, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def table(path: Path = RESULTS) -> str:
    rows = ["| figure | value | unit | target | holds | machine | date |", "|---|---|---|---|---|---|---|"]
    for e in load(path):
        v = e["value"]
        rows.append(f"| `{e['name']}` | {v:.4g} | {e['unit']} | {e.get('target') or '-'} | "
                    f"{ {True: 'yes', False: 'no', None: '-'}[e.get('holds')] } | {e['machine']} | {e['date']} |")
    return "\n".join(rows)


def main() -> None:
    """``python benchmarks/results.py [--add gpu_results.json]``: merge, then print the table."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--add", metavar="FILE", help="a results file written by benchmarks/gpu.py ($OUT/gpu_results.json)")
    args = ap.parse_args()
    if args.add:
        record(json.loads(Path(args.add).read_text()))
    print(table())


if __name__ == "__main__":
    main()
