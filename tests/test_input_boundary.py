"""The input boundary beyond the catalogue's one-line checks: a full disk that is really full
(a small tmpfs, where the machine allows mounting one), the GGUF reader's bounds and the
conversion's completeness check, eval sets whose lines differ in having targets, and the
staged writer's translation of disk errors."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from parity.errors import CheckpointError, InputError, UsageError

ROOT = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[Path]:
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()[:100]}")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


@pytest.mark.slow
@pytest.mark.parametrize("args", [["run", "--tokens", "4", "--no-isolate", "--keep-tensors", "--out", "{d}/run"],
                                  ["dump", "--tokens", "4", "--out", "{d}/dump"]])
def test_a_really_full_disk_is_exit_2_naming_the_path(tmp_path: Path, args: list[str]) -> None:
    """On a 64 KiB tmpfs the report does not fit: exit 2, ENOSPC and the --out path named,
    nothing left on the file system (the in-process catalogue simulates this with /dev/full)."""
    with _tmpfs(tmp_path / "small", "64k") as d:
        argv = [a.format(d=d) for a in args]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
        proc = subprocess.run([sys.executable, "-m", "parity", *argv, "-q"], capture_output=True, text=True, env=env,
                              timeout=300)
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("[parity")]
        assert proc.returncode == 2, proc.stderr
        assert len(lines) == 1 and "ENOSPC" in lines[0] and str(d) in lines[0] and "Note:" in lines[0], proc.stderr
        assert sorted(os.listdir(d)) == []


def test_staged_writer_names_the_output_and_the_errno(tmp_path: Path) -> None:
    from parity.outputs import Outputs

    out, page = tmp_path / "run", tmp_path / "p.html"
    with pytest.raises(UsageError) as err, Outputs(out, [("--html", page)]) as o:
        (o.dir / "report.json").write_text("{}")
        o.file(page).write_text("x")
        raise OSError(errno.ENOSPC, "No space left on device")
    assert "--out" in str(err.value) and "ENOSPC" in str(err.value) and err.value.note
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    # a read error of someone else's file is not relabelled as a write of ours
    with pytest.raises(PermissionError), Outputs(out) as o:
        raise PermissionError(errno.EACCES, "Permission denied", "/etc/shadow")


def test_safetensors_disk_errors_are_recognised() -> None:
    from parity.outputs import errno_of

    class SafetensorError(Exception):
        pass

    assert errno_of(SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")) == 28
    assert errno_of(ValueError("os error 28")) is None


# -- GGUF ---------------------------------------------------------------------------------------------

def test_a_1kb_gguf_claiming_billions_is_refused_at_once(tmp_path: Path) -> None:
    """Counts larger than the file can hold are refused before any loop or allocation."""
    import struct

    from parity.loading.gguf_header import read_header

    p = tmp_path / "m.gguf"
    for body in (struct.pack("<IQQ", 3, 10**9, 0), struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 12) + b"tokenizer.x!"
                 + struct.pack("<IIQ", 9, 8, 10**9)):
        p.write_bytes(b"GGUF" + body + b"\0" * 1000)
        t0 = time.perf_counter()
        with pytest.raises(CheckpointError):
            read_header(p)
        assert time.perf_counter() - t0 < 0.5


def test_header_reader_agrees_with_the_gguf_package(tmp_path: Path) -> None:
    """Offsets and sizes of quantized tensors as gguf-py's reader computes them."""
    gguf = pytest.importorskip("gguf")
    import numpy as np
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    from parity.loading.gguf_header import read_header

    path = tmp_path / "q.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    a = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    for i, t in enumerate([T.Q8_0, T.Q4_0, T.Q5_0, T.F16, T.BF16]):
        w.add_tensor(f"t{i}.weight", quants.quantize(a, t), raw_dtype=t)
    w.add_tensor("x", np.ones(3, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    head = read_header(path)
    for t in gguf.GGUFReader(str(path)).tensors:
        mine = head.tensors[t.name]
        assert (mine.nbytes, head.data_start + mine.offset) == (int(t.n_bytes), int(t.data_offset))


def test_conversion_refuses_weights_transformers_would_invent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past the header check (switched off here), transformers' own list of missing weights
    stops the conversion: nothing is cached."""
    pytest.importorskip("gguf")
    pytest.importorskip("accelerate")
    from bad_inputs_more import gguf_bytes, model_spec

    from parity.loading import gguf as gguf_mod
    from parity.loading import gguf_header

    kv, t = model_spec()
    del t["blk.1.ffn_down.weight"]
    path = tmp_path / "m.gguf"
    path.write_bytes(gguf_bytes(kv, t))
    monkeypatch.setenv("PARITY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gguf_header, "check_model", lambda head, arch: None)
    with pytest.raises(CheckpointError, match="lacks"):
        gguf_mod.hf_folder(path, say=lambda s: None)
    assert not any(p.name.startswith("m-") for p in (tmp_path / "cache" / "gguf").iterdir())


# -- eval sets, chat templates ------------------------------------------------------------------------

def test_targets_on_some_lines_only() -> None:
    """Lines with and without highlights in one set: target means over the lines that have one."""
    from parity.run import evaluate

    full = {k: 100.0 for k in evaluate.ROUGE_KEYS}
    rows = [{"agreement": 1.0, "exact_match": True, "stop_outcome": None, "rouge_vs_reference": full,
             "rouge_ref_vs_target": {k: 40.0 for k in evaluate.ROUGE_KEYS},
             "rouge_cand_vs_target": {k: 30.0 for k in evaluate.ROUGE_KEYS}},
            {"agreement": 1.0, "exact_match": True, "stop_outcome": None, "rouge_vs_reference": full}]
    ov = evaluate.overall(rows)
    assert ov["target_prompts"] == 1 and ov["target_rougeL_delta"] == -10.0 and ov["rougeL"] == 100.0


def test_dataset_lines_are_numbered(tmp_path: Path) -> None:
    from parity.run.evaluate import load_items

    p = tmp_path / "d.jsonl"
    p.write_text('{"prompt": "a"}\n\n{"prompt": "b", "highlights": "x"}\n' + json.dumps({"prompt": 5}) + "\n")
    with pytest.raises(InputError, match="line 4"):
        load_items(p)
    p.write_text('{"prompt": "a"}\n\n{"article": "b", "highlights": "x"}\n')
    items, _ = load_items(p)
    assert [(it.line, it.kind, it.target) for it in items] == [(1, "prompt", None), (3, "article", "x")]


def test_a_looping_chat_template_is_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    from parity.loading import chat

    monkeypatch.setattr(chat, "TEMPLATE_SECONDS", 0.2)

    def forever(msgs: object, **kw: object) -> None:
        while True:
            time.sleep(0.01)

    t0 = time.perf_counter()
    with pytest.raises(InputError, match="did not finish"):
        chat._apply_template(forever, [])
    assert time.perf_counter() - t0 < 2
