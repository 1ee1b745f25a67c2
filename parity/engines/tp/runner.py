"""The tensor-parallel candidate (``--tp N``): the torch candidate sharded over N processes as
TensorRT-LLM shards it, launched by parity itself.

Each rank is a process (``torch.multiprocessing``, spawn) in one ``torch.distributed`` group:
NCCL with one GPU per rank (NVLink multicast kept off: ``NCCL_NVLS_ENABLE=0``), gloo on the
CPU. A rank builds the model's module tree with its parameters on ``meta`` and fills in only
its own shard, read from the same lazy weights the streamed reference reads
(parity.loading.lazy: a checkpoint's safetensors slices, or the seeded values): column-parallel
q/k/v and gate/up (rank r's heads / rows), row-parallel o_proj and down_proj (rank r's input
columns) followed by an all-reduce (``torch.distributed.all_reduce``), embedding, norms and LM
head replicated. No rank ever holds the whole model.

Each rank runs the forward with the run's probe hooks and writes its probes (its shard of
q/k/v, its copy of everything else) to ``rank<r>.safetensors`` in a private folder; the parent
reads them back with parity.engines.shards: the shards are concatenated into the canonical
tensor (compared once, as any candidate's), and each rank's part is compared with the matching
slice of the reference, so that the report names the rank a divergence lives on.

torch's ``torch.distributed.tensor.parallel`` (ColwiseParallel / RowwiseParallel) shards a
materialized module; here each rank materializes only its shard from lazy weights, which is
the part DTensor does not serve, so the split is written out (a few slices per linear).
"""
from __future__ import annotations

import copy
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from parity.capture import probes as canon
from parity.engines import shards
from parity.engines.base import Backend, Sink
from parity.engines.contract import EngineContext
from parity.errors import BackendError, UsageError

COLUMN = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
ROW = ("o_proj", "down_proj")
_BLOCK = re.compile(r"\.(\d+)\.")


@dataclass
class ShardPlan:
    """Which slice of each parameter rank ``rank`` of ``tp`` holds."""

    rank: int
    tp: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    #: the one-rank fault tp-kv-offset (parity.faults.sharding): this rank's K/V heads taken
    #: at rank 0's offset, in ``wrong_kv_blocks`` (None: every block)
    wrong_kv: bool = False
    wrong_kv_blocks: set[int] | None = field(default=None)

    def slice_of(self, name: str) -> tuple[int, int, int] | str | None:
        """(dim, start, stop) of ``name``'s shard; "rank0" for a row-parallel bias (added
        once, after the all-reduce: rank 0 keeps it); None: replicated."""
        parts = name.split(".")
        if len(parts) < 2:
            return None
        module, leaf = parts[-2], parts[-1]
        r, hd = self.rank, self.head_dim
        if module == "q_proj":
            n = self.heads // self.tp * hd
            return 0, r * n, (r + 1) * n
        if module in ("k_proj", "v_proj"):
            kv = self.kv_heads // self.tp
            m = _BLOCK.search(name)
            block = int(m.group(1)) if m else None
            wrong = self.wrong_kv and (self.wrong_kv_blocks is None or block in self.wrong_kv_blocks)
            start = 0 if wrong else r * kv
            return 0, start * hd, (start + kv) * hd
        if module in ("gate_proj", "up_proj"):
            n = self.intermediate // self.tp
            return 0, r * n, (r + 1) * n
        if module in ROW:
            if leaf == "bias":
                return "rank0"
            n = (self.heads // self.tp * hd) if module == "o_proj" else self.intermediate // self.tp
            return 1, r * n, (r + 1) * n
        return None


def plan_for(config: Any, rank: int, tp: int) -> ShardPlan:
    heads = int(config.num_attention_heads)
    kv = int(getattr(config, "num_key_value_heads", None) or heads)
    hd = int(getattr(config, "head_dim", None) or config.hidden_size // heads)
    return ShardPlan(rank, tp, heads, kv, hd, int(config.intermediate_size))


def check(source: Any, tp: int, device: str) -> None:
    """What a --tp N run needs, before any process starts."""
    if tp < 1:
        raise UsageError(f"--tp {tp}: need at least 1 rank.")
    cfg = source.config
    if source.family.name not in ("llama", "qwen2"):
        raise UsageError(f"--tp shards the llama/qwen2 layout (q/k/v/o_proj, gate/up/down_proj); '{source.family.name}' "
                         "has another.", note="use --model llama or qwen2 (or a checkpoint of those)")
    p = plan_for(cfg, 0, tp)
    for what, n in (("attention heads", p.heads), ("KV heads", p.kv_heads), ("MLP channels", p.intermediate)):
        if n % tp:
            raise UsageError(f"--tp {tp}: the model's {n} {what} do not split evenly over {tp} ranks.",
                             note="choose N dividing the heads, the KV heads and the MLP width")
    if device.startswith("cuda"):
        have = torch.cuda.device_count()
        if have < tp:
            raise UsageError(f"--tp {tp} needs {tp} GPUs (one per rank); this machine has {have}.",
                             note="use --device cpu (gloo, one process per rank) or a smaller --tp")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Job:
    """What one rank is told (pickled to the spawned process)."""

    opts: Any
    ids: list[int]
    probes: list[str]
    folder: str
    port: int
    tp: int
    device: str  # "cuda" or "cpu"
    weights_device: str  # where seeded weights are drawn: the reference's device type


def _worker(rank: int, job: Job) -> None:
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")  # NVLink multicast off (a shared host's GPUs stay in service)
    import torch.distributed as dist

    cuda = job.device.startswith("cuda")
    device = f"cuda:{rank}" if cuda else "cpu"
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"tcp://127.0.0.1:{job.port}",
                            rank=rank, world_size=job.tp)
    try:
        backend, store = _rank_backend(rank, job, device)
        with backend:
            backend.capture(job.ids, job.probes, store.put)
        from safetensors.torch import save_file

        save_file(store.tensors, str(Path(job.folder) / f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()


class _Store:
    def __init__(self) -> None:
        self.tensors: dict[str, torch.Tensor] = {}

    def put(self, name: str, tensor: torch.Tensor) -> None:
        self.tensors[name] = tensor.detach().to("cpu", copy=True).contiguous()


def _rank_backend(rank: int, job: Job, device: str) -> tuple[Any, _Store]:
    """Rank ``rank``'s shard of the model, hooked for the run's probes."""
    import torch.distributed as dist

    from parity import faults
    from parity.capture.probemap import find_map
    from parity.engines.torch.runner import ModuleBackend, set_attn, torch_dtype
    from parity.loading.source import ModelSource
    from parity.loading.streamed import skeleton, weight_source

    o = job.opts
    source = ModelSource.resolve(o.model, o.checkpoint, o.seed, False, o.shape)
    plan = plan_for(source.config, rank, job.tp)
    for spec in faults.parse(o.faults, source.num_blocks):
        if spec.fault.target == "tp":
            spec.fault.apply(plan, spec, None)
    model = skeleton(source, device)
    wdev = f"cuda:{rank}" if job.weights_device.startswith("cuda") else "cpu"
    weights = weight_source(source, model, wdev)
    dtype = torch_dtype(o.dtype)
    made: dict[str, torch.nn.Parameter] = {}
    first: dict[int, str] = {}
    with torch.no_grad():
        for name, p in list(model.named_parameters(remove_duplicate=False)):
            src = first.setdefault(id(p), name)
            param = made.get(src)
            if param is None:
                param = made[src] = torch.nn.Parameter(_shard(weights, src, plan).to(device=device, dtype=dtype),
                                                       requires_grad=False)
            sub, _, leaf = name.rpartition(".")
            model.get_submodule(sub)._parameters[leaf] = param
    model = model.to(device).eval()
    set_attn(model, o.attn)
    for name, module in model.named_modules():
        if name.rpartition(".")[2] in ROW:
            module.register_forward_hook(lambda _m, _a, out: (dist.all_reduce(out), out)[1])
    local = copy.deepcopy(source.config)  # the probe map reshapes by this rank's head counts
    local.num_attention_heads = plan.heads // job.tp
    local.num_key_value_heads = plan.kv_heads // job.tp
    pmap = find_map(source.probe_map_name, o.probe_dirs)
    return ModuleBackend(model, pmap, local, f"tp rank {rank}", source.num_blocks), _Store()


def _shard(weights: Any, name: str, plan: ShardPlan) -> torch.Tensor:
    where = plan.slice_of(name)
    if where is None:
        return weights.get(name)
    if where == "rank0":
        w = weights.get(name)
        return w if plan.rank == 0 else torch.zeros_like(w)
    dim, start, stop = where
    return weights.get_rows(name, dim, start, stop).contiguous()


class TPBackend(Backend):
    """The candidate of a --tp N run, as the parent process sees it."""

    requires = ("torch",)

    def __init__(self, opts: Any, source: Any, probe_map: Any, device: str, weights_device: str) -> None:
        super().__init__("tp")
        self.opts, self.source, self.probe_map = opts, source, probe_map
        self.tp = int(opts.tp)
        self.device = "cuda" if device.startswith("cuda") else "cpu"
        self.weights_device = weights_device
        self.ranks = shards.RankCheck(self.tp)

    def available_probes_impl(self) -> list[str]:
        return self.probe_map.names(self.source.num_blocks)

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        folder = tempfile.mkdtemp(prefix="parity-tp-")
        try:
            job = Job(self.opts, [int(i) for i in input_ids], probes, folder, _free_port(), self.tp, self.device,
                      self.weights_device)
            self._launch(job)
            return self._read(folder, probes, sink)
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def _launch(self, job: Job) -> None:
        import torch.multiprocessing as mp

        if self.device == "cuda":
            torch.cuda.empty_cache()  # the parent's cached blocks on GPU 0 go back before rank 0 needs them
        try:
            mp.start_processes(_worker, args=(job,), nprocs=self.tp, join=True, start_method=self._start_method())
        except mp.ProcessRaisedException as exc:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            raise RuntimeError(f"a rank of --tp {self.tp} raised: {lines[-1] if lines else exc}") from None
        except mp.ProcessExitedException as exc:
            raise RuntimeError(f"a rank of --tp {self.tp} died: {' '.join(str(exc).split())}") from None

    def _start_method(self) -> str:
        """Always spawn: a forked child of a process that already ran torch's OpenMP pool (the
        reference, a pytest session, a notebook) can block forever on a lock the pool held at the
        fork; with CUDA a forked child cannot use the device at all. Each rank pays one import."""
        return "spawn"

    def _read(self, folder: str, probes: list[str], sink: Sink) -> Any:
        from safetensors import safe_open

        dev = "cuda:0" if self.device == "cuda" else "cpu"
        ranks = [safe_open(str(Path(folder) / f"rank{r}.safetensors"), framework="pt", device=dev) for r in range(self.tp)]
        names = [set(r.keys()) for r in ranks]
        logits = None
        for name in canon.in_order([p for p in probes if all(p in n for n in names)]):
            parts = [r.get_tensor(name) for r in ranks]  # one probe at a time: a 70B run's dumps stay on disk
            full = shards.assemble(name, parts)
            self.ranks.record(name, sink, parts)  # each rank's part against its slice of the reference
            sink(name, full)
            if name == "logits":
                logits = full
        return logits

    def annotate(self, summary: dict[str, Any], calib: Any) -> None:
        """Name the rank a divergence lives on (parity.engines.shards.localize)."""
        self.ranks.annotate(summary, calib)

    def describe(self) -> dict[str, Any]:
        return {"backend": "tp", "dtype": str(_dtype(self.opts.dtype)).removeprefix("torch."),
                "device": f"{self.device} x{self.tp}" if self.device == "cuda" else "cpu",
                "tp": self.tp, "process_group": "nccl" if self.device == "cuda" else "gloo",
                "attn": self.opts.attn,
                "layout": "TensorRT-LLM: column-parallel q/k/v, gate/up; row-parallel o_proj, down_proj + all-reduce; "
                          "embedding, norms, LM head replicated"}


def _dtype(name: str) -> torch.dtype:
    from parity.engines.torch.runner import torch_dtype

    return torch_dtype(name)


def create(ctx: EngineContext) -> TPBackend:
    """Entry point used by the runner for ``--tp N`` (``--candidate tp``)."""
    o = ctx.options
    if not o.tp:
        raise UsageError("--candidate tp needs --tp N (the number of ranks).")
    if o.compile:
        raise UsageError("--tp does not combine with --compile.")
    _dtype(o.dtype)
    if getattr(ctx.source, "activations", "plain") != "plain":
        raise UsageError(f"--tp ranks draw plain seeded weights; --activations {ctx.source.activations} plants its "
                         "structure with a forward over the whole model.", note="drop --activations (or --tp)")
    check(ctx.source, int(o.tp), ctx.device)
    ref_dev = "cpu"
    if ctx.reference_model is not None:
        stream = getattr(ctx.reference_model, "parity_stream", None)
        t = None if stream is not None else next(ctx.reference_model.parameters(), None)
        ref_dev = str(stream.device if stream is not None else (t.device if t is not None else "cpu"))
    if ctx.source.checkpoint is None and ref_dev.startswith("cuda") != ctx.device.startswith("cuda"):
        raise BackendError("--tp draws the seeded weights where the reference drew them: the reference and the "
                           "ranks must both be on GPUs or both on the CPU.", note="drop --ref-device")
    return TPBackend(o, ctx.source, ctx.probe_map, ctx.device, ref_dev)
