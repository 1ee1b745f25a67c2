"""Small fixes from "A tool people enjoy" (items 6 and 8): the SPDX license, no deprecated
cache keyword in decode, no torchvision notes from the ONNX export, report files with the
umask's permissions, the kept tensors written, `parity doctor`'s versions / CUDA / broken
pipe, and the long dtype names."""
from __future__ import annotations

import dataclasses
import logging
import os
import stat
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import pytest
import torch

from parity.loading.source import ModelSource
from parity.run.decode import Stepper, full_forward_last

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [872, 1879, 374, 264, 3460, 315, 23541, 13]


# --------------------------------------------------------------------------- 1. license


def test_pyproject_license_is_an_spdx_string_and_setuptools_accepts_it() -> None:
    from packaging.requirements import Requirement
    from packaging.version import Version

    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert data["project"]["license"] == "Apache-2.0"
    reqs = [Requirement(r) for r in data["build-system"]["requires"]]
    st = next(r for r in reqs if r.name == "setuptools")
    assert Version("77") in st.specifier and Version("76.9") not in st.specifier

    setuptools = pytest.importorskip("setuptools")
    if Version(setuptools.__version__) < Version("77"):
        pytest.skip(f"setuptools {setuptools.__version__} here predates SPDX license strings")
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dist = apply_configuration(Distribution(), ROOT / "pyproject.toml")
    assert not [w for w in caught if "license" in str(w.message).lower()], [str(w.message) for w in caught]
    assert dist.metadata.license_expression == "Apache-2.0"


# --------------------------------------------------------------------------- 2. decode cache keyword


def _future_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, (FutureWarning, DeprecationWarning))
            and ("past_key_values" in str(w.message) or "cache" in str(w.message))]


@pytest.mark.parametrize("model", ["llama", "qwen2", "qwen"])
def test_stepper_passes_the_cache_without_deprecation(model: str) -> None:
    ref = ModelSource.resolve(model).build("cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Stepper(ref) as st:
            logits, seq = st.prefill(PROMPT), list(PROMPT)
            for _ in range(3):
                seq.append(int(logits.argmax()))
                logits = st.step(seq[-1])
    assert not _future_warnings(caught)
    full = full_forward_last(ref, seq)
    assert torch.allclose(logits, full, atol=2e-5, rtol=1e-5), (logits - full).abs().max()


def test_cache_keyword_follows_the_forward_signature() -> None:
    import inspect

    from parity.run.decode import cache_keyword

    llama = ModelSource.resolve("llama").build("cpu")
    hf_kw = "cache" if "cache" in inspect.signature(type(llama).forward).parameters else "past_key_values"
    assert cache_keyword(llama) == hf_kw
    assert cache_keyword(ModelSource.resolve("qwen").build("cpu")) == "past_key_values"  # clean-room Qwen v1

    class Old(torch.nn.Module):
        def forward(self, input_ids, past_key_values=None, use_cache=False):  # noqa: ANN001, ANN201
            return input_ids

    class Kwargs(torch.nn.Module):
        def forward(self, input_ids, **kwargs):  # noqa: ANN001, ANN003, ANN201
            return input_ids

    assert cache_keyword(Old()) == "past_key_values" and cache_keyword(Kwargs()) == "past_key_values"


def test_returned_cache_reads_the_field_the_output_has() -> None:
    from parity.run.decode import returned_cache

    @dataclasses.dataclass
    class PortLike:
        logits: object = None
        past_key_values: object = None

    marker = object()
    assert returned_cache(PortLike(past_key_values=marker)) is marker
    from transformers.modeling_outputs import CausalLMOutputWithPast

    fields = CausalLMOutputWithPast.__dataclass_fields__
    out = CausalLMOutputWithPast(logits=torch.zeros(1), **{("cache" if "cache" in fields else "past_key_values"): marker})
    assert returned_cache(out) is marker


def test_engine_port_decodes_through_the_stepper() -> None:
    from parity.engines.port.runner import build, builtin_spec, load_factory
    from parity.run.decode import cache_keyword

    source = ModelSource.resolve("llama")
    ref = source.build("cpu")
    factory, label = load_factory(builtin_spec("llama"))
    port = build(factory, label, source.config, ref.state_dict()).eval()
    assert cache_keyword(port) == "past_key_values"
    with Stepper(port) as st:
        logits, seq = st.prefill(PROMPT), list(PROMPT)
        for _ in range(3):
            seq.append(int(logits.argmax()))
            logits = st.step(seq[-1])
    full = full_forward_last(port, seq)
    assert torch.allclose(logits, full, atol=2e-5, rtol=1e-5), (logits - full).abs().max()


@pytest.mark.parametrize("model", ["llama", "qwen2"])
def test_generate_emits_no_future_warning(model: str, run_cli) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_cli("generate", "--model", model, "--device", "cpu", "-q", "--no-files",
                                 "--max-new-tokens", "3")
    assert code == 0, out + err
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]


# --------------------------------------------------------------------------- 3. ONNX export notes


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_export_drops_only_the_registration_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stand-in exporter logs the torchvision note and a warning of another logger: only the
    first is dropped, and the registration logger's level is restored after the export."""
    pytest.importorskip("onnx")
    from parity.engines.onnxruntime import export as onnx_export

    reg, other = logging.getLogger(onnx_export.REGISTRATION_LOGGER), logging.getLogger("torch.onnx.someone_else")
    seen_reg, seen_other = _Records(), _Records()
    reg.addHandler(seen_reg)
    other.addHandler(seen_other)
    level = reg.level

    class Prog:
        model_proto = "proto"

    def fake_export(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        reg.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        other.warning("something else")
        return Prog()

    monkeypatch.setattr(torch.onnx, "export", fake_export)
    try:
        proto, exporter = onnx_export._export(ModelSource.resolve("qwen").build("cpu"), 4, "fp32")
    finally:
        reg.removeHandler(seen_reg)
        other.removeHandler(seen_other)
    assert proto == "proto" and exporter.startswith("dynamo")
    assert seen_reg.messages == [] and seen_other.messages == ["something else"]
    assert reg.level == level


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
def test_real_export_prints_no_torchvision_notes() -> None:
    pytest.importorskip("onnxscript")
    from parity.engines.onnxruntime import export as onnx_export

    reg = logging.getLogger(onnx_export.REGISTRATION_LOGGER)
    seen = _Records()
    reg.addHandler(seen)
    try:
        _, exporter = onnx_export._export(ModelSource.resolve("qwen").build("cpu"), 4, "fp32")
    finally:
        reg.removeHandler(seen)
    assert exporter.startswith("dynamo"), exporter
    assert not [m for m in seen.messages if "torchvision" in m], seen.messages


# --------------------------------------------------------------------------- 4. file permissions


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=["022", "077", "002"])
def test_atomic_write_gives_plain_open_permissions(mask: int, umask, tmp_path: Path) -> None:
    from parity.report.files import atomic_write

    umask(mask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    ours = tmp_path / "sub" / "report.json"
    atomic_write(ours, "{}\n")
    atomic_write(ours, "{\"again\": 1}\n")  # replacing keeps the same rule
    atomic_write(tmp_path / "raw.bin", b"\x00\x01")
    want = 0o666 & ~mask
    assert stat.S_IMODE(plain.stat().st_mode) == want
    assert stat.S_IMODE(ours.stat().st_mode) == want
    assert stat.S_IMODE((tmp_path / "raw.bin").stat().st_mode) == want
    assert ours.read_text() == "{\"again\": 1}\n" and (tmp_path / "raw.bin").read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in ours.parent.iterdir()) == ["report.json"]  # no temp files left


def test_atomic_write_failure_keeps_the_old_file(tmp_path: Path) -> None:
    from parity.report.files import atomic_write

    path = tmp_path / "report.json"
    atomic_write(path, "old\n")
    with pytest.raises(UnicodeEncodeError):
        atomic_write(path, "new \ud800\n")  # a lone surrogate cannot be encoded: fails mid-write
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


# --------------------------------------------------------------------------- 5. kept tensors


def test_write_tensors_writes_both_sides(tmp_path: Path, umask) -> None:
    from safetensors.torch import load_file

    from parity.options import RunOptions
    from parity.report import files
    from parity.run.candidate import execute

    umask(0o022)
    opts = RunOptions(model="qwen", tokens=8, device="cpu", keep_tensors=True, probes=["embed", "blocks.0.*", "logits"])
    result = execute(opts, None)
    path = files.write_tensors(result, tmp_path)
    assert path == tmp_path / "tensors.safetensors"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    saved = load_file(str(path))
    cand = {k.removeprefix("candidate/") for k in saved if k.startswith("candidate/")}
    ref = {k.removeprefix("reference/") for k in saved if k.startswith("reference/")}
    assert {"embed", "logits", "blocks.0.mlp_out"} <= cand and cand <= ref
    assert set(saved) == {f"reference/{n}" for n in ref} | {f"candidate/{n}" for n in cand}
    for name in ("embed", "logits"):
        assert torch.equal(saved[f"reference/{name}"], result.reference.tensor(name).cpu())
        assert torch.equal(saved[f"candidate/{name}"], result.candidate.tensor(name).cpu())
    assert saved["candidate/logits"].dtype == torch.float16 and saved["reference/logits"].dtype == torch.float32
    assert [p.name for p in tmp_path.iterdir()] == ["tensors.safetensors"]


def test_write_tensors_without_kept_candidate_tensors_writes_nothing(tmp_path: Path) -> None:
    from parity.capture.sinks import Capture, ProbeRecord
    from parity.report import files
    from parity.run.common import RunResult

    ref, cand = Capture("reference"), Capture("torch")
    ref.records["embed"] = ProbeRecord("embed", None, torch.ones(2, 3))
    cand.records["embed"] = ProbeRecord("embed", None, None)
    assert files.write_tensors(RunResult(None, ref, cand, [1, 2]), tmp_path) is None  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_write_tensors_makes_contiguous_cpu_copies(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from parity.capture.sinks import Capture, ProbeRecord
    from parity.report import files
    from parity.run.common import RunResult

    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    ref, cand = Capture("reference"), Capture("torch")
    ref.records["x"] = ProbeRecord("x", None, base.t())  # not contiguous
    cand.records["x"] = ProbeRecord("x", None, base.t().to(torch.bfloat16))
    ref.records["y"] = ProbeRecord("y", None, base[0])  # shares storage with x
    files.write_tensors(RunResult(None, ref, cand, [1]), tmp_path)  # type: ignore[arg-type]
    saved = load_file(str(tmp_path / "tensors.safetensors"))
    assert set(saved) == {"reference/x", "reference/y", "candidate/x"}
    assert torch.equal(saved["reference/x"], base.t()) and torch.equal(saved["reference/y"], base[0])
    assert saved["candidate/x"].dtype == torch.bfloat16


# --------------------------------------------------------------------------- 6. doctor


def test_doctor_shows_versions_cuda_and_python(run_cli) -> None:
    import numpy

    code, out, _ = run_cli("doctor")
    assert code == 0
    lines = out.splitlines()
    assert any(line.split()[:2] == ["torch", torch.__version__] for line in lines), out
    from importlib.metadata import version

    assert any(line.split()[:1] == ["numpy"] and line.split()[1] in (numpy.__version__, version("numpy"))
               for line in lines), out
    assert any(line.split()[:2] == ["tensorrt_llm", "missing"] or line.split()[:1] == ["tensorrt_llm"]
               and line.split()[1][0].isdigit() for line in lines), out
    cuda = next(line for line in lines if line.split()[:1] == ["CUDA"])
    assert ("available" in cuda) and (str(torch.version.cuda) in cuda if torch.version.cuda else "without CUDA" in cuda)
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in cuda
    else:
        assert "not available" in cuda
    assert any(line.split()[:2] == ["python", sys.executable] for line in lines), out
    assert "candidates:" in out


def test_doctor_into_a_closed_pipe_is_quiet() -> None:
    """`parity doctor | head -1`: no BrokenPipeError traceback, exit code 0."""
    proc = subprocess.Popen([sys.executable, "-m", "parity", "doctor"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader goes away while doctor is still writing
    err = proc.stderr.read().decode()
    code = proc.wait(timeout=120)
    assert first.startswith(b"parity ")
    assert "BrokenPipeError" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    assert code == 0


# --------------------------------------------------------------------------- 7. long dtype names


def test_long_dtype_names_are_accepted() -> None:
    from parity.engines.torch.runner import torch_dtype
    from parity.errors import UsageError

    for long, short, dt in (("float16", "fp16", torch.float16), ("bfloat16", "bf16", torch.bfloat16),
                            ("float32", "fp32", torch.float32)):
        assert torch_dtype(long) is dt and torch_dtype(short) is dt
        preset = ModelSource.resolve("qwen").preset
        assert preset.tolerance_table(long) == preset.tolerance_table(short)
    with pytest.raises(UsageError) as info:
        torch_dtype("float8")
    assert "fp16" in str(info.value.note) and "float16" in str(info.value.note)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_run_accepts_long_dtype_names(dtype: str, run_cli) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--dtype", dtype, "--device", "cpu", "--tokens", "8",
                             "--no-isolate", "-q", "--no-files")
    assert code == 0, out + err
    assert "PASSED" in out
