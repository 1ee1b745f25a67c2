"""JSON and CSV files, written atomically (temp file in the same folder, then rename)."""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from parity.report.data import ReportData


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def to_json(report: ReportData) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def to_csv(report: ReportData) -> str:
    import pandas as pd

    frame = pd.DataFrame([asdict(r) for r in report.probes])
    return frame.to_csv(index=False)


def write(report: ReportData, out_dir: Path) -> dict[str, Path]:
    """Write report.json and probes.csv into ``out_dir``; returns their paths."""
    paths = {"json": out_dir / "report.json", "csv": out_dir / "probes.csv"}
    texts = {"json": to_json(report), "csv": to_csv(report)}  # render both before writing either
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths


def read(path: Path) -> ReportData:
    return ReportData.from_dict(json.loads(Path(path).read_text()))
