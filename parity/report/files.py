"""JSON and CSV files (and, with ``--keep-tensors``, the kept tensors as safetensors),
written atomically: a temp file in the same folder, then a rename. Files get the permissions
a plain ``open()`` would give them (``0666 & ~umask``), not a temp file's 0600."""
from __future__ import annotations

import json
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from parity.report.data import ReportData

TENSORS_FILE = "tensors.safetensors"


def _create_temp(path: Path) -> tuple[int, Path]:
    """A new, empty temp file next to ``path``, opened for writing. Created with mode 0666
    so that the umask (and a default ACL) applies, as for ``open(path, "w")``; O_EXCL keeps
    it ours."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temp file name next to {path}")


@contextmanager
def _replacing(path: Path) -> Iterator[tuple[int, Path]]:
    """(fd, temp path) of a fresh temp file; ``path`` is replaced by it when the block ends
    without an error, and the temp file removed when it does not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        yield fd, tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: Path, text: str | bytes) -> None:
    with _replacing(Path(path)) as (fd, _tmp):
        if isinstance(text, bytes):
            with os.fdopen(fd, "wb") as fh:
                fh.write(text)
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)


def to_json(report: ReportData) -> str:
    return json.dumps(report.to_dict(), indent=2, allow_nan=False) + "\n"


def rows_csv(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """CSV of ``rows`` (one dict each) with ``columns``: missing values and NaN empty, lists
    as their Python text -- what spreadsheets and pandas.read_csv read back."""
    import csv
    import io
    import math

    def cell(v: Any) -> Any:
        return "" if v is None or (isinstance(v, float) and math.isnan(v)) else v

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    writer.writerows([[cell(r.get(c)) for c in columns] for r in rows])
    return buf.getvalue()


def to_csv(report: ReportData) -> str:
    from dataclasses import fields

    from parity.report.data import ProbeRow

    return rows_csv([asdict(r) for r in report.probes], [f.name for f in fields(ProbeRow)])


def write(report: ReportData, out_dir: Path) -> dict[str, Path]:
    """Write report.json and probes.csv into ``out_dir``; returns their paths."""
    paths = {"json": out_dir / "report.json", "csv": out_dir / "probes.csv"}
    texts = {"json": to_json(report), "csv": to_csv(report)}  # render both before writing either
    for key, path in paths.items():
        atomic_write(path, texts[key])
    return paths


def read(path: Path) -> ReportData:
    return ReportData.from_dict(json.loads(Path(path).read_text()))


def kept_tensors(result: Any) -> dict[str, Any]:
    """"reference/<probe>" and "candidate/<probe>" -> contiguous CPU copy, for every probe
    whose tensor a run kept (the reference's always; the candidate's with --keep-tensors)."""
    import torch

    out: dict[str, Any] = {}
    for side, cap in (("reference", result.reference), ("candidate", result.candidate)):
        for name, rec in cap.records.items():
            if rec.tensor is not None:
                t = cap.tensor(name)  # waits for pinned copies still in flight
                out[f"{side}/{name}"] = t.detach().to("cpu", copy=True, memory_format=torch.contiguous_format)
    return out


def write_tensors(result: Any, out_dir: Path) -> Path | None:
    """Write the kept tensors of a run (a parity.run.common.RunResult) to
    ``out_dir/tensors.safetensors``, atomically; None (nothing written) when the candidate
    kept none (a run without --keep-tensors)."""
    if not any(rec.tensor is not None for rec in result.candidate.records.values()):
        return None
    from safetensors.torch import save_file

    tensors = kept_tensors(result)
    meta = {"reference": str(result.reference.backend), "candidate": str(result.candidate.backend),
            "input_ids": json.dumps([int(i) for i in result.input_ids])}
    path = Path(out_dir) / TENSORS_FILE
    with _replacing(path) as (fd, tmp):
        mode = stat.S_IMODE(os.fstat(fd).st_mode)  # what the umask gave the new file
        os.close(fd)
        save_file(tensors, str(tmp), metadata=meta)  # makes the file anew, 0600
        os.chmod(tmp, mode)
    return path
