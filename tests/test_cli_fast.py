"""Failing before the work: arguments that need no model are refused before torch is
imported; the family is inferred from a checkpoint; progress lines; the demo's hint."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(("command", "args", "words"), [
    ("run", ["--dtype", "fp61"], "unknown dtype 'fp61'"),
    ("run", ["--device", "gpu"], "unknown device 'gpu'"),
    ("run", ["--candidate", "dump"], "--candidate dump needs --dump DIR"),
    ("run", ["--candidate", "nope"], "unknown candidate 'nope'"),
    ("run", ["--tokens", "0"], "--tokens 0"),
    ("run", ["--budget", "0.5"], "--budget 0.5"),
    ("run", ["--tolerance", "calibrated", "--atol", "1e-3"], "--tolerance calibrated"),
    ("run", ["--checkpoint", "/no/such/folder"], "checkpoint '/no/such/folder' does not exist"),
    ("run", ["--input-ids", "/no/such/ids.json"], "no such file"),
    ("run", ["--port", "/no/such/port.py:build", "--candidate", "port"], "port file '/no/such/port.py' does not exist"),
    ("run", ["--port", "x.py:build"], "--port needs --candidate port"),
    ("run", ["--probe-dir", "/no/such/dir"], "--probe-dir /no/such/dir: no such folder"),
    ("run", ["--model", "gpt9"], "unknown model 'gpt9'"),
    ("generate", ["--dtype", "fp61"], "unknown dtype 'fp61'"),
    ("generate", ["--candidate", "dump"], "--candidate dump needs --dump DIR"),
])
def test_bad_arguments_fail_before_torch(command: str, args: list[str], words: str) -> None:
    code = ("import sys\nfrom parity.cli import main\n"
            f"rc = main({[command, *args]!r})\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n"
            "sys.exit(rc)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr


def test_family_is_inferred_from_the_checkpoint(tmp_path: Path) -> None:
    from parity.cli.common import infer_model

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2"}))
    assert infer_model(str(tmp_path)) == "qwen2"
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    assert infer_model(str(tmp_path)) == "llama"
    assert infer_model(None) == "qwen" and infer_model(str(tmp_path / "absent")) == "qwen"


def test_progress_lines_in_logs_and_none_with_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli.common import StageProgress

    p = StageProgress(live=False)
    p("building reference")
    p.update("ignored outside a terminal")
    p.close()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "building reference ..." in err and err.startswith("[parity ")


def test_make_demo_says_where_parity_is() -> None:
    text = (ROOT / "Makefile").read_text()
    demo = text.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    assert "source $(VENV)/bin/activate" in demo and "$(VENV)/bin/parity" in demo


def test_a_bug_in_parity_is_exit_3_not_1(monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    from parity.cli import info

    def broken(ns):  # noqa: ANN001, ANN202
        raise RuntimeError("something parity did not expect")

    monkeypatch.setattr(info, "cmd_doctor", broken)
    code, out, err = run_cli("doctor")
    assert code == 3 and len(err.strip().splitlines()) == 1
    assert "internal error: RuntimeError: something parity did not expect" in err and "--debug" in err
    with pytest.raises(RuntimeError):
        run_cli("doctor", "--debug")


@pytest.mark.parametrize("args", [["--atol", "nan"], ["--rtol", "nan", "--atol", "0"], ["--atol", "-1"]])
def test_tolerances_must_be_finite_and_not_negative(args: list[str], run_cli) -> None:
    code, _, err = run_cli("run", *args, "-q", "--no-files")
    assert code == 2 and "need a finite number >= 0" in err


def test_nan_in_tolerance_tables_is_refused() -> None:
    from parity.compare.tolerances import table_from
    from parity.errors import UsageError

    with pytest.raises(UsageError, match="not a non-negative number"):
        table_from({"default": {"atol": float("nan")}})


def test_a_reference_that_produces_nan_is_an_input_error(tmp_path: Path, run_cli) -> None:
    """NaN weights: NaN on both sides would compare equal and pass."""
    import torch
    from safetensors.torch import save_file

    from parity.loading.source import ModelSource

    model = ModelSource.resolve("llama").build("cpu")
    sd = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    sd["model.layers.1.mlp.down_proj.weight"][3, 5] = float("nan")
    (tmp_path / "config.json").write_text(json.dumps({**ModelSource.resolve("llama").config_dict, "model_type": "llama"}))
    save_file(sd, str(tmp_path / "model.safetensors"))
    code, _, err = run_cli("run", "--checkpoint", str(tmp_path), "--tokens", "4", "-q", "--no-files")
    assert code == 2 and "the reference produces NaN at 'blocks.1.mlp_out'" in err, err
    assert torch.isnan(sd["model.layers.1.mlp.down_proj.weight"]).any()


def test_no_command_is_usage_with_one_line_and_a_note(run_cli) -> None:
    code, out, err = run_cli()
    assert code == 2 and "usage:" in out
    assert err.strip().splitlines() == [err.strip()] and err.startswith("parity: error: no command given.") and "Note:" in err
