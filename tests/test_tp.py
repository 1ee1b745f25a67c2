"""The tensor-parallel candidate (``--tp N``, parity.engines.tp) and the shard logic
(parity.engines.shards): TensorRT-LLM's split, a clean two-rank gloo run, and a fault on one
rank's shard localized with its rank."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from parity.compare.tolerances import Tolerance
from parity.engines import shards
from parity.engines.tp.runner import ShardPlan, check
from parity.errors import UsageError
from parity.loading.source import ModelSource
from parity.options import RunOptions
from parity.run.candidate import execute
from parity.verdict.calibrate import Calibration


def test_the_split_is_tensorrt_llms() -> None:
    p = ShardPlan(rank=1, tp=2, heads=8, kv_heads=4, head_dim=16, intermediate=64)
    a = "model.layers.3.self_attn."
    assert p.slice_of(a + "q_proj.weight") == (0, 64, 128)  # heads 4..7
    assert p.slice_of(a + "q_proj.bias") == (0, 64, 128)
    assert p.slice_of(a + "k_proj.weight") == (0, 32, 64)  # KV heads 2..3
    assert p.slice_of(a + "v_proj.bias") == (0, 32, 64)
    assert p.slice_of(a + "o_proj.weight") == (1, 64, 128)  # row-parallel: its input columns
    assert p.slice_of(a + "o_proj.bias") == "rank0"  # added once, after the all-reduce
    assert p.slice_of("model.layers.3.mlp.gate_proj.weight") == (0, 32, 64)
    assert p.slice_of("model.layers.3.mlp.down_proj.weight") == (1, 32, 64)
    for name in ("model.embed_tokens.weight", "model.layers.3.input_layernorm.weight", "lm_head.weight"):
        assert p.slice_of(name) is None
    p.wrong_kv, p.wrong_kv_blocks = True, {3}  # the tp-kv-offset fault: rank 0's KV heads
    assert p.slice_of(a + "k_proj.weight") == (0, 0, 32)
    assert p.slice_of("model.layers.2.self_attn.k_proj.weight") == (0, 32, 64)


def test_shards_reassemble_and_localize() -> None:
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 4, 8, generator=g)  # [T, heads, head_dim]
    parts = [ref[:, :2].clone(), ref[:, 2:].clone()]
    assert torch.equal(shards.assemble("blocks.0.attn.k", parts), ref)
    resid = torch.randn(5, 32, generator=g)
    assert shards.assemble("blocks.0.resid_post", [resid, resid.clone()]) is resid
    parts[1] = parts[1].flip(1)  # rank 1's heads swapped
    tol = Tolerance(1e-6, 0.0)
    per_probe = {"blocks.0.attn.k": shards.rank_diffs("blocks.0.attn.k", ref, parts, tol),
                 "blocks.0.resid_post": shards.rank_diffs("blocks.0.resid_post", resid, [resid, resid], tol)}
    assert [d.diff.max_abs_err == 0 for d in per_probe["blocks.0.attn.k"]] == [True, False]
    summary = {"first_divergence": {"probe": "blocks.0.attn.k"}, "message": "FAILED | blocks.0.attn.k"}
    info = shards.localize(summary, per_probe, Calibration("absolute"), 2)
    assert info["fault_rank"] == [1] and info["rank_local"] == {"blocks.0.attn.k": [1]}
    assert summary["message"].endswith("| rank 1 of 2: its shard of blocks.0.attn.k diverges, rank 0 matches")


def test_tp_checks_before_any_process_starts() -> None:
    llama = ModelSource.resolve("llama")  # 4 heads, 4 KV heads
    with pytest.raises(UsageError, match="4 attention heads do not split evenly over 3 ranks"):
        check(llama, 3, "cpu")
    with pytest.raises(UsageError, match="shards the llama/qwen2 layout"):
        check(ModelSource.resolve("qwen"), 2, "cpu")
    if torch.cuda.device_count() < 2:
        with pytest.raises(UsageError, match="needs 2 GPUs"):
            check(llama, 2, "cuda")
    with pytest.raises(UsageError, match="needs --tp N"):
        execute(RunOptions(model="llama", device="cpu", tokens=8, faults=["tp-kv-offset"]))
    assert RunOptions(tp=2).candidate == "tp" and RunOptions(tp=2, candidate="port").candidate == "port"


@pytest.mark.slow
def test_tp2_gloo_passes_clean_and_localizes_a_one_rank_fault() -> None:
    """Two processes (gloo); the clean run passes, tp-kv-offset (rank 1 takes rank 0's K/V
    heads) fails at the K projection with rank 1 named, rank 0 matching."""
    clean = execute(RunOptions(model="llama", device="cpu", tokens=12, tp=2, targeted=False)).report
    assert clean.summary["verdict"] == "pass", clean.summary["message"]
    assert clean.run["candidate"]["tp"] == 2 and clean.run["candidate"]["process_group"] == "gloo"
    assert not clean.summary["ranks"]["rank_local"]
    bad = execute(RunOptions(model="qwen2", device="cpu", tokens=12, tp=2, targeted=False,
                             faults=["tp-kv-offset@1"])).report
    assert bad.summary["verdict"] == "diverged"
    assert bad.summary["first_divergence"]["probe"] == "blocks.1.attn.k"
    ranks = bad.summary["ranks"]
    assert ranks["fault_rank"] == [1] and ranks["first_divergence"]["failing_ranks"] == [1]
    assert "rank 1 of 2: its shard of blocks.1.attn.k diverges, rank 0 matches" in bad.summary["message"]
    assert all(r.passed for r in bad.probes if r.block == 0)  # the fault is block 1's only


def test_tp_candidate_without_tp_is_a_usage_error() -> None:
    from parity.engines.tp import runner as tp

    ctx = SimpleNamespace(options=RunOptions(candidate="tp"), source=None, reference_model=None, device="cpu")
    with pytest.raises(UsageError, match="needs --tp N"):
        tp.create(ctx)


def test_tp_refuses_what_it_cannot_shard() -> None:
    with pytest.raises(UsageError, match="does not combine with --candidate port"):
        execute(RunOptions(model="llama", device="cpu", tokens=8, tp=2, candidate="port"))


@pytest.mark.parametrize("n", [0, -2])
def test_tp_below_one_rank_is_refused_not_ignored(run_cli, n: int) -> None:
    # 0 is falsy: it used to leave the candidate unsharded and the run went ahead
    code, _, err = run_cli("run", "--model", "llama", "--tokens", "4", "--tp", str(n))
    assert code == 2 and f"--tp {n}: need at least 1 rank" in err
