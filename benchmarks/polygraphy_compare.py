"""Side by side with Polygraphy on this CPU machine, same work.

The tiny Qwen2 preset exported to ONNX (parity's dynamo export, float32 and float16
copies), ONNX Runtime float32 vs float16, every tensor marked, compared with tolerances:

* Polygraphy: ``polygraphy run fp32.onnx --onnxrt --onnx-outputs '*' --save-outputs ref.json``
  then ``polygraphy run fp16.onnx --onnxrt --onnx-outputs '*' --load-outputs ref.json
  --atol A --rtol R`` (two processes: wall times add, peak RSS is the larger);
* parity: ``parity run --model qwen2 --candidate onnxruntime --dtype fp16`` (one process:
  torch reference + ORT candidate, canonical probes marked, statistics only).

Both start from warm export caches (exports are made once before timing). Wall time and
peak RSS come from /usr/bin/time. Token counts scale 128 -> 2048.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from results import record, table  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    """(wall s, peak RSS MiB, exit code) of one process."""
    with tempfile.NamedTemporaryFile("r", suffix=".time") as tf:
        proc = subprocess.run(["/usr/bin/time", "-f", "%e %M", "-o", tf.name, *cmd], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wall, rss_kb = Path(tf.name).read_text().split()[-2:]
    return float(wall), float(rss_kb) / 1024, proc.returncode


def exported(cache: Path, dtype: str, tokens: int) -> Path:
    found = sorted(cache.glob(f"onnx/qwen2-{dtype}-T{tokens}-*/model.onnx"))
    if not found:
        raise SystemExit(f"no {dtype} export for {tokens} tokens in {cache}")
    return found[-1]


def one(tokens: int, env: dict[str, str], cache: Path, poly: list[str], work: Path) -> dict:
    py = sys.executable
    def parity_cmd(dtype: str) -> list[str]:
        return [py, "-m", "parity", "run", "--model", "qwen2", "--candidate", "onnxruntime",
                "--dtype", dtype, "--tokens", str(tokens), "--no-files", "-q"]

    for dt in ("fp32", "fp16"):  # warm the export cache (not timed)
        subprocess.run(parity_cmd(dt), cwd=ROOT, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    f32, f16 = exported(cache, "fp32", tokens), exported(cache, "fp16", tokens)
    ref_json = work / f"ref_{tokens}.json"
    common = ["--onnxrt", "--onnx-outputs", "*", "--val-range", "input_ids:[0,1000]"]
    w1, r1, c1 = timed([*poly, "run", str(f32), *common, "--save-outputs", str(ref_json)], env)
    w2, r2, c2 = timed([*poly, "run", str(f16), *common, "--load-outputs", str(ref_json),
                        "--atol", "0.02", "--rtol", "0.02"], env)
    wp, rp, cp = timed(parity_cmd("fp16"), env)
    out = {"tokens": tokens, "polygraphy_s": w1 + w2, "polygraphy_rss_mib": max(r1, r2),
           "polygraphy_exit": [c1, c2], "parity_s": wp, "parity_rss_mib": rp, "parity_exit": cp,
           "polygraphy_saved_mib": ref_json.stat().st_size / 2**20 if ref_json.exists() else None}
    out["time_ratio"] = wp / out["polygraphy_s"]
    out["rss_ratio"] = rp / out["polygraphy_rss_mib"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--smoke", action="store_true", help="one small size, no results file")
    args = ap.parse_args()
    poly_exe = shutil.which("polygraphy")
    if poly_exe is None:
        raise SystemExit("polygraphy is not installed (pip install polygraphy)")
    poly = [sys.executable, poly_exe]
    tokens = [16] if args.smoke else args.tokens
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cache = Path(os.environ.get("PARITY_CACHE", work / "cache"))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   PARITY_CACHE=str(cache))
        rows = [one(t, env, cache, poly, work) for t in tokens]
    for r in rows:
        print(json.dumps(r))
    if args.smoke:
        return
    head = rows[min(1, len(rows) - 1)]
    meta = {"machine": f"cpu {os.cpu_count()} cores {platform.machine()} ({platform.python_version()})",
            "date": date.today().isoformat()}
    record([
        {"name": "polygraphy_time_ratio", "value": round(head["time_ratio"], 4), "unit": "x", **meta, "detail": rows},
        {"name": "polygraphy_rss_ratio", "value": round(head["rss_ratio"], 4), "unit": "x", **meta, "detail": rows},
    ])
    print(table())


if __name__ == "__main__":
    main()
