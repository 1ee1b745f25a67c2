"""The ``tensorrt`` candidate: the probe-located ONNX export parsed by TensorRT's ONNX
parser, probe tensors marked as network outputs, an engine built and run on a CUDA GPU.

Plain TensorRT Python API (``execute_async_v3`` with tensor addresses), buffers are torch
CUDA tensors; no Polygraphy. Written against the bindings of TensorRT 10.x and 11.x
(python/src/infer/pyCore.cpp, pyGraph.cpp, parsers/pyOnnx.cpp @ v10.12.0 and @ v11.1 of
NVIDIA/TensorRT), every optional call guarded by ``hasattr`` on the installed module:

* ``--dtype fp16`` parses the **fp16 ONNX export** into a *strongly typed* network
  (``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` where the flag exists; on 11.x every
  network is strongly typed and the flag is a deprecated no-op). ``BuilderFlag.FP16`` is
  never used: deprecated in 10.12 (include/NvInfer.h @ v10.12.0, "Superseded by strong
  typing") and gone from 11.x's ``BuilderFlag``.
* ``--dtype fp32`` clears ``BuilderFlag.TF32`` (on by default: GEMM inputs rounded to 10-bit
  mantissas), as Polygraphy does (tools/Polygraphy/polygraphy/backend/trt/config.py @ v11.1).
* The model is parsed **from its file** (``OnnxParser.parse_from_file``), so weights stored
  as external data next to it (models over 2 GiB, which protobuf cannot serialize) reach
  TensorRT -- as Polygraphy's ``NetworkFromOnnxPath`` does (backend/trt/loader.py @ v11.1).
* Capture: probes are marked as network **outputs**. That can change which layers TensorRT
  fuses and which kernels it picks compared with an unmarked engine; the report says so
  (``capture``). TensorRT >= 10.12 also offers debug tensors
  (``INetworkDefinition.mark_unfused_tensors_as_debug_tensors`` with an ``IDebugListener``),
  which do not prevent fusion (``markDebug`` of a named tensor does, like an output) but see
  only tensors that survive it, under the engine's *internal* names (include/NvInfer.h @
  v11.1: "DebugListener can only get internal tensor names ... names obtained by
  IEngineInspector"). Mapping those back to probes needs the engine inspector; parity does
  not use them yet (``parity doctor --engine tensorrt`` says whether the installed TensorRT
  has them).

One *build* is one engine for one set of marked probes, cached, as for onnxruntime, so
``--mode bisect`` marks a few probes per engine.

Written against the real API and tested with a stand-in module that has exactly the
attribute sets of TensorRT 10.12 and 11.1 (tests/test_tensorrt_api.py); TensorRT itself
cannot be installed on the development machine (tests marked ``tensorrt`` run where it can).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from parity.engines.base import Backend, Sink
from parity.engines.onnxrt import canonical, export_for, summarize_missing
from parity.loading.families import DTYPE_NAMES
from parity.errors import BackendError, UsageError
from parity.engines.onnx_export import INPUT, OUTPUT, ExportedGraph, inject_fault, parse_fault


CAPTURE = ("probes marked as network outputs (mark_output): TensorRT may fuse and pick kernels differently "
           "than in an engine without them")


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:  # pragma: no cover - only where tensorrt is missing
        raise BackendError(f"cannot import tensorrt: {exc}", note="`parity doctor` lists what is available") from None
    return trt


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype=np.dtype(trt.nptype(dt)))).dtype


class TensorRTBackend(Backend):
    requires = ("tensorrt",)

    def __init__(self, graph: ExportedGraph, proto: Any, dtype: str, faults: list[str] | None = None,
                 workspace_gib: float = 4.0) -> None:
        super().__init__("tensorrt")
        if not torch.cuda.is_available():
            raise BackendError("the tensorrt candidate needs a CUDA GPU; none is visible here.")
        self.trt = _trt()
        self.graph = graph
        self.dtype = dtype
        self.proto = proto
        self.faults = []
        for f in faults or []:
            target, scale = parse_fault(f)
            self.faults.append({"target": target, "scale": scale, "initializers": inject_fault(self.proto, target, scale)})
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.workspace = int(workspace_gib * (1 << 30))
        self.engines: dict[tuple[str, ...], Any] = {}
        self.builds: list[list[str]] = []
        self._fault_file: Path | None = None
        self.precision: list[str] = []

    def available_probes_impl(self) -> list[str]:
        return list(self.graph.located)

    # -- build ---------------------------------------------------------------------------------
    def _network(self) -> tuple[Any, Any, Any]:
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network(creation_flags(trt))
        parser = trt.OnnxParser(network, self.logger)
        path = self._model_file()
        if hasattr(parser, "parse_from_file"):
            ok = parser.parse_from_file(str(path))
        else:  # pragma: no cover - TensorRT < 8 only
            ok = parser.parse(path.read_bytes(), str(path))
        if not ok:
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT's ONNX parser rejected the graph: {errs[:400]}")
        return builder, network, parser

    def _model_file(self) -> Path:
        """The ONNX file to parse: the export itself, or (with --ort-fault) the changed graph
        written next to a temp copy, its weights as external data when it is large."""
        if not self.faults:
            return Path(self.graph.path)
        if self._fault_file is None:
            import tempfile

            import onnx

            folder = Path(tempfile.mkdtemp(prefix="parity-trt-"))
            self._fault_file = folder / "model.onnx"
            big = self.proto.ByteSize() > 1_800_000_000
            onnx.save(self.proto, str(self._fault_file), save_as_external_data=big,
                      location="model.onnx.data" if big else None)
        return self._fault_file

    def _mark(self, network: Any, probes: list[str]) -> None:
        wanted = {self.graph.located[p].tensor: p for p in probes}
        found: dict[str, Any] = {}
        for i in range(network.num_layers):
            layer = network.get_layer(i)
            for j in range(layer.num_outputs):
                t = layer.get_output(j)
                if t.name in wanted and t.name not in found:
                    found[t.name] = t
        missing = [wanted[n] for n in wanted if n not in found]
        if missing:
            raise BackendError(f"TensorRT's network has no tensor for {missing[0]} (ONNX tensor "
                               f"'{self.graph.located[missing[0]].tensor}'); the parser renamed or folded it.")
        for t in found.values():
            if not t.is_network_output:
                network.mark_output(t)

    def engine(self, probes: list[str]) -> Any:
        key = tuple(sorted(probes))
        if key in self.engines:
            return self.engines[key]
        trt = self.trt
        builder, network, _parser = self._network()
        self._mark(network, probes)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, self.workspace)
        self.precision = configure_precision(trt, config, self.dtype)
        blob = builder.build_serialized_network(network, config)
        if blob is None:
            raise BackendError("TensorRT failed to build the engine (see the TensorRT log above).")
        engine = trt.Runtime(self.logger).deserialize_cuda_engine(blob)
        self.engines[key] = engine
        self.builds.append(list(probes))
        return engine

    # -- run -------------------------------------------------------------------------------------
    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        trt = self.trt
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] != self.graph.seq_len:
            raise BackendError(f"the ONNX graph was exported for {self.graph.seq_len} tokens, got {ids.shape[1]}.")
        engine = self.engine(probes)
        context = engine.create_execution_context()
        buffers: dict[str, torch.Tensor] = {}
        outputs: list[tuple[str, torch.dtype]] = []
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            tdtype = _torch_dtype(trt, engine.get_tensor_dtype(name))
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                buffers[name] = torch.from_numpy(ids).to("cuda", dtype=tdtype).contiguous()
                context.set_input_shape(name, tuple(buffers[name].shape))
            else:
                outputs.append((name, tdtype))
        for name, tdtype in outputs:
            buffers[name] = torch.empty(tuple(context.get_tensor_shape(name)), dtype=tdtype, device="cuda")
        for name, buf in buffers.items():
            context.set_tensor_address(name, buf.data_ptr())
        stream = torch.cuda.current_stream()
        if not context.execute_async_v3(stream.cuda_stream):
            raise BackendError("TensorRT failed to execute the engine.")
        stream.synchronize()
        for p in probes:
            sink(p, canonical(buffers[self.graph.located[p].tensor].cpu().numpy(), self.graph.located[p]))
        return buffers.get(OUTPUT)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.label, "dtype": DTYPE_NAMES.get(self.dtype, self.dtype), "device": "cuda",
                "exporter": self.graph.exporter, "onnx": str(self.graph.path), "tensorrt": getattr(self.trt, "__version__", None),
                "precision_flags": self.precision, "capture": CAPTURE, "not_exposed": summarize_missing(self.graph.missing),
                "builds": len(self.builds), "faults": self.faults or None, "input": INPUT}


def creation_flags(trt: Any) -> int:
    """Network creation flags: STRONGLY_TYPED where the enum has it (10.x; a deprecated no-op
    on 11.x, where every network is strongly typed), EXPLICIT_BATCH only where it still exists
    (ignored since 10.0, removed in 11.x: pyCore.cpp @ v11.1)."""
    flag = getattr(trt, "NetworkDefinitionCreationFlag", None)
    flags = 0
    for name in ("EXPLICIT_BATCH", "STRONGLY_TYPED"):
        if flag is not None and hasattr(flag, name):
            flags |= 1 << int(getattr(flag, name))
    return flags


def configure_precision(trt: Any, config: Any, dtype: str) -> list[str]:
    """Builder flags for ``dtype``; returns what the report lists. Precision comes from the
    strongly typed network (the export's dtype); fp32 clears TF32 where the flag exists."""
    done = ["STRONGLY_TYPED (precision from the " + dtype + " ONNX export)"]
    flags = getattr(trt, "BuilderFlag", None)
    if dtype == "fp32" and flags is not None and hasattr(flags, "TF32"):
        config.clear_flag(flags.TF32)
        done.append("TF32 cleared")
    return done


def create(ctx: Any) -> TensorRTBackend:
    """Entry point for ``--candidate tensorrt``: the export in the run's dtype, strongly typed."""
    o = ctx.options
    if o.dtype not in ("fp32", "fp16"):
        raise UsageError(f"the tensorrt candidate builds fp32 or fp16 engines, not {o.dtype}.")
    graph, proto = export_for(ctx, o.dtype)
    return TensorRTBackend(graph, proto, o.dtype, list(getattr(o, "ort_fault", None) or []))
