"""User ports: the documented example (docs/guide/ports.md) run as a new user would, bad port files, a port that
raises mid-forward, the probe API, fault option errors."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import read_report

REPO = Path(__file__).resolve().parents[1]
BASE = ["run", "--model", "llama", "--candidate", "port", "--tokens", "8", "-q"]


def _usage_error(result: tuple[int, str, str], *needles: str) -> str:
    code, out, err = result
    assert code == 2, (out, err)
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith("[parity")]
    assert len(lines) == 1 and lines[0].startswith("parity: error: ") and "Traceback" not in err, err
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def _readme_example() -> tuple[str, str]:
    text = (REPO / "docs" / "guide" / "ports.md").read_text()
    sec = text[text.index("## Example: a hand-written LLaMA port"):]
    code = re.search(r"```python\n(.*?)```", sec, re.S).group(1)
    cmd = re.search(r"```sh\n(parity run .*?)\n```", sec, re.S).group(1)
    return code, cmd


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
@pytest.mark.parametrize("buggy", [False, True])
def test_readme_example_runs_from_a_fresh_folder(buggy: bool, tmp_path: Path) -> None:
    """Exactly what the guide says, in a folder outside the repo, as a subprocess."""
    code, cmd = _readme_example()
    if buggy:
        assert "F.silu(gate) * up" in code
        code = code.replace("F.silu(gate) * up", "F.silu(up) * gate")
    (tmp_path / "my_port.py").write_text(code)
    args = cmd.split()[2:] + ["--out", "rep", "-q"]
    proc = subprocess.run([sys.executable, "-m", "parity", "run", *args], cwd=tmp_path, capture_output=True,
                          text=True, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=300)
    rep = read_report(tmp_path / "rep")
    if not buggy:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "PASSED" in proc.stdout
        assert rep["summary"]["probes_compared"] >= 40
        return
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED | blocks.0.mlp_out" in proc.stdout and "Diagnosis: the activation (silu) on the wrong branch" in proc.stdout
    diag = rep["summary"]["diagnosis"]
    assert (diag["block"], diag["component"], diag["cause"]) == (0, "mlp", "gating")


GOOD = """
import torch
from torch import nn
import parity

class Port(nn.Module):
    def __init__(self, config, sd):
        super().__init__()
        self.emb = nn.Embedding.from_pretrained(sd["model.embed_tokens.weight"].clone())
        self.head = nn.Parameter(sd["lm_head.weight"].clone())

    def forward(self, input_ids):
        x = parity.probe("embed", self.emb(input_ids))
        {body}
        return x @ self.head.T

def build(config, state_dict):
    return Port(config, state_dict)

def broken(config, state_dict):
    raise RuntimeError("weights for layer 3 are missing")

def not_a_module(config, state_dict):
    return {{"logits": None}}
"""


def _port(tmp_path: Path, body: str = "pass") -> Path:
    f = tmp_path / "port.py"
    f.write_text(GOOD.format(body=body))
    return f


@pytest.mark.parametrize(
    ("spec", "needles"),
    [
        ("{d}/nope.py:build", ["port file", "nope.py' does not exist", "Note:"]),
        ("{f}:make_model", ["has no factory 'make_model'", "Note: callables defined there: Port, broken, build, not_a_module"]),
        ("{f}:broken", ["raised while building: RuntimeError: weights for layer 3 are missing"]),
        ("{f}:not_a_module", ["returned a dict, not a torch.nn.Module", "Note:"]),
    ],
)
def test_bad_port_files(spec: str, needles: list[str], tmp_path: Path, run_cli) -> None:
    f = _port(tmp_path)
    out = tmp_path / "out"
    _usage_error(run_cli(*BASE, "--port", spec.format(d=tmp_path, f=f), "--out", str(out)), *needles)
    assert not out.exists()


def test_port_file_that_fails_to_import(tmp_path: Path, run_cli) -> None:
    f = tmp_path / "bad.py"
    f.write_text("import not_a_real_package_xyz\n")
    _usage_error(run_cli(*BASE, "--port", f"{f}:build", "--no-files"), "raised while importing: ModuleNotFoundError")
    assert not any(getattr(mod, "__file__", None) == str(f) for mod in list(sys.modules.values()))


def test_port_imports_its_sibling_module_without_polluting_sys_path(tmp_path: Path, run_cli) -> None:
    (tmp_path / "port_helpers_xyz.py").write_text("SCALE = 1.0\n")
    f = tmp_path / "port.py"
    f.write_text("from port_helpers_xyz import SCALE\n" + GOOD.format(body="x = x * SCALE"))
    before = list(sys.path)
    code, _, err = run_cli(*BASE, "--port", f"{f}:build", "--no-files")
    assert code == 1, err  # runs (no blocks, so the logits differ)
    assert sys.path == before


def test_non_canonical_probe_name(tmp_path: Path, run_cli) -> None:
    f = _port(tmp_path, 'parity.probe("blocks.0.attention_output", x)')
    _usage_error(run_cli(*BASE, "--port", f"{f}:build", "--no-files"),
                 "'blocks.0.attention_output' is not a canonical probe name", "Note: valid names")


def test_port_raising_mid_forward_leaves_partial_report(tmp_path: Path, run_cli) -> None:
    f = _port(tmp_path, 'x = parity.probe("blocks.0.attn_in", x)\n        raise ValueError("shape [1, 8, 64] != [1, 8, 128]")')
    out = tmp_path / "out"
    line = _usage_error(run_cli(*BASE, "--port", f"{f}:build", "--out", str(out)),
                        "raised ValueError: shape [1, 8, 64] != [1, 8, 128]", "after probe 'blocks.0.attn_in'",
                        "partial report")
    assert str(out / "report.json") in line
    rep = read_report(out)
    assert rep["summary"]["verdict"] == "error"
    assert rep["summary"]["error"]["last_probe"] == "blocks.0.attn_in"
    compared = [p["name"] for p in rep["probes"] if p["passed"] is not None]
    assert compared == ["embed", "blocks.0.attn_in"]


def test_api_only_port_offers_what_it_emits(tmp_path: Path, run_cli) -> None:
    f = _port(tmp_path)
    code, out, _ = run_cli(*BASE, "--port", f"{f}:build", "--out", str(tmp_path / "o"))
    rep = read_report(tmp_path / "o")
    status = {p["name"]: p["status"] for p in rep["probes"]}
    assert status["embed"] == "pass" and status["blocks.0.attn_in"] == "not exposed"
    assert status["logits"] == "fail"  # no blocks: the logits are wrong, and compared
    assert rep["summary"]["isolation"] == "not supported by this candidate"
    assert code == 1


def test_port_map_file(tmp_path: Path, run_cli) -> None:
    f = _port(tmp_path)
    m = tmp_path / "port.toml"
    m.write_text('[probes]\n"embed" = { module = "emb", io = "output" }\n')
    code, _, _ = run_cli(*BASE, "--port", f"{f}:build", "--port-map", str(m), "--out", str(tmp_path / "o"))
    assert read_report(tmp_path / "o")["probes"][0]["status"] == "pass" and code == 1
    m.write_text('[probes]\n"blocks.0.attention" = { module = "emb" }\n')
    _usage_error(run_cli(*BASE, "--port", f"{f}:build", "--port-map", str(m), "--no-files"), "not a canonical probe name")


@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (["--fault", "rope-theta"], ["unknown fault 'rope-theta'", "Note: valid faults: double-rope, eos-token, gguf-eos-id, gguf-norm-eps, gguf-qk-permute, kv-position, mlp-overflow, norm-eps, norm-no-upcast, qkv-split, rope-base, silu-wrong-branch"]),
        (["--fault", "double-rope@9"], ["block 9 does not exist", "Note: this model has blocks 0..3"]),
        (["--fault", "double-rope@x"], ["is not a block index"]),
    ],
)
def test_bad_faults(args: list[str], needles: list[str], run_cli) -> None:
    _usage_error(run_cli(*BASE, *args, "--no-files"), *needles)


def test_port_options_need_port_candidate(run_cli) -> None:
    _usage_error(run_cli("run", "--port", "x.py:build", "--no-files", "-q"), "--port needs --candidate port")
    _usage_error(run_cli("run", "--fault", "double-rope", "--no-files", "-q"), "needs --candidate port", "mlp-overflow")
    _usage_error(run_cli("run", "--model", "qwen2", "--candidate", "port", "--no-files", "-q"), "no built-in port for 'qwen2'")


def test_import_parity_is_light_and_probe_is_a_noop() -> None:
    code = ("import sys, parity; t = object(); assert parity.probe('embed', t) is t; "
            "assert not parity.is_capturing(); assert 'torch' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PYTHONPATH": str(REPO)})


def test_fused_pair_transforms() -> None:
    import torch

    from parity.capture.probemap import TRANSFORMS

    h, r = torch.ones(2), torch.full((2,), 2.0)
    assert TRANSFORMS["hidden"]((h, r)) is h and TRANSFORMS["residual"]((h, r)) is r
    assert TRANSFORMS["hidden_plus_residual"]((h, r)).tolist() == [3.0, 3.0]


def test_doctor_lists_port_and_faults(run_cli) -> None:
    code, out, _ = run_cli("doctor")
    assert code == 0 and "port" in out and "double-rope" in out and "mlp-overflow" in out
