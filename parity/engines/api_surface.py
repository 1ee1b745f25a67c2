"""``parity doctor --engine tensorrt|trtllm``: the API surface parity relies on, checked on
the installed package, so that API drift at a user's site is one clear line per missing
piece instead of a traceback in the middle of a run.

Each entry is (dotted path from the package, what parity uses it for, whether a missing one
only disables an option). Attributes are looked up with ``getattr`` (pybind classes expose
methods and properties on the class); functions named with ``(params)`` must accept those
parameter names. Sources: NVIDIA/TensorRT python/src/infer/pyCore.cpp, pyGraph.cpp,
parsers/pyOnnx.cpp @ v10.12.0 / v11.1; NVIDIA/TensorRT-LLM tensorrt_llm/builder.py (1.x ``build``),
module.py @ 2a9abd95, models/modeling_utils.py (1.x ``fuse_gate_mlp``), runtime/generation.py @ 2340c776,
_utils.py @ ed53795b, _torch/debug/debug_hook.py @ 135eb8be.
"""
from __future__ import annotations

import importlib
import inspect
import types
from typing import Any

Entry = tuple[str, str, bool]

TENSORRT: list[Entry] = [
    ("Logger.WARNING", "the build log", False),
    ("Builder.create_network", "building the network", False),
    ("Builder.create_builder_config", "builder settings", False),
    ("Builder.build_serialized_network", "building the engine", False),
    ("OnnxParser.parse_from_file", "parsing the export from its file (external data past 2 GiB)", False),
    ("NetworkDefinitionCreationFlag.STRONGLY_TYPED", "precision from the export's dtype (10.x; 11.x: always on)", True),
    ("BuilderFlag.TF32", "clearing TF32 for --dtype fp32", True),
    ("MemoryPoolType.WORKSPACE", "the workspace limit", False),
    ("IBuilderConfig.set_memory_pool_limit", "the workspace limit", False),
    ("IBuilderConfig.clear_flag", "clearing TF32 for --dtype fp32", False),
    ("INetworkDefinition.mark_output", "marking probes as outputs", False),
    ("ITensor.is_network_output", "marking probes as outputs", False),
    ("Runtime.deserialize_cuda_engine", "loading the built engine", False),
    ("ICudaEngine.num_io_tensors", "engine I/O", False),
    ("ICudaEngine.get_tensor_name", "engine I/O", False),
    ("ICudaEngine.get_tensor_mode", "engine I/O", False),
    ("ICudaEngine.get_tensor_dtype", "engine I/O", False),
    ("ICudaEngine.create_execution_context", "running the engine", False),
    ("IExecutionContext.set_input_shape", "running the engine", False),
    ("IExecutionContext.get_tensor_shape", "running the engine", False),
    ("IExecutionContext.set_tensor_address", "running the engine", False),
    ("IExecutionContext.execute_async_v3", "running the engine", False),
    ("TensorIOMode.INPUT", "engine I/O", False),
    ("nptype", "buffer dtypes", False),
    ("INetworkDefinition.mark_unfused_tensors_as_debug_tensors", "debug tensors that keep fusion (10.12+)", True),
    ("IExecutionContext.set_debug_listener", "debug tensors that keep fusion (10.12+)", True),
]

TRTLLM: list[Entry] = [
    ("build(model, build_config)", "building the marked model", False),
    ("BuildConfig(enable_debug_output, gather_context_logits)", "debug outputs and every token's logits", False),
    ("module.Module.register_network_output", "mark_probes", False),
    ("module.Module.named_network_outputs", "the build's debug outputs", False),
    ("module.Module.named_modules", "mark_probes", False),
    ("models.QWenForCausalLM.from_hugging_face", "the Qwen-7B-Chat recipe", False),
    ("mapping.Mapping.pp_layers", "pipeline stages' layers", False),
    ("runtime.ModelRunner.from_dir(engine_dir, debug_mode)", "the debug buffer / tllm_debug dumps", False),
    ("runtime.GenerationSession.dump_debug_buffers", "tllm_debug/PP_*/TP_* files", False),
    ("_utils.torch_to_numpy", "bf16 dumps (saved as V2)", False),
    ("_torch.debug.debug_hook.debug_mode", "PyTorch-backend dumps", True),
    ("_torch.model_config.ModelConfig", "--candidate trtllm", True),
    ("_torch.models.modeling_qwen.Qwen2ForCausalLM", "--candidate trtllm (qwen2)", True),
    ("_torch.models.modeling_llama.LlamaForCausalLM", "--candidate trtllm (llama)", True),
    ("_torch.pyexecutor.resource_manager.KVCacheManager", "--candidate trtllm", True),
    ("_torch.attention_backend.utils.get_attention_backend", "--candidate trtllm", True),
]

PACKAGES = {"tensorrt": ("tensorrt", TENSORRT), "trtllm": ("tensorrt_llm", TRTLLM)}


def _resolve(pkg: Any, pkg_name: str, dotted: str) -> Any:
    """The object at ``dotted`` under ``pkg``, importing submodules on the way."""
    obj, path = pkg, pkg_name
    for part in dotted.split("."):
        path = f"{path}.{part}"
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        if not isinstance(obj, types.ModuleType):
            raise AttributeError(f"{path} does not exist")
        obj = importlib.import_module(path)  # a submodule not imported by the package
    return obj


def _params(obj: Any) -> set[str]:
    target = obj.__init__ if inspect.isclass(obj) and not hasattr(obj, "__dataclass_fields__") else obj
    names = set(getattr(obj, "__dataclass_fields__", {}) or {})
    try:
        names |= set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        pass
    return names


def check(engine: str) -> list[str]:
    """Lines for doctor: the package's version and one line per missing piece."""
    pkg_name, entries = PACKAGES[engine]
    try:
        pkg = importlib.import_module(pkg_name)
    except Exception as exc:  # noqa: BLE001 - what the package raises on import is what the user needs
        text = " ".join(str(exc).split())[:200]
        return [f"{pkg_name}: not importable here ({type(exc).__name__}: {text}); nothing to check"]
    lines = []
    for spec, use, optional in entries:
        dotted, _, params = spec.partition("(")
        wanted = [p.strip() for p in params.rstrip(")").split(",") if p.strip()]
        try:
            obj = _resolve(pkg, pkg_name, dotted)
        except Exception as exc:  # noqa: BLE001
            kind = "optional, " if optional else ""
            lines.append(f"  missing: {pkg_name}.{dotted} ({kind}{use}; {type(exc).__name__})")
            continue
        lacking = [p for p in wanted if p not in _params(obj)]
        if lacking:
            lines.append(f"  changed: {pkg_name}.{dotted} takes no {', '.join(lacking)} ({use})")
    lines.extend(_defaults(engine, pkg))
    head = f"{pkg_name} {getattr(pkg, '__version__', '?')}: "
    bad = [ln for ln in lines if ln.startswith(("  missing", "  changed"))]
    return [head + (f"{len(bad)} problem(s) in the API parity uses" if bad else "the API parity uses is all there")] + lines


def _defaults(engine: str, pkg: Any) -> list[str]:
    """Facts about defaults that change what an engine under test computes."""
    if engine == "tensorrt":
        flags = getattr(pkg, "BuilderFlag", None)
        fp16 = "present (deprecated since 10.12)" if flags is not None and hasattr(flags, "FP16") else "absent"
        return [f"  note: BuilderFlag.FP16 {fp16}; parity builds strongly typed networks and never sets it"]
    out = []
    try:
        cfg = _resolve(pkg, "tensorrt_llm", "BuildConfig")()
        fused = getattr(cfg, "use_fused_mlp", None)
        if fused is None:
            fused = getattr(getattr(cfg, "plugin_config", None), "use_fused_mlp", None)
        out.append(f"  note: use_fused_mlp defaults to {fused}: GatedMLP modules are replaced by FusedGatedMLP "
                   "before the trace (mark_probes resolves module paths at trace time)")
        out.append(f"  note: gather_context_logits defaults to {getattr(cfg, 'gather_context_logits', None)}: "
                   "without it the engine's logits are the last token's only")
    except Exception as exc:  # noqa: BLE001
        out.append(f"  note: could not read BuildConfig defaults ({type(exc).__name__})")
    try:
        dump = _resolve(pkg, "tensorrt_llm", "runtime.GenerationSession.dump_debug_buffers")
        stepped = "step" in _params(dump)
        out.append("  note: the Python session writes " + ("<name>-step<N>.npy (step 0 = the prompt)" if stepped else
                   "<name>.npy rewritten at every step: generate with max_new_tokens=1"))
    except Exception:  # noqa: BLE001 - reported above as missing
        pass
    return out
