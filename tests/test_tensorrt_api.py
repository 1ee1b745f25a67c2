"""The tensorrt candidate's build path against the TensorRT Python API of 10.12 and 11.1.

TensorRT cannot be installed here, so these tests use a STAND-IN module (``stand_in``): it is
not TensorRT. Its ``BuilderFlag`` and ``NetworkDefinitionCreationFlag`` have exactly the
members the real bindings register (python/src/infer/pyCore.cpp of NVIDIA/TensorRT @ v10.12.0
and @ v11.1), the parser has ``parse`` and ``parse_from_file`` (python/src/parsers/pyOnnx.cpp),
and every call the build makes is recorded. Touching a member the real version lacks raises
AttributeError, as the real module would.
"""
from __future__ import annotations

import enum
import types
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")

from parity.engines import tensorrt as trt_engine  # noqa: E402
from parity.engines.onnx_export import ExportedGraph, OnnxProbe  # noqa: E402

BUILDER_FLAGS = {
    "10.12": ["FP16", "BF16", "INT8", "DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE",
              "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE", "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS",
              "DIRECT_IO", "REJECT_EMPTY_ALGORITHMS", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME", "FP8",
              "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "WEIGHTLESS", "STRIP_PLAN", "REFIT_IDENTICAL",
              "WEIGHT_STREAMING", "INT4", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "FP4",
              "DISTRIBUTIVE_INDEPENDENCE"],
    "11.1": ["DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "EDITABLE_TIMING_CACHE", "TF32",
             "SPARSE_WEIGHTS", "SAFETY_SCOPE", "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME",
             "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN", "REFIT_IDENTICAL",
             "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS", "MONITOR_MEMORY", "DISTRIBUTIVE_INDEPENDENCE"],
}
CREATION_FLAGS = {
    "10.12": ["EXPLICIT_BATCH", "STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
    "11.1": ["STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"],
}


def stand_in(version: str, calls: list[tuple[Any, ...]]) -> types.ModuleType:
    """A stand-in for ``import tensorrt`` (NOT TensorRT): the flag enums of ``version``."""
    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.BuilderFlag = enum.IntEnum("BuilderFlag", BUILDER_FLAGS[version], start=0)
    mod.NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", CREATION_FLAGS[version], start=0)
    mod.MemoryPoolType = enum.IntEnum("MemoryPoolType", ["WORKSPACE"], start=0)

    class Logger:
        WARNING = 2

        def __init__(self, level: int) -> None:
            pass

    class Tensor:
        def __init__(self, name: str) -> None:
            self.name, self.is_network_output = name, False

    class Layer:
        def __init__(self, name: str) -> None:
            self.num_outputs, self._t = 1, Tensor(name)

        def get_output(self, j: int) -> Tensor:
            return self._t

    class Network:
        def __init__(self) -> None:
            self._layers = [Layer("emb_out"), Layer("logits")]
            self.num_layers = len(self._layers)

        def get_layer(self, i: int) -> Layer:
            return self._layers[i]

        def mark_output(self, t: Tensor) -> None:
            calls.append(("mark_output", t.name))

    class Config:
        def set_memory_pool_limit(self, pool: Any, size: int) -> None:
            calls.append(("pool", size))

        def set_flag(self, flag: Any) -> None:
            calls.append(("set_flag", flag.name))

        def clear_flag(self, flag: Any) -> None:
            calls.append(("clear_flag", flag.name))

    class Builder:
        def __init__(self, logger: Logger) -> None:
            pass

        def create_network(self, flags: int = 0) -> Network:
            calls.append(("create_network", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def build_serialized_network(self, network: Network, config: Config) -> bytes:
            return b"plan"

    class OnnxParser:
        def __init__(self, network: Network, logger: Logger) -> None:
            self.num_errors = 0

        def parse(self, model: bytes, path: str | None = None) -> bool:
            calls.append(("parse_bytes", len(model)))
            return True

        def parse_from_file(self, model: str) -> bool:
            calls.append(("parse_from_file", model))
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            pass

        def deserialize_cuda_engine(self, blob: bytes) -> str:
            return "engine"

    mod.Logger, mod.Builder, mod.OnnxParser, mod.Runtime = Logger, Builder, OnnxParser, Runtime
    return mod


def backend(version: str, dtype: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            calls: list[tuple[Any, ...]], proto: Any = None) -> trt_engine.TensorRTBackend:
    (tmp_path / "model.onnx").write_bytes(b"onnx")
    graph = ExportedGraph(tmp_path / "model.onnx", "stand-in", dtype, 4, {"embed": OnnxProbe("embed", "emb_out")})
    monkeypatch.setattr(trt_engine.torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(trt_engine, "_trt", lambda: stand_in(version, calls))
    return trt_engine.TensorRTBackend(graph, proto, dtype)


@pytest.mark.parametrize("version", ["10.12", "11.1"])
def test_fp16_is_strongly_typed_and_never_touches_builderflag_fp16(version: str, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    b = backend(version, "fp16", tmp_path, monkeypatch, calls)
    b.engine(["embed"])
    flags = dict(c for c in calls if c[0] == "create_network")["create_network"]
    creation = stand_in(version, []).NetworkDefinitionCreationFlag
    assert flags & (1 << int(creation.STRONGLY_TYPED))
    assert not [c for c in calls if c[0] in ("set_flag", "clear_flag")]  # fp16 comes from the export's dtype
    assert ("mark_output", "emb_out") in calls
    assert b.describe()["precision_flags"][0].startswith("STRONGLY_TYPED (precision from the fp16 ONNX export)")
    if version == "11.1":
        assert not hasattr(stand_in(version, []).BuilderFlag, "FP16")  # the stand-in is faithful: touching it fails


@pytest.mark.parametrize("version", ["10.12", "11.1"])
def test_fp32_clears_tf32(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    b = backend(version, "fp32", tmp_path, monkeypatch, calls)
    b.engine(["embed"])
    assert ("clear_flag", "TF32") in calls and not [c for c in calls if c[0] == "set_flag"]
    assert "TF32 cleared" in b.describe()["precision_flags"]
    assert "mark_output" in b.describe()["capture"]


def test_explicit_batch_only_where_the_enum_has_it() -> None:
    f10, f11 = (trt_engine.creation_flags(stand_in(v, [])) for v in ("10.12", "11.1"))
    assert f10 == (1 << 0) | (1 << 1) and f11 == 1 << 0  # 11.1: STRONGLY_TYPED is member 0, no EXPLICIT_BATCH


@pytest.mark.parametrize("version", ["10.12", "11.1"])
def test_parsing_goes_through_the_file(version: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, ...]] = []
    b = backend(version, "fp32", tmp_path, monkeypatch, calls)
    b.engine(["embed"])
    assert ("parse_from_file", str(tmp_path / "model.onnx")) in calls
    assert not [c for c in calls if c[0] == "parse_bytes"]


def test_a_changed_graph_over_2_gib_is_written_with_external_data(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--ort-fault changes the graph in memory: it is saved (weights as external data when the
    proto is over protobuf's 2 GiB) and parsed from that file, never serialized to bytes."""
    onnx = pytest.importorskip("onnx")
    calls: list[tuple[Any, ...]] = []

    class BigProto:
        def ByteSize(self) -> int:  # noqa: N802 - protobuf's name
            return 3 << 30

    saved: dict[str, Any] = {}
    monkeypatch.setattr(onnx, "save", lambda proto, path, **kw: saved.update(path=path, **kw) or Path(path).write_bytes(b"x"))
    b = backend("11.1", "fp32", tmp_path, monkeypatch, calls, proto=BigProto())
    b.faults = [{"target": "w", "scale": 2.0}]
    b.engine(["embed"])
    assert saved["save_as_external_data"] is True and saved["location"] == "model.onnx.data"
    assert ("parse_from_file", saved["path"]) in calls and not [c for c in calls if c[0] == "parse_bytes"]
