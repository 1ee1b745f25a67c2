"""The ``tensorrt`` candidate: the probe-located ONNX export parsed by TensorRT's ONNX
parser, probe tensors marked as network outputs, an engine built and run on a CUDA GPU.

Plain TensorRT Python API (TensorRT 10: ``execute_async_v3`` with tensor addresses),
buffers are torch CUDA tensors; no Polygraphy. ``--dtype fp16`` builds the float32 graph
with ``BuilderFlag.FP16`` (TensorRT picks half precision kernels where it likes, which is
how engines are usually built); ``--dtype fp32`` builds without it. One *build* is one
engine for one set of marked probes, cached, as for onnxruntime, so ``--mode bisect`` marks
a few probes per engine.

NOT VERIFIED HERE: TensorRT cannot be installed on the development machine; the tests in
tests/test_engines.py (marker ``tensorrt``) run only where ``import tensorrt`` works and a
GPU is present.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parity.engines.contract import EngineContext
from parity.engines.base import Backend, Sink
from parity.engines.onnxruntime.runner import canonical, export_for, summarize_missing
from parity import dtypes
from parity.errors import BackendError, UsageError
from parity.engines.onnxruntime.export import INPUT, OUTPUT, ExportedGraph, inject_fault, parse_fault


def _trt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:  # pragma: no cover - only where tensorrt is missing
        raise BackendError(f"cannot import tensorrt: {exc}", note="`parity doctor` lists what is available") from None
    return trt


def _torch_dtype(trt: Any, dt: Any) -> torch.dtype:
    return torch.from_numpy(np.zeros(1, dtype=np.dtype(trt.nptype(dt)))).dtype


class TensorRTBackend(Backend):

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
        self._model_bytes: bytes | None = None

    def available_probes_impl(self) -> list[str]:
        return list(self.graph.located)

    # -- build ---------------------------------------------------------------------------------
    def _network(self) -> tuple[Any, Any, Any]:
        trt = self.trt
        builder = trt.Builder(self.logger)
        flags = 0
        if int(trt.__version__.split(".")[0]) < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, self.logger)
        if self._model_bytes is None:
            self._model_bytes = self.proto.SerializeToString()
        if not parser.parse(self._model_bytes, str(self.graph.path)):
            errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise BackendError(f"TensorRT's ONNX parser rejected the graph: {errs[:400]}")
        return builder, network, parser

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
        if self.dtype == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
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
        return {"backend": self.label, "dtype": dtypes.long_name(self.dtype), "device": "cuda",
                "exporter": self.graph.exporter, "onnx": str(self.graph.path), "tensorrt": getattr(self.trt, "__version__", None),
                "precision_flags": ["FP16"] if self.dtype == "fp16" else [], "not_exposed": summarize_missing(self.graph.missing),
                "builds": len(self.builds), "faults": self.faults or None, "input": INPUT}


def create(ctx: EngineContext) -> TensorRTBackend:
    """Entry point for ``--candidate tensorrt``: the float32 export, built fp16 or fp32."""
    o = ctx.options
    if o.dtype not in ("fp32", "fp16"):
        raise UsageError(f"the tensorrt candidate builds fp32 or fp16 engines, not {o.dtype}.")
    graph, proto = export_for(ctx, "fp32")
    return TensorRTBackend(graph, proto, o.dtype, list(getattr(o, "ort_fault", None) or []))
