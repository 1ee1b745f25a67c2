"""A reader that goes away (``parity run ... | head -1``) never changes the exit code: the
command finishes, writes its files and exits with its verdict's code (0 pass, 1 divergence)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rich.console import Console

from parity.cli import main
from parity.cli.streams import PipeSafe

ROOT = Path(__file__).resolve().parents[1]
RUN = ["run", "--model", "qwen", "--tokens", "4"]
FAULT = ["--candidate", "port", "--fault", "silu-wrong-branch@1"]


@contextlib.contextmanager
def closed_pipe() -> Iterator[object]:
    """A text stream on a pipe whose reader has already closed: every write meets EPIPE."""
    r, w = os.pipe()
    os.close(r)
    stream = os.fdopen(w, "w", buffering=1)
    try:
        yield stream
    finally:
        with contextlib.suppress(OSError):
            stream.close()


def test_rich_on_a_closed_pipe_neither_raises_nor_exits() -> None:
    with closed_pipe() as raw:
        safe = PipeSafe(raw)  # type: ignore[arg-type]
        console = Console(file=safe, width=80)  # type: ignore[arg-type]
        for i in range(200):
            console.print(f"line {i} " + "x" * 60)
        print("plain print", file=safe, flush=True)  # type: ignore[arg-type]
        safe.flush()
        assert safe.broken


def test_without_the_guard_rich_exits_1_which_is_what_parity_prevents(monkeypatch: pytest.MonkeyPatch) -> None:
    """The failure this guards against: rich's own broken-pipe handler raises SystemExit(1)."""
    with closed_pipe() as raw:
        monkeypatch.setattr(sys, "stdout", raw)  # rich points sys.stdout's fd at the null device
        with pytest.raises(SystemExit) as exc:
            Console(file=raw, width=80).print("\n".join(["x" * 70] * 50))  # type: ignore[arg-type]
    assert exc.value.code == 1


@pytest.mark.parametrize(("extra", "code"), [([], 0), pytest.param(FAULT, 1, marks=pytest.mark.slow)])
def test_run_with_stdout_and_stderr_on_a_closed_pipe_exits_with_the_verdict(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, extra: list[str], code: int) -> None:
    with closed_pipe() as out, closed_pipe() as err:
        monkeypatch.setattr(sys, "stdout", out)
        monkeypatch.setattr(sys, "stderr", err)
        rc = main([*RUN, *extra, "--out", str(tmp_path / "run")])
    assert rc == code
    assert (tmp_path / "run" / "report.json").is_file()  # the files are written all the same


def _head(args: list[str], merge: bool, lines: int = 1) -> tuple[int, str]:
    """`parity ARGS | head -LINES` (with 2>&1 when ``merge``): the exit code and what was read."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"}
    proc = subprocess.Popen([sys.executable, "-m", "parity", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT if merge else subprocess.DEVNULL, env=env)
    assert proc.stdout is not None
    got = b"".join(proc.stdout.readline() for _ in range(lines))
    proc.stdout.close()  # the reader goes away; parity still has lines to print
    return proc.wait(timeout=600), got.decode()


@pytest.mark.slow
@pytest.mark.parametrize("merge", [False, True], ids=["stdout", "2>&1"])
@pytest.mark.parametrize("debug", [False, True], ids=["", "--debug"])
def test_run_piped_into_head_exits_with_the_verdict(merge: bool, debug: bool) -> None:
    rc, got = _head([*RUN, "--no-files", *(["--debug"] if debug else [])], merge)
    assert rc == 0, got
    assert got.strip()
    rc, _ = _head([*RUN, *FAULT, "--no-files", *(["--debug"] if debug else [])], merge)
    assert rc == 1


@pytest.mark.slow
@pytest.mark.parametrize("args", [["probes", "--model", "qwen"], ["doctor"]])
def test_other_commands_piped_into_head_exit_0(args: list[str]) -> None:
    rc, got = _head(args, merge=True)
    assert rc == 0 and got.strip()
