"""--activations trained: seeded presets with the structure trained LLMs have (massive
activations at the start and delimiter tokens, the attention sink, outlier feature channels),
planted through the weights. Honest float16/bfloat16 candidates still pass under the calibrated
verdict, the built-in port faults are still found and named, and a norm without a float32
upcast, which overflows float16 at the massive activations, is found at its block and named
as an overflow."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch

from parity.errors import ModelError
from parity.loading import activations, fetch
from parity.loading.source import ModelSource
from parity.options import RunOptions
from parity.run import compare_candidate, prepare_reference

FAMILIES = ["qwen", pytest.param("llama", marks=pytest.mark.slow), pytest.param("qwen2", marks=pytest.mark.slow)]
REAL_DIR = fetch.model_dir("smollm2")  # read at import, before the tests' own $PARITY_CACHE
PORTED = FAMILIES[:2]  # the families with a built-in port (the faults alter it)
_REFS: dict[str, Any] = {}


def reference(model: str) -> Any:
    if model not in _REFS:
        _REFS[model] = prepare_reference(RunOptions(model=model, activations="trained", tokens=128, device="cpu"))
    return _REFS[model]


def summary(model: str, candidate: str, dtype: str, **kw: Any) -> dict[str, Any]:
    ref = reference(model)
    return compare_candidate(ref, replace(ref.options, candidate=candidate, dtype=dtype, **kw)).report.summary


def row(cap: Any, name: str) -> torch.Tensor:
    t = cap.tensor(name).float()
    return t.reshape(t.shape[-2], -1) if t.dim() == 3 else t.reshape(t.shape[0], -1)


@pytest.mark.parametrize("model", FAMILIES)
def test_the_planted_structure_is_there(model: str) -> None:
    ref = reference(model)
    spec = activations.TrainedSpec.from_preset(ref.source.preset.activations["trained"], model)
    hidden = row(ref.capture, "embed").shape[1]
    massive = [c % hidden for c in spec.massive_channels]
    assert ref.ids[0] == spec.start_tokens[0] and any(t in spec.delimiter_tokens for t in ref.ids)
    for b in range(spec.massive_block, ref.source.num_blocks):  # massive from the block after massive_block on
        x = row(ref.capture, f"blocks.{b}.resid_post")
        assert x[0, massive].tolist() == pytest.approx(spec.massive_values, rel=0.02)
        assert x.abs().median() < 2.0  # the rest of the stream stays O(1)
    before = row(ref.capture, f"blocks.{spec.massive_block - 1}.resid_post") if spec.massive_block else row(ref.capture, "embed")
    assert before.abs().max() < 50
    for point in ("attn_in", "mlp_in"):  # outlier features: a few fixed channels large at every token
        x = row(ref.capture, f"blocks.1.{point}")
        top = x[1:].abs().quantile(0.5, dim=0).sort(descending=True).values
        assert top[spec.outlier_channels - 1] > 6.0 > top[spec.outlier_channels] * 2


def test_the_attention_sink() -> None:
    """Later blocks' queries put most of their attention on the massive tokens."""
    ref = reference("qwen")
    trig = torch.tensor([t in set(activations.TrainedSpec.from_preset(ref.source.preset.activations["trained"],
                                                                      "qwen").triggers) for t in ref.ids])
    for b in (2, 3):
        q, k = (ref.capture.tensor(f"blocks.{b}.attn.{n}").float().reshape(len(ref.ids), 4, -1) for n in ("q_rot", "k_rot"))
        s = torch.einsum("thd,shd->hts", q, k) / q.shape[-1] ** 0.5
        mask = torch.ones(len(ref.ids), len(ref.ids), dtype=torch.bool).tril()
        p = s.masked_fill(~mask, float("-inf")).softmax(-1)[:, 16:]
        assert p[..., trig].sum(-1).mean() > 0.6  # ~7% of the tokens take most of the attention
        assert p[..., 0].mean() > 5 * p[..., ~trig].mean(-1).mean() * 100 / len(ref.ids)


def test_plain_seeded_weights_are_unchanged() -> None:
    """The default (plain) build seeds every parameter as before: nothing planted."""
    from parity.loading.weights import seeded_init

    src = ModelSource.resolve("llama")
    built = src.build("cpu")
    manual = src.family.build(src.config_dict, "eager").float().eval()
    seeded_init(manual, src.seed)
    for (n, a), (_, b) in zip(built.state_dict().items(), manual.state_dict().items()):
        assert torch.equal(a, b), n


def test_trained_activations_need_seeded_weights(tmp_path: Any) -> None:
    with pytest.raises(ModelError, match="checkpoint has its own activations"):
        ModelSource.resolve("smollm2", activations="trained")
    with pytest.raises(ModelError, match="unknown --activations"):
        ModelSource.resolve("qwen", activations="random")


@pytest.mark.slow  # four candidates per family, ~30 s on two cores
@pytest.mark.parametrize("model", FAMILIES)
def test_honest_candidates_pass(model: str) -> None:
    for candidate, dtype, kw in (("port", "fp16", {}), ("port", "bf16", {}), ("torch", "fp16", {"attn": "sdpa"}),
                                 ("torch", "bf16", {"attn": "sdpa"})):
        if candidate == "port" and model == "qwen2":
            continue
        s = summary(model, candidate, dtype, **kw)
        assert s["verdict"] == "pass", f"{model} {candidate} {dtype}: {s['message']}"


@pytest.mark.slow  # ~3 s each on two cores; the 7B acceptance (benchmarks/trained_7b.py) runs them too
@pytest.mark.parametrize("model", PORTED)
@pytest.mark.parametrize(("fault", "block", "components", "named"), [
    ("silu-wrong-branch@2", 2, {"mlp"}, "activation-wrong-branch"),
    ("double-rope@2", 2, {"attn", "rope"}, "rotary-twice"),
    ("qkv-split@3", 3, {"attn"}, "permutation"),
    ("norm-eps@3", 3, {"norm"}, "norm-eps"),
])
def test_port_faults_are_found_and_named(model: str, fault: str, block: int, components: set[str], named: str) -> None:
    s = summary(model, "port", "fp32", faults=[fault])
    diag = s["diagnosis"]
    assert s["verdict"] == "diverged" and (diag["block"], diag["named_cause"]) == (block, named), s["message"]
    assert diag["component"] in components


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
@pytest.mark.parametrize("model", PORTED)
def test_a_float16_norm_without_upcast_overflows_and_is_named(model: str) -> None:
    """The massive activations (~2.5e3) square to ~6e6, beyond float16: the norm's statistics
    overflow and the start token's row collapses to 0; the reference (float32 statistics) and
    the precision twin do not."""
    s = summary(model, "port", "fp16", faults=["norm-no-upcast@2"])
    diag = s["diagnosis"]
    assert s["verdict"] == "diverged", s["message"]
    assert (diag["block"], diag["component"], diag["cause"], diag["named_cause"]) == (2, "norm", "overflow", "norm-overflow"), diag
    assert "overflow" in diag["hint"]
    assert summary(model, "port", "bf16", faults=["norm-no-upcast@2"])["verdict"] == "pass"  # bfloat16's range holds it


@pytest.mark.real
@pytest.mark.slow  # ~100 s on two shared cores
def test_a_real_model_has_massive_activations_and_the_overflow_is_named() -> None:
    """SmolLM2-135M (trained) has what --activations trained plants: a massive activation at
    the start token (~2.4e4 in one channel from block 12 on, the stream's median ~2); there the
    float16 norm without upcast overflows, is found at its block and named, and in bfloat16 the
    same port passes."""
    import tomllib
    from pathlib import Path

    if not (REAL_DIR / "config.json").is_file():
        pytest.skip("SmolLM2 is not fetched: run `make model` (parity fetch smollm2)")
    here = fetch.model_dir("smollm2")  # this session's $PARITY_CACHE: link the fetched folder
    if here != REAL_DIR and not here.exists():
        here.parent.mkdir(parents=True, exist_ok=True)
        here.symlink_to(REAL_DIR, target_is_directory=True)
    prompts = tomllib.loads((Path(__file__).parent / "data" / "prompts.toml").read_text())
    ref = prepare_reference(RunOptions(model="smollm2", prompt=prompts["medium"].strip(), device="cpu"))
    x = row(ref.capture, "blocks.14.resid_post")
    assert x[0].abs().max() > 1e4 > 1e3 * x.abs().median()
    s = compare_candidate(ref, replace(ref.options, candidate="port", dtype="fp16", faults=["norm-no-upcast@15"])).report.summary
    diag = s["diagnosis"]
    assert s["verdict"] == "diverged", s["message"]
    assert (diag["block"], diag["cause"], diag["named_cause"]) == (15, "overflow", "norm-overflow"), diag
    s = compare_candidate(ref, replace(ref.options, candidate="port", dtype="bf16", faults=["norm-no-upcast@15"])).report.summary
    assert s["verdict"] == "pass", s["message"]


def test_the_cli_takes_activations_and_refuses_a_checkpoint(run_cli: Any, tmp_path: Any) -> None:
    code, _, err = run_cli("run", "--model", "smollm2", "--activations", "trained", "-q", "--no-files")
    assert code == 2 and "checkpoint has its own activations" in err and "Note:" in err
    with pytest.raises(SystemExit) as exc:  # argparse's choices
        run_cli("run", "--model", "qwen", "--activations", "gaussian", "-q", "--no-files")
    assert exc.value.code == 2
    code, out, _ = run_cli("run", "--model", "llama", "--activations", "trained", "--tokens", "24", "--device", "cpu",
                           "--no-files")
    assert code == 0 and "trained-activations" in out
