"""The mutation benchmark's machinery (tests/mutants): the generator's seeded mutants, their
ground truth, and (slow) a fixed sample run through parity in-process and scored against it.
The full measurement: ``make mutants`` (benchmarks/mutants.jsonl)."""
from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "mutants"))

import generate  # noqa: E402
import run  # noqa: E402
import truth  # noqa: E402


def test_generator_yields_hundreds_of_distinct_mutants_of_every_operator() -> None:
    muts = generate.generate()
    assert len(muts) >= 300
    assert len({m.id for m in muts}) == len(muts) and len({(m.function, m.after) for m in muts}) == len(muts)
    ops = Counter(m.op for m in muts)
    for op in ("swap-args", "drop-term", "sibling", "change-dim", "change-const", "drop-call", "mask-offset", "flip-op",
               "change-activation", "transpose"):
        assert ops[op] > 0, op
    m = next(x for x in muts if x.op == "mask-offset")
    src = m.source()
    assert m.after in src and src != generate.ENGINE.read_text()
    compile(src, "<mutant>", "exec")


def test_sample_is_seeded() -> None:
    muts = generate.generate()
    assert [m.id for m in generate.sample(muts, 20, seed=3)] == [m.id for m in generate.sample(muts, 20, seed=3)]


def test_truth_is_written_from_the_mutation() -> None:
    points, labels, block = truth.truth("m158", "input", 2, 4)  # tril(1): one future token visible
    assert points == {"attn_out"} and labels == {"mask-shift=1"} and block == 2
    points, labels, block = truth.truth("m286", "post", 1, 4)  # the fused add's residual dropped
    assert points == {"resid_mid"} and labels == {"expr:blocks.1.attn_out"}
    points, labels, block = truth.truth("m286", "input", 2, 4)
    assert points == {"attn_in"} and labels == {"expr:norm(blocks.1.mlp_out)"}


def test_labels_of_parity_names_and_matching() -> None:
    facts = {"head_dim": 32, "num_heads": 4, "rope_base": 1e4}
    assert run.matches("softmax-scale=5.65685", {"softmax-scale=sqrt(d)"}, facts)
    assert not run.matches("softmax-scale=0.5", {"softmax-scale=sqrt(d)"}, facts)
    assert run.matches("expr:b+a", {"expr:a+b"}, facts) and not run.matches(None, {"x"}, facts)
    diag = {"named_cause": "permutation", "probe": "blocks.1.attn.q",
            "hypotheses": [{"name": "permutation", "fits": True, "params": {"mapping": ["k0", "k1"], "layout": None}}]}
    assert run.label_of(diag) == "heads:q<-k"


#: fixed cases (family, dtype, mutant id, norm, layer): one per kind of fault
SAMPLE = [("llama", "fp32", "m087", "input", 1), ("qwen2", "fp16", "m286", "post", 2), ("qwen", "fp32", "m013", "input", 1),
          ("llama", "fp16", "m272", "input", 2), ("qwen2", "fp32", "m298", "final", 1), ("qwen", "fp16", "m158", "input", 2),
          ("llama", "fp32", "m335", "input", 1), ("qwen2", "fp32", "m229", "input", 2)]


@pytest.mark.slow
def test_fixed_sample_is_localized_and_named_right() -> None:
    muts = {m.id: m for m in generate.generate()}
    recs = []
    for fam, dt, mid, norm, layer in SAMPLE:
        case = {"family": fam, "dtype": dt, "mutant": muts[mid], "norm": norm, "layer": layer}
        assert run.changes_logits(case, run.CLEAN) == "changed", case
        recs.append(run.run_case(case, 4))
    bad = [(r["id"], r["family"], r["dtype"], r["label"], r["hint"][:120]) for r in recs
           if not (r["localized"] and r["named_right"])]
    assert not bad, bad
