"""The ``onnxruntime`` candidate: the reference exported to ONNX, probes marked as outputs.

One *build* is an ONNX Runtime session over the exported graph with a chosen set of
probe tensors marked as graph outputs. ``capture`` builds (and caches) one session per
distinct probe set, so ``parity run`` makes one build marking everything and
``parity bisect`` makes a few builds marking a few probes each; ``builds`` records them.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from parity.engines.contract import EngineContext
from parity.engines.base import Backend, Sink
from parity.errors import BackendError, UsageError
from parity import dtypes
from parity.engines.onnxruntime.export import INPUT, OUTPUT, ExportedGraph, OnnxProbe, export_graph, inject_fault, parse_fault, value_types, with_outputs
from parity.capture import hooks

OPT_LEVELS = ("disable", "basic", "extended", "all")


def canonical(arr: np.ndarray, where: OnnxProbe) -> torch.Tensor:
    """An output array brought to the canonical probe shape (the hooks' rules)."""
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return hooks.canonical(t, where.transform, where.heads, where.batched, f"probe '{where.probe}' (ONNX tensor '{where.tensor}')")


class OnnxRuntimeBackend(Backend):

    def __init__(self, graph: ExportedGraph, proto: Any, opt_level: str = "all", provider: str = "CPUExecutionProvider",
                 faults: list[str] | None = None, threads: int = 0) -> None:
        super().__init__("onnxruntime")
        import onnxruntime as ort

        if opt_level not in OPT_LEVELS:
            raise UsageError(f"unknown ONNX Runtime optimization level '{opt_level}'.", note="valid: " + ", ".join(OPT_LEVELS))
        avail = ort.get_available_providers()
        if provider not in avail:
            raise UsageError(f"ONNX Runtime execution provider '{provider}' is not available here.", note="available: " + ", ".join(avail))
        self.graph = graph
        self.opt_level = opt_level
        self.provider = provider
        self.threads = threads
        self.proto = proto
        self.types = value_types(self.proto)
        self.faults: list[dict[str, Any]] = []
        for f in faults or []:
            target, scale = parse_fault(f)
            self.faults.append({"target": target, "scale": scale, "initializers": inject_fault(self.proto, target, scale)})
        self.sessions: dict[tuple[str, ...], Any] = {}
        self.builds: list[list[str]] = []  # probes marked in each build, in order made

    def available_probes_impl(self) -> list[str]:
        return list(self.graph.located)

    def session(self, probes: list[str]) -> Any:
        key = tuple(sorted(probes))
        if key not in self.sessions:
            import onnxruntime as ort

            tensors = [self.graph.located[p].tensor for p in probes]
            marked = with_outputs(self.proto, tensors, self.types)
            so = ort.SessionOptions()
            so.graph_optimization_level = {
                "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
            }[self.opt_level]
            so.log_severity_level = 3
            if self.threads:
                so.intra_op_num_threads = self.threads
            try:
                self.sessions[key] = ort.InferenceSession(marked.SerializeToString(), so, providers=[self.provider])
            except Exception as exc:  # noqa: BLE001 - ORT raises its own exception types
                raise BackendError(f"ONNX Runtime could not build the graph: {str(exc).splitlines()[0]}") from None
            self.builds.append(list(probes))
        return self.sessions[key]

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        ids = np.asarray(input_ids, dtype=np.int64).reshape(1, -1)
        if ids.shape[1] != self.graph.seq_len:
            raise BackendError(f"the ONNX graph was exported for {self.graph.seq_len} tokens, got {ids.shape[1]}.")
        sess = self.session(probes)
        names = [OUTPUT] + [self.graph.located[p].tensor for p in probes]
        values = sess.run(names, {INPUT: ids})
        for p, arr in zip(probes, values[1:]):
            sink(p, canonical(arr, self.graph.located[p]))
        return torch.from_numpy(values[0])

    def describe(self) -> dict[str, Any]:
        import onnxruntime as ort

        return {
            "backend": self.label,
            "dtype": dtypes.long_name(self.graph.dtype),
            "device": "cpu" if self.provider == "CPUExecutionProvider" else self.provider,
            "exporter": self.graph.exporter,
            "onnx": str(self.graph.path),
            "ort_opt": self.opt_level,
            "ort_provider": self.provider,
            "onnxruntime": ort.__version__,
            "not_exposed": summarize_missing(self.graph.missing),
            "builds": len(self.builds),
            "faults": self.faults or None,
        }


def summarize_missing(missing: dict[str, str]) -> dict[str, str]:
    """probe (block index folded to {i} when every block agrees) -> reason."""
    from parity.capture import probes as canon

    out: dict[str, str] = {}
    for name, why in missing.items():
        p = canon.parse(name)
        key = name if p.block is None else f"blocks.{{i}}.{p.point}"
        out.setdefault(key, why.replace(f".{p.block}.", ".{i}.") if p.block is not None else why)
    return out




def export_for(ctx: EngineContext, dtype: str) -> tuple[ExportedGraph, Any]:
    from parity.loading.inputs import resolve_inputs

    if dtype not in ("fp32", "fp16"):
        raise UsageError(f"the ONNX candidates run fp32 or fp16, not {dtype}.", note="use --dtype fp32 or --dtype fp16")
    seq_len = len(resolve_inputs(ctx.options, ctx.source))
    if getattr(ctx, "progress", None) is not None:
        ctx.progress(f"exporting to ONNX ({seq_len} tokens, {dtype}; cached in $PARITY_CACHE after the first time)")
    return export_graph(ctx.reference_model, ctx.source, ctx.probe_map, seq_len, dtype)


def create(ctx: EngineContext) -> OnnxRuntimeBackend:
    """Entry point for ``--candidate onnxruntime``."""
    o = ctx.options
    graph, proto = export_for(ctx, o.dtype)
    backend = OnnxRuntimeBackend(graph, proto, getattr(o, "ort_opt", None) or "all",
                                 getattr(o, "ort_provider", None) or "CPUExecutionProvider",
                                 list(getattr(o, "ort_fault", None) or []))
    return backend
