"""The ``quant`` candidate: the reference's weights in the candidate's dtype with a
quantization scheme applied by NVIDIA ModelOpt's fake quantization (the numerics
TensorRT-LLM's quantized checkpoints come from), calibrated on parity's own small text set.

:func:`quantized_reference` is "the reference with scheme S applied": the ``quant``
candidate, the fake-quantized twin an engine running that scheme is judged against
(``--quant-twin``), and each row of ``parity quant-sweep`` are built by it.

Quantized *units* are named in the canonical vocabulary: ``blocks.{i}.attn.q_proj``,
``blocks.{i}.mlp.down_proj``, ``blocks.{i}.kv.k`` (the k/v cache quantizers of block i's
attention); ``--quant-exclude 'blocks.0.*'`` keeps them in the candidate's dtype
(ModelOpt config entries that disable their quantizers, so they are neither quantized nor
smoothed). :func:`set_enabled` toggles units on an already quantized model (the sensitivity
sweep): a disabled ModelOpt quantizer still applies its pre-quantization scale
(SmoothQuant/AWQ), which is an identity of the float computation, so toggling equals
quantizing only the kept units.
"""
from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from parity.engines.contract import EngineContext
from parity.engines.quant import schemes
from parity.engines.torch.runner import ModuleBackend, derive
from parity.errors import BackendError, UsageError
from parity.errors import InputError

CALIBRATION_FILE = "data/calibration.jsonl"
_MODELOPT = {"int8-wo": "INT8_WEIGHT_ONLY_CFG", "int4-wo": "INT4_BLOCKWISE_WEIGHT_ONLY_CFG", "int4-awq": "INT4_AWQ_CFG",
             "w8a8-sq": "INT8_SMOOTHQUANT_CFG", "fp8": "FP8_DEFAULT_CFG", "nvfp4": "NVFP4_DEFAULT_CFG"}
_KV_BITS = {"int8-kv": 8, "fp8-kv": [4, 3]}
_ATTN = ("attn", "attention")
_MLP = ("mlp", "ffn", "feed_forward")


def modelopt() -> Any:
    """ModelOpt's quantization API (its import warns about untested transformers versions)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError:
        raise BackendError("the quant candidate needs NVIDIA ModelOpt, which is not installed.",
                           note="pip install 'parity-debugger[quant]' (nvidia-modelopt)") from None
    return mtq


def modelopt_config(scheme: schemes.Scheme) -> dict[str, Any]:
    """The ModelOpt quantize config of a scheme (a copy: callers append entries)."""
    mtq = modelopt()
    if scheme.name in _KV_BITS:  # KV cache only: every other quantizer off
        return {"quant_cfg": [{"quantizer_name": "*", "enable": False},
                              {"quantizer_name": "*[kv]_bmm_quantizer", "cfg": {"num_bits": _KV_BITS[scheme.name], "axis": None}}],
                "algorithm": "max"}
    return copy.deepcopy(getattr(mtq, _MODELOPT[scheme.name]))


# --------------------------------------------------------------------------- units


def block_pattern(block_module: str) -> re.Pattern[str]:
    """``model.layers.{i}`` -> a regex giving the block index and the path inside it."""
    return re.compile("^" + re.escape(block_module).replace(r"\{i\}", r"(\d+)") + r"\.(.+)$")


def unit_of(quantizer_or_module: str, blocks: re.Pattern[str]) -> str:
    """Canonical unit of a ModelOpt quantizer (or a module path)."""
    path = re.sub(r"\.(weight|input|output)_quantizer$", "", quantizer_or_module)
    m = blocks.match(path)
    if m is None:
        return path
    i, rest = m.group(1), m.group(2)
    leaf = rest.rsplit(".", 1)[-1]
    bmm = re.fullmatch(r"([qkvp])_bmm_quantizer", leaf)
    low = rest.lower()
    kind = "kv" if bmm else "attn" if any(a in low for a in _ATTN) else "mlp" if any(a in low for a in _MLP) else "other"
    return f"blocks.{i}.{kind}.{bmm.group(1) if bmm else leaf}"


def candidate_quantizers(model: nn.Module, blocks: re.Pattern[str]) -> dict[str, str]:
    """Quantizer name -> unit, for every quantizer ModelOpt may insert (before it does):
    weight and input quantizers of each Linear, k/v bmm quantizers of each attention."""
    out: dict[str, str] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, nn.Linear):
            for q in ("weight_quantizer", "input_quantizer"):
                out[f"{path}.{q}"] = unit_of(path, blocks)
        elif "attention" in type(mod).__name__.lower() and blocks.match(path):
            for q in ("k_bmm_quantizer", "v_bmm_quantizer"):
                out[f"{path}.{q}"] = unit_of(f"{path}.{q}", blocks)
    return out


def exclusion_entries(model: nn.Module, blocks: re.Pattern[str], exclude: Sequence[str]) -> list[dict[str, Any]]:
    """ModelOpt config entries disabling every quantizer of the excluded units."""
    if not exclude:
        return []
    names = candidate_quantizers(model, blocks)
    hit = [q for q, u in names.items() if schemes.unit_matches(u, tuple(exclude))]
    if not hit:
        units = sorted(set(names.values()))
        raise UsageError(f"--quant-exclude {' '.join(exclude)} matches no quantized unit.",
                         note="units look like " + ", ".join(units[:3]) + ", ...; globs such as 'blocks.0.*', "
                         "'blocks.*.mlp', 'blocks.*.kv'")
    return [{"quantizer_name": q, "enable": False} for q in hit]


def quantizers(model: nn.Module, blocks: re.Pattern[str]) -> dict[str, tuple[str, Any]]:
    """Inserted ModelOpt quantizers that are enabled after quantization: name -> (unit, module)."""
    out = {}
    for name, mod in model.named_modules():
        if name.endswith("_quantizer") and getattr(mod, "is_enabled", False):
            out[name] = (unit_of(name, blocks), mod)
    return out


def set_enabled(active: dict[str, tuple[str, Any]], keep: Callable[[str], bool]) -> int:
    """Enable the quantizers whose unit ``keep`` accepts, disable the others; how many are on."""
    on = 0
    for unit, q in active.values():
        if keep(unit):
            q.enable()
            on += 1
        else:
            q.disable()
    return on


# --------------------------------------------------------------------------- calibration


def calibration_texts() -> list[str]:
    """parity's calibration set: short original paragraphs of everyday text (and a little
    code and chat), shipped as ``models/data/calibration.jsonl``."""
    from parity import resources

    path = resources.find_file("models", CALIBRATION_FILE)
    if path is None:
        raise BackendError(f"the calibration set {CALIBRATION_FILE} is missing from parity's models folder.")
    return [json.loads(line)["text"] for line in path.read_text().splitlines() if line.strip()]


def calibration_ids(source: Any, tokenizer: str | None = None) -> tuple[list[list[int]], str]:
    """The calibration set through the model's tokenizer; seeded ids (one per text, of the
    same count) where the model has none (a preset or --shape with seeded weights)."""
    from parity.loading import inputs

    texts = calibration_texts()
    try:
        tok = inputs.load_tokenizer(source.family.name, source.checkpoint, tokenizer)
    except InputError:
        tok = None
    if tok is None:
        seqs = [inputs.seeded_ids(24, source.vocab_size, source.seed + 1000 + k) for k in range(len(texts))]
        return seqs, f"{len(seqs)} seeded sequences of 24 ids (no tokenizer)"
    seqs = [inputs.check_ids(inputs.encode(tok, t), source.vocab_size) for t in texts]
    return seqs, f"{len(seqs)} texts of {CALIBRATION_FILE}, {sum(map(len, seqs))} tokens"


# --------------------------------------------------------------------------- build


def quantized_reference(reference: nn.Module, scheme: str | schemes.Scheme, *, dtype: str, device: str,
                        block_module: str, calibration: list[list[int]], exclude: Sequence[str] = ()) -> tuple[nn.Module, dict[str, Any]]:
    """The reference with scheme S applied: a copy of its weights in ``dtype`` on
    ``device``, fake-quantized by ModelOpt and calibrated on ``calibration``. Returns the
    model and facts for the report (scheme, quantizers per kind, excluded units)."""
    s = schemes.get(scheme) if isinstance(scheme, str) else scheme
    schemes.check_device(s, device)
    mtq = modelopt()
    model = derive(reference, dtype, device, "eager")
    blocks = block_pattern(block_module)
    cfg = modelopt_config(s)
    cfg["quant_cfg"] = list(cfg["quant_cfg"]) + exclusion_entries(model, blocks, exclude)

    def loop(m: nn.Module) -> None:
        for seq in calibration:
            m(input_ids=torch.tensor([seq], device=device), use_cache=False)

    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # ModelOpt prints
        warnings.simplefilter("ignore")
        try:
            mtq.quantize(model, cfg, forward_loop=loop if s.calibrates else None)
        except (AssertionError, RuntimeError) as exc:
            if "nothing would be quantized" in str(exc):
                raise BackendError(f"scheme '{s.name}' quantized nothing in this model.",
                                   note="--quant-exclude covers every quantized unit") from None
            if not str(device).startswith("cuda") and "cuda" in str(exc).lower():
                raise UsageError(f"scheme '{s.name}' needs CUDA: ModelOpt says {' '.join(str(exc).split())[:160]}") from None
            raise
    active = quantizers(model, blocks)
    kinds: dict[str, int] = {}
    for unit, _ in active.values():
        kind = unit.split(".")[2] if unit.startswith("blocks.") else unit
        kinds[kind] = kinds.get(kind, 0) + 1
    if not active:
        raise BackendError(f"scheme '{s.name}' quantized nothing in this model.",
                           note="ModelOpt found no Linear / attention it knows; --quant-exclude may cover everything")
    facts = {"scheme": s.name, "scheme_summary": s.summary, "toolkit": f"nvidia-modelopt {_version()}",
             "quantizers": kinds, "excluded": list(exclude), "fake_quantization": True}
    return model.eval(), facts


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nvidia-modelopt")
    except PackageNotFoundError:
        return "?"


class QuantBackend(ModuleBackend):
    """A fake-quantized copy of the reference, probed like the torch candidate."""

    facts: dict[str, Any]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "quant": self.facts}


def create(ctx: EngineContext) -> QuantBackend:
    """Entry point for ``--candidate quant``."""
    o = ctx.options
    if not getattr(o, "quant", None):
        raise UsageError("--candidate quant needs --quant SCHEME.", note="schemes: " + ", ".join(schemes.SCHEMES))
    spec = ctx.probe_map.block_spec()
    if spec is None:
        raise BackendError("the quant candidate needs a probe map with a [block] section (the block module path).")
    scheme = schemes.get(o.quant)
    if scheme.calibrates:
        calib, how = calibration_ids(ctx.source, getattr(o, "tokenizer", None))
    else:
        calib, how = [], "none needed (weight-only max scales come from the weights)"
    if ctx.progress is not None:
        ctx.progress(f"quantizing ({o.quant}, ModelOpt; calibration: {how})")
    model, facts = quantized_reference(ctx.reference_model, o.quant, dtype=o.dtype, device=ctx.device,
                                       block_module=spec.module, calibration=calib, exclude=o.quant_exclude or ())
    facts["calibration"] = how
    backend = QuantBackend(model, ctx.probe_map, getattr(model, "config", ctx.source.config), "quant", ctx.source.num_blocks)
    backend.facts = facts
    return backend
