"""Per-rank dumps read with the tensor-parallel shard logic (parity.engines.shards): a fault in
one rank's dumped shard is reported with that rank, the other rank matching."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import read_report
from test_dump import MODEL, NAME_MAP, _ids, _run_dump, make_tllm_dump, ref, ref_dump  # noqa: F401 - fixtures


def test_tllm_dump_fault_on_one_rank_is_named(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path,  # noqa: F811
                                                run_cli) -> None:
    root = make_tllm_dump(tmp_path / "eng", ref, _ids(ref_dump))
    k = ref["blocks.1.attn.k"]  # [T, 2 KV heads, 32]; rank 1 dumps rank 0's head (a wrong KV-head offset)
    np.save(root / "tllm_debug" / "PP_0" / "TP_1" / "blocks.1.attn.k-step0.npy", k[:, 0:1].numpy(), allow_pickle=False)
    (tmp_path / "map.toml").write_text(NAME_MAP)
    code, out, err = _run_dump(run_cli, root, tmp_path / "rep", "--dump-map", str(tmp_path / "map.toml"))
    assert code == 1, out + err
    assert "rank 1 of 2: its shard of blocks.1.attn.k diverges, rank 0 matches" in out
    ranks = read_report(tmp_path / "rep")["summary"]["ranks"]
    assert ranks["fault_rank"] == [1] and ranks["rank_local"] == {"blocks.1.attn.k": [1]}


def test_clean_tllm_dump_names_no_rank(ref_dump: Path, ref: dict[str, torch.Tensor], tmp_path: Path,  # noqa: F811
                                      run_cli) -> None:
    root = make_tllm_dump(tmp_path / "eng", ref, _ids(ref_dump))
    (tmp_path / "map.toml").write_text(NAME_MAP)
    code, out, err = _run_dump(run_cli, root, tmp_path / "rep", "--dump-map", str(tmp_path / "map.toml"))
    assert code == 0, out + err
    ranks = read_report(tmp_path / "rep")["summary"]["ranks"]
    assert ranks["tp"] == 2 and ranks["rank_local"] == {} and "fault_rank" not in ranks
