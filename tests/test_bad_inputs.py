"""Every bad input a clean error: each case of the catalogue (tests/bad_inputs.py) exits 2 with
exactly one line ``parity: error: ...`` naming what is wrong, no traceback, and leaves nothing
where outputs go (no report folder, no HTML, no hidden temp or lock file)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bad_inputs import CASES as FIRST
from bad_inputs import Kit
from bad_inputs_more import MORE, SLOW, make_more

assert not set(FIRST) & set(MORE)
CASES = {**FIRST, **MORE}

ROOT = Path(__file__).resolve().parents[1]


def _main(argv: list[str]) -> int:
    from parity.cli import main

    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return int(exc.code or 0)


@pytest.fixture(scope="session")
def shared(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A llama checkpoint, a run's report folder and a parity dump (qwen, 4 tokens), made once."""
    from safetensors.torch import save_file

    from parity.loading.source import ModelSource

    base = tmp_path_factory.mktemp("shared")
    src = ModelSource.resolve("llama")
    ck = base / "llama"
    ck.mkdir()
    (ck / "config.json").write_text(json.dumps({**src.config_dict, "model_type": "llama"}))
    save_file({k: v.contiguous() for k, v in src.build("cpu").state_dict().items()}, str(ck / "model.safetensors"))
    assert _main(["run", "-q", "--tokens", "4", "--no-isolate", "--out", str(base / "run")]) == 0
    assert _main(["dump", "-q", "--tokens", "4", "--out", str(base / "dump")]) == 0
    if os.geteuid() == 0:  # root writes through file modes; /sys refuses everyone
        readonly = Path("/sys/parity-read-only")
    else:
        readonly = base / "read-only"
        readonly.mkdir(mode=0o555)
    return {"ckpt": ck, "report": base / "run", "dump": base / "dump", "readonly": readonly,
            "cache": base / "cache", **make_more(base)}


def _tree(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW else c for c in sorted(CASES)])
def test_bad_input(case: str, shared: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                   capsys: pytest.CaptureFixture[str]) -> None:
    build, needles = CASES[case]
    monkeypatch.chdir(tmp_path)  # a default output folder (reports/) would show up in the tree
    kit = Kit(tmp_path, shared)
    monkeypatch.setenv("PARITY_CACHE", str(shared["cache"]))
    argv = build(kit)
    for setup in kit.setups:
        setup(monkeypatch)
    before = _tree(tmp_path)
    capsys.readouterr()
    code = _main(argv)
    out, err = capsys.readouterr()
    lines = [ln for ln in err.splitlines() if ln.strip() and not ln.startswith("[parity")]
    assert code == 2, (argv, out, err)
    assert len(lines) == 1 and lines[0].startswith("parity: error: "), err
    assert "Traceback" not in out + err
    assert " Note: " in lines[0], "no Note saying what to do: " + lines[0]
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not kit.out.exists() and not kit.html.exists()
    assert _tree(tmp_path) == before, "left behind: " + ", ".join(sorted(_tree(tmp_path) - before))


def test_catalogue_size() -> None:
    """At least 250 cases, over every command and every kind of input (a case id starts with
    its command or file kind); the cases of ``make test`` alone still more than the first 134."""
    assert len(CASES) >= 250 and len(set(CASES) - SLOW) >= 134
    firsts = {name.split("-")[0] for name in CASES}
    assert {"run", "bisect", "generate", "dump", "compare", "report", "diff", "fetch", "probes", "doctor", "eval",
            "quant", "gguf", "full", "locked", "cache", "chat", "ids", "weights"} <= firsts


def test_sigterm_during_dump_leaves_no_temp_file(tmp_path: Path) -> None:
    """SIGTERM while `parity dump` writes: no hidden temp file or folder beside the dump, and
    the dump folder the user had is untouched."""
    out = tmp_path / "dump"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    code = (
        "import os, signal, sys\n"
        "import safetensors.torch as st\n"
        "real = st.save_file\n"
        "def slow(tensors, path, metadata=None):\n"
        "    real(tensors, path, metadata=metadata)\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "st.save_file = slow\n"
        "from parity.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", code, "dump", "-q", "--tokens", "4", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dump"]
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]
