"""CPU benchmarks (`make bench`): the default run, `import parity`, `parity --help`.

Each figure is the median of several fresh processes (a process start is the user's
"cold" experience; file caches are warm after the first). Results go to
benchmarks/results.json with this machine's description and today's date.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import record, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    return f"cpu {os.cpu_count()} cores {platform.machine()} ({platform.python_version()})"


def wall(cmd: list[str], reps: int) -> float:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=False, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="one rep, no results file (used by the tests)")
    args = ap.parse_args()
    reps = 1 if args.smoke else args.reps
    py = sys.executable
    figures = {
        "cpu_default_run_seconds": wall([py, "-m", "parity", "run", "--model", "qwen", "--no-files", "-q"], reps),
        "cpu_import_seconds": wall([py, "-c", "import parity, parity.cli"], reps),
        "cpu_help_seconds": wall([py, "-m", "parity", "--help"], reps),
    }
    for name, value in figures.items():
        print(f"{name}: {value:.3f} s")
    if args.smoke:
        return
    record([{"name": k, "value": round(v, 4), "unit": "s", "machine": machine(), "date": date.today().isoformat()}
            for k, v in figures.items()])
    print(table())


if __name__ == "__main__":
    main()
