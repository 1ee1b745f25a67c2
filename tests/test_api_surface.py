"""``parity doctor --engine``: one line per missing or changed piece of the API parity uses.

The packages cannot be installed here: each test puts a STAND-IN module (built from the very
entry lists the check walks, then broken on purpose) in ``sys.modules``."""
from __future__ import annotations

import sys
import types
from typing import Any

import pytest

from parity.engines import api_surface


def _stand_in(name: str, entries: list[api_surface.Entry]) -> types.ModuleType:
    pkg = types.ModuleType(name)
    pkg.__version__ = "0.0-stand-in"
    for spec, _, _ in entries:
        dotted, _, params = spec.partition("(")
        parts = dotted.split(".")
        obj: Any = pkg
        for part in parts[:-1]:
            if not hasattr(obj, part):
                setattr(obj, part, types.SimpleNamespace())
            obj = getattr(obj, part)
        names = [p.strip() for p in params.rstrip(")").split(",") if p.strip()]
        fn = eval(f"lambda {', '.join(names)}: None") if names else object()  # noqa: S307 - test-made names
        setattr(obj, parts[-1], fn)
    return pkg


def test_all_present_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", _stand_in("tensorrt", api_surface.TENSORRT))
    lines = api_surface.check("tensorrt")
    assert lines[0] == "tensorrt 0.0-stand-in: the API parity uses is all there"
    assert not [ln for ln in lines if "missing" in ln or "changed" in ln]
    assert any("BuilderFlag.FP16 absent" in ln for ln in lines)


def test_a_missing_method_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    trt = _stand_in("tensorrt", api_surface.TENSORRT)
    del trt.OnnxParser.parse_from_file
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    lines = api_surface.check("tensorrt")
    assert lines[0].endswith("1 problem(s) in the API parity uses")
    assert [ln for ln in lines if "missing" in ln] == [
        "  missing: tensorrt.OnnxParser.parse_from_file (parsing the export from its file (external data past 2 GiB); "
        "AttributeError)"]


def test_a_changed_signature_and_the_fusion_default(monkeypatch: pytest.MonkeyPatch) -> None:
    llm = _stand_in("tensorrt_llm", api_surface.TRTLLM)

    class BuildConfig:  # the fused-MLP default lives in plugin_config in later 1.x releases
        def __init__(self, enable_debug_output: bool = False) -> None:
            self.gather_context_logits = False
            self.plugin_config = types.SimpleNamespace(use_fused_mlp=True)

    llm.BuildConfig = BuildConfig
    llm.runtime.GenerationSession.dump_debug_buffers = lambda self, step: None
    monkeypatch.setitem(sys.modules, "tensorrt_llm", llm)
    lines = api_surface.check("trtllm")
    assert "  changed: tensorrt_llm.BuildConfig takes no gather_context_logits " \
           "(debug outputs and every token's logits)" in lines
    assert any("use_fused_mlp defaults to True" in ln for ln in lines)
    assert any("gather_context_logits defaults to False" in ln for ln in lines)
    assert any("-step<N>.npy" in ln for ln in lines)


def test_not_importable_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # import raises ImportError
    (line,) = api_surface.check("trtllm")
    assert line.startswith("tensorrt_llm: not importable here (") and line.endswith("nothing to check")


def test_doctor_prints_the_check(monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    code, out, _ = run_cli("doctor", "--engine", "tensorrt")
    assert code == 0 and "API surface (tensorrt):" in out and "tensorrt: not importable here" in out
