"""Option definitions shared by the CLI and the pytest plugin (as pytest-benchmark does).

Each option is declared once, in a group; ``add_group`` puts a group on an argparse
parser, and the pytest plugin adds the same definitions with a ``--parity-`` prefix.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Opt:
    flags: tuple[str, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def dest(self) -> str:
        return self.kwargs.get("dest") or self.flags[0].lstrip("-").replace("-", "_")


DTYPE_SHORT = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def dtype_arg(text: str) -> str:
    """--dtype float16 is --dtype fp16 (the long names of [tool.parity.tolerances.float16])."""
    return DTYPE_SHORT.get(text, text)


@dataclass
class RunOptions:
    model: str | None = "qwen"  # the CLI leaves it None when --model is not given (inferred)
    checkpoint: str | None = None
    shape: str | None = None
    #: seeded weights: "plain" (Gaussian) or "trained" (massive activations, attention sink, outlier features)
    activations: str = "plain"
    trust_remote_code: bool = False
    #: run the float32 reference and the precision twin block by block (parity.run.stream);
    #: automatic when the model does not fit
    stream_reference: bool = False
    #: shard the candidate over N processes (parity.engines.tp)
    tp: int | None = None
    seed: int | None = None
    probe_dirs: list[str] = field(default_factory=list)
    candidate: str = "torch"
    dtype: str = "fp16"
    device: str = "auto"
    ref_device: str | None = None
    attn: str = "eager"
    compile: bool = False
    probes: list[str] | None = None
    tolerance: str | None = None  # "calibrated" | "absolute"; None: calibrated unless tolerances are given
    budget: float | None = None
    atol: float | None = None
    rtol: float | None = None
    keep_tensors: bool = False
    tokens: int | None = None
    prompt: str | None = None
    input_ids: str | None = None
    tokenizer: str | None = None
    chat: bool = False
    system: str | None = None
    # engine backends (issue 4)
    ort_opt: str = "all"
    ort_provider: str = "CPUExecutionProvider"
    ort_fault: list[str] | None = None
    dump: str | None = None
    dump_map: str | None = None
    gguf: str | None = None
    gguf_type: str | None = None
    #: a quantized GGUF whose activation quantization the precision twin emulates (set by the llamacpp candidate)
    twin_gguf: str | None = None
    trtllm_map: str | None = None
    mode: str = "all"
    port: str | None = None
    port_map: str | None = None
    faults: list[str] = field(default_factory=list)
    isolate: bool = True
    targeted: bool = True  # issue 18: the targeted pass naming the cause of a divergence
    # quantized candidates (issue 19; parity.engines.schemes)
    quant: str | None = None
    quant_exclude: list[str] = field(default_factory=list)
    quant_budget: float | None = None
    #: the twin of a quantized candidate: None/"auto" (llama.cpp quantized GGUF: "emulate", else the
    #: plain precision twin), "emulate", "float" (the plain precision twin) or a SCHEME (ModelOpt)
    quant_twin: str | None = None
    quant_sensitivity: bool = False

    def __post_init__(self) -> None:
        self.dtype = dtype_arg(self.dtype)
        if self.tp and self.candidate == "torch":  # --tp N: the torch candidate, sharded (parity.engines.tp)
            self.candidate = "tp"


@dataclass
class GenerateOptions(RunOptions):
    """``parity generate``: a run's options and the decode's."""

    max_new_tokens: int = 16
    teacher_forcing: bool = False
    stop_tokens: list[str] | None = None
    candidate_generation_config: str | None = None
    overlap_k: int = 5


#: how a run judges its probes (parity.verdict.calibrate); shared by parity run and parity generate
VERDICT_OPTS = [
    Opt(("--tolerance",), {"choices": ["calibrated", "absolute"], "help": "calibrated (default): a probe fails when its error is more than --budget times the precision twin's (the reference run in the candidate's dtype); absolute: fixed atol/rtol per probe (the preset's table, --atol/--rtol; giving those implies absolute)"}),
    Opt(("--budget",), {"type": float, "metavar": "X", "help": "calibrated: how many times the twin's error a probe may have: RMS error ratio, or a quarter of the worst-element ratio (default: 4)"}),
]

GROUPS: dict[str, tuple[str, list[Opt]]] = {
    "model": ("model", [
        Opt(("--model", "-m"), {"help": "model family: qwen (Qwen v1), qwen2, llama, smollm2 (default: the checkpoint's model_type, else qwen)"}),
        Opt(("--checkpoint",), {"metavar": "DIR", "help": "Hugging Face model folder (config.json + safetensors/.bin); default: the embedded tiny preset with seeded weights"}),
        Opt(("--shape",), {"metavar": "NAME", "help": "a real-size shape of the preset with seeded weights, e.g. 7b"}),
        Opt(("--activations",), {"choices": ["plain", "trained"], "default": "plain", "help": "seeded weights: plain (Gaussian, default) or trained: the structure trained LLMs have planted into the weights (massive activations at the start and delimiter tokens, the attention sink, outlier feature channels; magnitudes from the literature, cited in the preset)"}),
        Opt(("--trust-remote-code",), {"action": "store_true", "help": "use the checkpoint's own modeling code (only when you ask)"}),
        Opt(("--stream-reference",), {"action": "store_true", "help": "load the float32 reference (and the precision twin) one block at a time: peak device memory about one block plus activations (default: automatic when the model does not fit)"}),
        Opt(("--seed",), {"type": int, "help": "seed for preset weights and --tokens (default: the preset's)"}),
        Opt(("--probe-dir",), {"dest": "probe_dirs", "action": "append", "default": [], "metavar": "DIR", "help": "extra folder of probe maps (also $PARITY_PROBE_PATH)"}),
    ]),
    "input": ("input", [
        Opt(("--tokens",), {"type": int, "metavar": "N", "help": "N seeded token ids (default: 32)"}),
        Opt(("--prompt",), {"metavar": "TEXT", "help": "a prompt, encoded with the checkpoint's tokenizer"}),
        Opt(("--input-ids",), {"metavar": "FILE", "help": "token ids: .npy, .json list or whitespace-separated .txt"}),
        Opt(("--tokenizer",), {"metavar": "PATH", "help": "tokenizer folder or qwen.tiktoken file (default: the checkpoint's)"}),
        Opt(("--chat",), {"action": "store_true", "help": "wrap the prompt in the model's chat format (the tokenizer's chat template; ChatML for qwen/qwen2, [INST] for llama without one)"}),
        Opt(("--system",), {"metavar": "TEXT", "help": "system message for --chat (default: 'You are a helpful assistant.')"}),
    ]),
    "candidate": ("candidate", [
        Opt(("--candidate", "-c"), {"default": "torch", "help": "engine under test (default: torch); `parity doctor` lists them"}),
        Opt(("--dtype",), {"default": "fp16", "type": dtype_arg, "help": "candidate dtype: fp16, bf16, fp32 (or float16, bfloat16, float32; default: fp16)"}),
        Opt(("--device",), {"default": "auto", "help": "candidate device: cpu, cuda, cuda:N, auto (default: cuda when present)"}),
        Opt(("--ref-device",), {"help": "reference device (default: the candidate's)"}),
        Opt(("--attn",), {"default": "eager", "help": "candidate attention: eager, sdpa (default: eager)"}),
        Opt(("--compile",), {"action": "store_true", "help": "torch.compile the candidate"}),
        Opt(("--tp",), {"type": int, "metavar": "N", "help": "tensor-parallel candidate: the torch candidate sharded over N processes as TensorRT-LLM shards it (one per GPU with NCCL, gloo on the CPU)"}),
        Opt(("--port",), {"metavar": "FILE.py:FACTORY", "help": "with --candidate port: your port, factory(config, state_dict) -> nn.Module (default: the family's built-in port)"}),
        Opt(("--port-map",), {"metavar": "FILE.toml", "help": "probe map of your port (module paths -> canonical names); parity.probe() calls need none"}),
        Opt(("--fault",), {"dest": "faults", "action": "append", "default": [], "metavar": "NAME[@BLOCK]", "help": "inject a known porting bug (repeatable): port faults double-rope, silu-wrong-branch, qkv-split, rope-base, norm-eps, norm-no-upcast (need --candidate port); model fault mlp-overflow; generation faults eos-token, kv-position (parity generate); GGUF faults gguf-qk-permute, gguf-norm-eps, gguf-eos-id (need --candidate llamacpp); tensor-parallel fault tp-kv-offset (needs --tp N); `parity doctor` lists them"}),
        Opt(("--no-isolate",), {"dest": "isolate", "action": "store_false", "default": True, "help": "skip the isolated (teacher-forced) per-block pass"}),
        Opt(("--no-targeted",), {"dest": "targeted", "action": "store_false", "default": True, "help": "skip the targeted pass (full tensors of the first divergent probe, hypotheses naming the cause)"}),
    ]),
    "quant": ("quantization", [
        Opt(("--quant",), {"metavar": "SCHEME", "help": "with --candidate quant: int8-wo, int4-wo, int4-awq, w8a8-sq, fp8, int8-kv, fp8-kv, nvfp4 (ModelOpt fake quantization)"}),
        Opt(("--quant-exclude",), {"action": "append", "default": [], "metavar": "GLOB", "help": "units kept unquantized, repeatable: 'blocks.0.*', 'blocks.*.mlp', 'blocks.*.kv'"}),
        Opt(("--quant-budget",), {"type": float, "metavar": "X", "help": "pass/fail budget of a quantized candidate: logits nrmse vs the float32 reference (default: the scheme's)"}),
        Opt(("--sensitivity",), {"dest": "quant_sensitivity", "action": "store_true", "help": "with --candidate quant: also quantize one block / one component kind at a time and rank blocks by the logits error"}),
        Opt(("--quant-twin",), {"metavar": "auto|emulate|float|SCHEME", "help": "the twin of a quantized candidate. SCHEME: the reference fake-quantized with it (an engine running SCHEME judged against what the scheme itself costs); emulate: llama.cpp's activation quantization on the reference (the default for a quantized GGUF); float: the plain precision twin (shows how far the quantization moves each probe)"}),
    ]),
    "engine": ("engine backends", [
        Opt(("--ort-opt",), {"default": "all", "choices": ["disable", "basic", "extended", "all"], "help": "ONNX Runtime graph optimization level (default: all)"}),
        Opt(("--ort-provider",), {"default": "CPUExecutionProvider", "metavar": "EP", "help": "ONNX Runtime execution provider (default: CPUExecutionProvider)"}),
        Opt(("--ort-fault",), {"action": "append", "metavar": "TARGET*SCALE", "help": argparse.SUPPRESS}),
        Opt(("--dump",), {"metavar": "DIR", "help": "--candidate dump: folder of dumped tensors (parity dump, tllm_debug/, rank<N>/*.pt)"}),
        Opt(("--dump-map",), {"metavar": "TOML", "help": "--candidate dump: map from dumped tensor names to canonical probes"}),
        Opt(("--gguf",), {"metavar": "FILE", "help": "--candidate llamacpp: the GGUF file llama.cpp runs (default: the --checkpoint GGUF, a fetched model's GGUF, else the reference converted by llama.cpp's convert_hf_to_gguf.py)"}),
        Opt(("--gguf-type",), {"choices": ["f32", "f16", "bf16", "q8_0"], "help": "--candidate llamacpp: convert the reference's weights to this GGUF type (default: --dtype's; q8_0: the reference reads the same file dequantized)"}),
        Opt(("--trtllm-map",), {"metavar": "NAME|TOML", "help": "--candidate trtllm: probe map for the TensorRT-LLM model (default: trtllm_<family>)"}),
        Opt(("--mode",), {"default": "all", "choices": ["all", "bisect"], "help": "all: mark every probe in one build; bisect: few marked probes per build, binary search (default: all)"}),
    ]),
    "compare": ("comparison", [
        Opt(("--probes", "-p"), {"action": "append", "metavar": "GLOB", "help": "probes to capture, globs, repeatable or comma-separated (e.g. 'blocks.*.mlp_out')"}),
        *VERDICT_OPTS,
        Opt(("--atol",), {"type": float, "help": "absolute tolerance for every probe (implies --tolerance absolute; default: the preset's per-dtype table)"}),
        Opt(("--rtol",), {"type": float, "help": "relative tolerance for every probe (implies --tolerance absolute)"}),
        Opt(("--keep-tensors",), {"action": "store_true", "help": "keep full candidate tensors (default: statistics only)"}),
    ]),
    "output": ("output", [
        Opt(("--out", "-o"), {"metavar": "DIR", "help": "report folder (default: reports/<run-id>)"}),
        Opt(("--html",), {"metavar": "PATH", "help": "also write a self-contained HTML report to PATH"}),
        Opt(("--no-files",), {"action": "store_true", "help": "print only; write no report files"}),
        Opt(("--failures-only",), {"action": "store_true", "help": "console table lists failing probes only"}),
        Opt(("--wide",), {"action": "store_true", "help": "console table with every statistic (ref/cand mean and sum, mean abs and max rel error)"}),
        Opt(("--all",), {"dest": "every_row", "action": "store_true", "help": "console table with every probe (long tables collapse runs of passing probes)"}),
        Opt(("--quiet", "-q"), {"action": "store_true", "help": "no progress lines"}),
    ]),
}


def add_group(parser: argparse.ArgumentParser, key: str) -> None:
    title, opts = GROUPS[key]
    group = parser.add_argument_group(title)
    for o in opts:
        group.add_argument(*o.flags, **o.kwargs)


def run_options(ns: argparse.Namespace) -> Any:
    """RunOptions from parsed arguments (fields the namespace lacks keep defaults)."""
    from dataclasses import fields as dc_fields

    names = {f.name for f in dc_fields(RunOptions)}
    return RunOptions(**{k: v for k, v in vars(ns).items() if k in names and v is not None})
