"""The ``trtllm`` candidate: TensorRT-LLM's PyTorch backend (``tensorrt_llm._torch``),
loaded in-process with the reference weights and hooked through a probe map.

Follows how TensorRT-LLM's own unit tests run its models against Hugging Face
(tests/unittest/_torch/modeling/test_modeling_{qwen,llama}.py, 1.x): build the model class
from a ``ModelConfig(pretrained_config=..., attn_backend=...)``, ``load_weights`` the HF
state dict, give it a ``KVCacheManager`` with one dummy request, prepare the attention
backend's metadata for one context request, and call ``forward(input_ids, position_ids,
attn_metadata, return_context_logits=True)``. Probe maps: parity/probes/trtllm_<family>.toml
(the decoder layers fuse residual adds into the norms; see those files).

Engines from releases that still build TensorRT engines (≤1.2) are covered by
parity.engines.trtllm_engine (probes marked while the build traces the model) and the ``dump`` candidate (read
``tllm_debug/`` back).

NOT VERIFIED HERE: tensorrt_llm cannot be installed on the development machine; the tests
marked ``trtllm`` run only where it imports (and a GPU is present).
"""
from __future__ import annotations

import copy
import importlib
import math
from typing import Any

import torch

from parity.engines.base import Backend, Sink
from parity.errors import BackendError, UsageError
from parity.capture.hooks import attached
from parity.capture.probemap import ProbeMap, find_map

MODEL_CLASSES = {
    "qwen2": ("tensorrt_llm._torch.models.modeling_qwen", "Qwen2ForCausalLM"),
    "llama": ("tensorrt_llm._torch.models.modeling_llama", "LlamaForCausalLM"),
}
DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
TOKENS_PER_BLOCK = 64


def _import(module: str, name: str | None = None) -> Any:
    try:
        mod = importlib.import_module(module)
        return getattr(mod, name) if name else mod
    except (ImportError, AttributeError) as exc:
        raise BackendError(f"this tensorrt_llm lacks {module}{'.' + name if name else ''} ({exc}).",
                           note="the trtllm candidate follows TensorRT-LLM 1.x's PyTorch backend") from None


class TrtllmBackend(Backend):
    requires = ("tensorrt_llm",)

    def __init__(self, model: Any, probe_map: ProbeMap, config: Any, num_blocks: int, dtype: torch.dtype,
                 attn_backend: str) -> None:
        super().__init__("trtllm")
        self.model = model
        self.probe_map = probe_map
        self.config = config
        self.num_blocks = num_blocks
        self.dtype = dtype
        self.attn_backend = attn_backend

    def available_probes_impl(self) -> list[str]:
        return self.probe_map.names(self.num_blocks)

    def _kv_cache(self, tokens: int) -> Any:
        import tensorrt_llm

        KVCacheManager = _import("tensorrt_llm._torch.pyexecutor.resource_manager", "KVCacheManager")
        KvCacheConfig = _import("tensorrt_llm.bindings.executor", "KvCacheConfig")
        Mapping = _import("tensorrt_llm.mapping", "Mapping")
        kv_dtype = {torch.float16: "HALF", torch.bfloat16: "BF16", torch.float32: "FLOAT"}[self.dtype]
        blocks = math.ceil((tokens + 1) / TOKENS_PER_BLOCK)
        cfg = self.config
        heads = cfg.num_attention_heads
        return KVCacheManager(
            KvCacheConfig(max_tokens=blocks * TOKENS_PER_BLOCK),
            tensorrt_llm.bindings.internal.batch_manager.CacheType.SELF,
            num_layers=cfg.num_hidden_layers,
            num_kv_heads=getattr(cfg, "num_key_value_heads", None) or heads,
            head_dim=getattr(cfg, "head_dim", None) or cfg.hidden_size // heads,
            tokens_per_block=TOKENS_PER_BLOCK,
            max_seq_len=blocks * TOKENS_PER_BLOCK,
            max_batch_size=1,
            mapping=Mapping(world_size=1, tp_size=1, rank=0),
            dtype=getattr(tensorrt_llm.bindings.DataType, kv_dtype),
        )

    def capture_impl(self, input_ids: Any, probes: list[str], sink: Sink) -> Any:
        get_backend = _import("tensorrt_llm._torch.attention_backend.utils", "get_attention_backend")
        KVCacheParams = _import("tensorrt_llm._torch.metadata", "KVCacheParams")
        ids = torch.as_tensor(list(input_ids), dtype=torch.int, device="cuda")
        n = int(ids.numel())
        kv = self._kv_cache(n)
        try:
            kv.add_dummy_requests([1], [n])
            metadata = get_backend(self.attn_backend).Metadata(
                seq_lens=torch.tensor([n], dtype=torch.int), num_contexts=1,
                kv_cache_params=KVCacheParams(use_cache=True, num_cached_tokens_per_seq=[0]),
                max_num_requests=1, max_num_tokens=max(8192, n), kv_cache_manager=kv,
                request_ids=[1], prompt_lens=[n])
            positions = torch.arange(0, n, device="cuda").unsqueeze(0)
            bindings = self.probe_map.resolve(probes, self.config)
            with torch.inference_mode(), attached(self.model, bindings, sink):
                metadata.prepare()
                return self.model.forward(input_ids=ids, position_ids=positions, attn_metadata=metadata,
                                          return_context_logits=True)
        finally:
            kv.shutdown()

    def describe(self) -> dict[str, Any]:
        try:
            import tensorrt_llm

            version = tensorrt_llm.__version__
        except Exception:  # noqa: BLE001 - version is a fact for the report only
            version = None
        return {"backend": self.label, "dtype": str(self.dtype).removeprefix("torch."), "device": "cuda",
                "attn_backend": self.attn_backend, "probe_map": str(self.probe_map.path), "tensorrt_llm": version}


def build_model(reference: torch.nn.Module, family: str, dtype: torch.dtype, attn_backend: str) -> tuple[Any, Any]:
    """TensorRT-LLM's model for ``family`` holding the reference weights in ``dtype`` on CUDA."""
    if family not in MODEL_CLASSES:
        raise BackendError(f"TensorRT-LLM's PyTorch backend has no model for '{family}' that parity maps.",
                           note="trtllm supports: " + ", ".join(MODEL_CLASSES) + " (Qwen v1 is engine-only: docs/guide/qwen-trtllm.md, mark_probes + --candidate dump)")
    ModelConfig = _import("tensorrt_llm._torch.model_config", "ModelConfig")
    cls = _import(*MODEL_CLASSES[family])
    cfg = copy.deepcopy(reference.config)
    cfg.torch_dtype = dtype
    if hasattr(cfg, "dtype"):
        cfg.dtype = dtype
    cfg.architectures = [MODEL_CLASSES[family][1]]
    model = cls(ModelConfig(pretrained_config=cfg, attn_backend=attn_backend)).to(dtype).to("cuda")
    state = {k: v.detach().to("cuda", dtype=dtype if v.is_floating_point() else v.dtype) for k, v in reference.state_dict().items()}
    model.load_weights(state)
    return model.eval(), cfg


def create(ctx: Any) -> TrtllmBackend:
    """Entry point for ``--candidate trtllm``."""
    o = ctx.options
    if not torch.cuda.is_available():
        raise BackendError("the trtllm candidate needs a CUDA GPU; none is visible here.")
    if o.dtype not in DTYPES:
        raise UsageError(f"unknown dtype '{o.dtype}'.", note="trtllm runs fp16, bf16 (TRTLLM attention) or fp32 (VANILLA attention)")
    dtype = DTYPES[o.dtype]
    attn_backend = "VANILLA" if dtype == torch.float32 else "TRTLLM"
    family = ctx.source.family.name
    pmap = find_map(getattr(o, "trtllm_map", None) or f"trtllm_{family}", o.probe_dirs)
    model, cfg = build_model(ctx.reference_model, family, dtype, attn_backend)
    return TrtllmBackend(model, pmap, cfg, ctx.source.num_blocks, dtype, attn_backend)
