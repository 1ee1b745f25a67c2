"""Export the reference model to ONNX and locate canonical probes in the graph.

``export_graph`` exports a copy of the reference module in the run's dtype for one input
shape (torch's dynamo exporter; the TorchScript exporter only when dynamo fails, and the
graph records which one ran), and caches the file under ``$PARITY_CACHE`` (default
``~/.cache/parity``) keyed by model, config / checkpoint, seed, shape, dtype and the
probe map.

``locate`` maps each canonical probe to one ONNX tensor. Every node the exporter emits
carries the stack of module paths it was traced in (``pkg.torch.onnx.name_scopes``; the
TorchScript exporter encodes it in the node name, ``/model/layers.0/mlp/...``). For a
probe map entry ``module = M, io = "output"`` the probe is the value produced inside M
and consumed outside it (the ``index``-th such value); for ``io = "input"`` it is the
value produced outside M and consumed inside it. Probes whose module left no node in
the graph (folded into constants, like rotary tables, or identity hook points) are
*not exposed*, with the reason, never silently dropped.

``with_outputs`` returns a copy of the graph with a chosen set of those tensors marked as
graph outputs: one "build" of the candidate. Nothing here imports onnx at module load.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parity.errors import BackendError, ParityError
from parity.capture.probemap import ProbeMap

EXPORT_FORMAT = 2
WRAPPER = "m"  # attribute of the export wrapper that holds the model: scopes start "m."
INPUT, OUTPUT = "input_ids", "logits"


def cache_root() -> Path:
    return Path(os.environ.get("PARITY_CACHE") or Path.home() / ".cache" / "parity")


@dataclass(frozen=True)
class OnnxProbe:
    """Where one canonical probe lives in the graph, and how to bring it to canonical shape."""

    probe: str
    tensor: str
    heads: int | None = None
    batched: bool = True
    transform: str | None = None


@dataclass
class ExportedGraph:
    path: Path
    exporter: str
    dtype: str
    seq_len: int
    located: dict[str, OnnxProbe] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)

    def load(self) -> Any:
        import onnx

        return onnx.load(str(self.path))



# -- export ----------------------------------------------------------------------------------

def cache_key(source: Any, probe_map: ProbeMap, seq_len: int, dtype: str) -> str:
    """Hash of everything that changes the exported graph or the probe locations."""
    import torch

    ck = None
    if source.checkpoint is not None:
        from parity.loading.checkpoint import weight_files

        ck = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in weight_files(source.checkpoint)]
    pm = probe_map.path.read_text() if probe_map.path is not None else repr(probe_map.entries)
    blob = json.dumps({"fmt": EXPORT_FORMAT, "family": source.family.name, "config": source.config_dict,
                       "checkpoint": ck, "seed": source.seed, "seq_len": seq_len, "dtype": dtype,
                       "probe_map": pm, "torch": torch.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def export_graph(reference: Any, source: Any, probe_map: ProbeMap, seq_len: int, dtype: str,
                 cache_dir: Path | None = None) -> tuple[ExportedGraph, Any]:
    """The cached ONNX export of ``reference`` in ``dtype`` for ``seq_len`` tokens, its probes
    located, and the loaded ModelProto. Only the export is cached; probes are located anew."""
    import onnx

    folder = (cache_dir or cache_root()) / "onnx" / f"{source.family.name}-{dtype}-T{seq_len}-{cache_key(source, probe_map, seq_len, dtype)}"
    meta = folder / "export.json"
    if meta.is_file() and (folder / "model.onnx").is_file():
        exporter = json.loads(meta.read_text())["exporter"]
        model_proto = onnx.load(str(folder / "model.onnx"))
    else:
        from parity.loading.gguf import cache_error

        try:  # $PARITY_CACHE a file, read-only or full: the cache's error, not a traceback
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise cache_error(exc, folder) from None
        model_proto, exporter = _export(reference, seq_len, dtype)
        try:
            _save_atomic(model_proto, folder)
            tmp = meta.with_suffix(".tmp")
            tmp.write_text(json.dumps({"format": EXPORT_FORMAT, "exporter": exporter, "dtype": dtype, "seq_len": seq_len}))
            tmp.replace(meta)
        except OSError as exc:
            for leftover in (folder / "model.onnx.tmp", meta.with_suffix(".tmp")):
                leftover.unlink(missing_ok=True)
            raise cache_error(exc, folder) from None
    graph = ExportedGraph(folder / "model.onnx", exporter, dtype, seq_len)
    graph.located, graph.missing = locate(model_proto, probe_map, probe_map.names(source.num_blocks), source.config)
    return graph, model_proto


def _save_atomic(model_proto: Any, folder: Path) -> None:
    import onnx

    tmp = folder / "model.onnx.tmp"
    big = model_proto.ByteSize() > 1_800_000_000
    onnx.save(model_proto, str(tmp), save_as_external_data=big, location="model.onnx.data" if big else None)
    tmp.replace(folder / "model.onnx")


class _Logits:
    """Factory for the export wrapper (a torch module returning logits only)."""

    @staticmethod
    def wrap(model: Any) -> Any:
        from torch import nn

        class Wrapper(nn.Module):
            def __init__(self, m: Any) -> None:
                super().__init__()
                setattr(self, WRAPPER, m)

            def forward(self, input_ids: Any) -> Any:
                out = getattr(self, WRAPPER)(input_ids=input_ids, use_cache=False)
                return getattr(out, "logits", out[0] if isinstance(out, tuple) else out)

        return Wrapper(model).eval()


#: torch's exporter logs "torchvision is not installed. Skipping torchvision::nms" (and
#: roi_align, ...) on this logger at every dynamo export: noise for a language model.
REGISTRATION_LOGGER = "torch.onnx._internal.exporter._registration"


@contextmanager
def _quiet_registration() -> Iterator[None]:
    """Drop the exporter registry's warnings (only that logger's) while exporting; its level
    is restored afterwards."""
    log = logging.getLogger(REGISTRATION_LOGGER)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def _export(reference: Any, seq_len: int, dtype: str) -> tuple[Any, str]:
    import torch

    from parity.engines.torch.runner import derive

    # Parameters in ``dtype``, buffers (rotary inv_freq) as they are: as an fp16 deployment
    # loads the model, and as the torch candidate is made.
    model = derive(reference, dtype, "cpu", "eager")
    wrapper = _Logits.wrap(model)
    ids = torch.zeros(1, seq_len, dtype=torch.long)
    names = {"input_names": [INPUT], "output_names": [OUTPUT]}
    with warnings.catch_warnings(), _quiet_registration():
        warnings.simplefilter("ignore")
        try:
            prog = torch.onnx.export(wrapper, (ids,), dynamo=True, verbose=False, **names)
            return prog.model_proto, f"dynamo (torch {torch.__version__})"
        except Exception as exc:  # noqa: BLE001 - any exporter failure falls back, and says so
            dynamo_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return _export_torchscript(wrapper, ids, names, dynamo_error)


def _export_torchscript(wrapper: Any, ids: Any, names: dict[str, Any], dynamo_error: str) -> tuple[Any, str]:
    import io

    import onnx
    import torch

    buf = io.BytesIO()
    try:
        torch.onnx.export(wrapper, (ids,), buf, dynamo=False, opset_version=17, **names)
    except Exception as exc:  # noqa: BLE001
        raise BackendError(f"ONNX export failed with both exporters: dynamo: {dynamo_error}; "
                           f"torchscript: {type(exc).__name__}: {exc}") from None
    return onnx.load_from_string(buf.getvalue()), f"torchscript (dynamo failed: {dynamo_error[:200]})"


# -- locating probes -------------------------------------------------------------------------

def node_scopes(node: Any) -> set[str]:
    """Module paths (wrapper prefix removed) a node was traced in."""
    raw = None
    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            raw = p.value
    paths: list[str] = []
    if raw is not None:
        try:
            paths = [str(s) for s in json.loads(raw.replace("'", '"'))]
        except ValueError:
            paths = [s.strip(" '\"") for s in raw.strip("[]").split(",")]
    elif node.name.startswith("/"):  # TorchScript exporter: /m/model/layers.0/mlp/MatMul
        parts = node.name.strip("/").split("/")[:-1]
        paths = [".".join(parts[: i + 1]) for i in range(len(parts))]
    out = set()
    for s in paths:
        if s == WRAPPER:
            continue
        if s.startswith(WRAPPER + "."):
            out.add(s[len(WRAPPER) + 1:])
    return out


class _GraphIndex:
    def __init__(self, model_proto: Any) -> None:
        g = model_proto.graph
        self.nodes = list(g.node)
        self.scopes = [node_scopes(n) for n in self.nodes]
        self.constants = {i.name for i in g.initializer}
        self.constants |= {o for n in self.nodes if n.op_type == "Constant" for o in n.output}
        self.outputs = {o.name for o in g.output}
        self.last_dim: dict[str, int] = {}
        for vi in [*g.value_info, *g.output]:
            dims = vi.type.tensor_type.shape.dim
            if dims and dims[-1].HasField("dim_value"):
                self.last_dim[vi.name] = dims[-1].dim_value
        self.producer: dict[str, int] = {}
        self.consumers: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for o in n.output:
                if o:
                    self.producer[o] = i
            for v in n.input:
                if v:
                    self.consumers.setdefault(v, []).append(i)
        self._fill_unscoped()

    def _fill_unscoped(self) -> None:
        """Nodes the optimizer created carry no scopes: give them the scopes shared by their
        scoped producers and consumers (a Split between c_attn and the attention reshapes
        belongs to the attention module, not to c_attn nor to the block)."""
        for _ in range(3):
            for i, n in enumerate(self.nodes):
                if self.scopes[i]:
                    continue
                near = [self.producer[v] for v in n.input if v in self.producer]
                near += [c for o in n.output for c in self.consumers.get(o, [])]
                sets = [self.scopes[j] for j in near if self.scopes[j]]
                if sets:
                    self.scopes[i] = set.intersection(*sets)

    def inside(self, i: int, module: str) -> bool:
        return module in self.scopes[i]

    def escaping(self, module: str) -> list[str]:
        """Values produced inside ``module`` and used outside it (or graph outputs), in order;
        values its parent module uses come first. (The optimizer shares common subexpressions
        across blocks: a rotary table computed in block 0's attention and reused by block 1's
        escapes block 0's attention too, but only the real output is used by block 0 itself.)"""
        parent = module.rpartition(".")[0]
        own: list[str] = []
        other: list[str] = []
        for i, n in enumerate(self.nodes):
            if not self.inside(i, module):
                continue
            for v in n.output:
                if not v or v in own or v in other:
                    continue
                outside = [c for c in self.consumers.get(v, []) if not self.inside(c, module)]
                if v in self.outputs or (outside and (not parent or any(self.inside(c, parent) for c in outside))):
                    own.append(v)
                elif outside:
                    other.append(v)
        return own + other

    def entering(self, module: str) -> list[str]:
        """Non-constant values produced outside ``module`` and used inside it, in order of use."""
        out: list[str] = []
        for i, n in enumerate(self.nodes):
            if not self.inside(i, module):
                continue
            for v in n.input:
                if not v or v in out or v in self.constants:
                    continue
                p = self.producer.get(v)
                if p is None or not self.inside(p, module):
                    out.append(v)
        return out

    def has_module(self, module: str) -> bool:
        return any(module in s for s in self.scopes)


def expected_last_dim(probe: str, config: Any) -> int | None:
    """Last dim of a probe's tensor in the graph (before any reshape to heads), if known."""
    from parity.capture import probes as canon

    point = canon.parse(probe).point
    hidden = getattr(config, "hidden_size", None)
    if point in ("embed", "attn_in", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post", "final_norm"):
        return hidden if isinstance(hidden, int) else None
    if point == "logits":
        v = getattr(config, "vocab_size", None)  # lm_head rows (Qwen v1 pads only the embedding)
        return v if isinstance(v, int) else None
    return None


def locate(model_proto: Any, probe_map: ProbeMap, probes: Sequence[str], config: Any) -> tuple[dict[str, OnnxProbe], dict[str, str]]:
    """(probe -> OnnxProbe for probes found, probe -> reason for probes not exposed)."""
    idx = _GraphIndex(model_proto)
    located: dict[str, OnnxProbe] = {}
    missing: dict[str, str] = {}
    for probe in probes:
        b = probe_map.bind(probe, config)
        spec = b.spec
        if not idx.has_module(b.module):
            missing[probe] = f"module '{b.module}' left no node in the exported graph (folded into constants or traced away)"
            continue
        cands = idx.entering(b.module) if spec.io == "input" else idx.escaping(b.module)
        want = expected_last_dim(probe, config)
        if want is not None and spec.io == "output":  # drop values shared across blocks by CSE
            cands = [c for c in cands if idx.last_dim.get(c, want) == want] or cands
        pos = spec.index or 0
        if spec.kwarg is not None or pos >= len(cands):
            missing[probe] = f"{spec.io} {pos} of module '{b.module}' is not a distinct tensor of the exported graph"
            continue
        located[probe] = OnnxProbe(probe, cands[pos], b.heads, spec.batched, spec.transform)
    return located, missing


def value_types(model_proto: Any) -> dict[str, Any]:
    """name -> TypeProto for every value whose type the graph records (the dynamo exporter
    records every intermediate value; a tensor without one cannot be marked)."""
    g = model_proto.graph
    types = {v.name: v.type for v in list(g.value_info) + list(g.input) + list(g.output)}
    return types


def with_outputs(model_proto: Any, tensors: Iterable[str], types: dict[str, Any] | None = None) -> Any:
    """A copy of ``model_proto`` whose graph outputs are the original ones plus ``tensors``."""
    import onnx

    types = value_types(model_proto) if types is None else types
    marked = onnx.ModelProto()
    marked.CopyFrom(model_proto)
    present = {o.name for o in marked.graph.output}
    for t in tensors:
        if t in present:
            continue
        vi = onnx.ValueInfoProto(name=t)
        if t in types:
            vi.type.CopyFrom(types[t])
        else:
            raise BackendError(f"the exported graph records no type for tensor '{t}'; cannot mark it as an output.")
        marked.graph.output.append(vi)
        present.add(t)
    return marked


# -- fault injection (tests and `--ort-fault`) ------------------------------------------------

def parse_fault(text: str) -> tuple[str, float]:
    target, sep, scale = text.rpartition("*")
    try:
        if not sep or not target:
            raise ValueError
        return target, float(scale)
    except ValueError:
        raise ParityError(f"bad fault '{text}'.", note="write TARGET*SCALE, TARGET an initializer name or a module path, "
                          "e.g. 'model.layers.2.mlp.down_proj*1.5'") from None


def inject_fault(model_proto: Any, target: str, scale: float) -> list[str]:
    """Scale in place the initializers named ``target`` or used by nodes of module ``target``."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model_proto.graph.initializer}
    names = [n for n in (target, f"{WRAPPER}.{target}") if n in inits]
    if not names:
        idx = _GraphIndex(model_proto)
        names = sorted({v for i, n in enumerate(idx.nodes) if idx.inside(i, target)
                        for v in n.input if v in inits and _is_weight(inits[v])})
    if not names:
        raise ParityError(f"fault target '{target}' matches no initializer or module of the exported graph.",
                          note="use an initializer name or a module path such as 'model.layers.2.mlp.down_proj'")
    for n in names:
        arr = numpy_helper.to_array(inits[n])
        inits[n].CopyFrom(numpy_helper.from_array((arr * scale).astype(arr.dtype), n))
    return names


def _is_weight(init: Any) -> bool:
    return len(init.dims) >= 1 and init.data_type in (1, 10, 11, 16) and max(init.dims) > 1

