"""The bisect search itself: bound on builds, answer, several marks per build."""
from __future__ import annotations

import math

import pytest

from parity.run.bisect import max_builds, search


@pytest.mark.parametrize("marks", [1, 2, 3, 5])
def test_search_finds_first_failure_within_bound(marks: int) -> None:
    for n in range(1, 70):
        order = [f"blocks.{i}.mlp_out" for i in range(n)]
        for first in [*range(n), None]:
            def measure(ps: list[str]) -> set[str]:
                return {p for p in ps if first is not None and int(p.split(".")[1]) >= first}

            answer, builds = search(order, measure, marks)
            assert answer == (None if first is None else f"blocks.{first}.mlp_out")
            assert len(builds) <= max_builds(n, marks)
            assert all(len(b.marked) <= marks for b in builds)
    assert max_builds(39, 1) == math.ceil(math.log2(39)) + 1 == 7


def test_parallel_branches_are_one_unit() -> None:
    from parity.run.bisect import units

    order = ["embed", "blocks.0.attn_in", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v",
             "blocks.0.attn.q_rot", "blocks.0.attn.k_rot", "blocks.0.attn_out", "blocks.1.attn.q", "logits"]
    assert units(order) == [["embed"], ["blocks.0.attn_in"], ["blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v"],
                            ["blocks.0.attn.q_rot", "blocks.0.attn.k_rot"], ["blocks.0.attn_out"], ["blocks.1.attn.q"], ["logits"]]
    # a fault in q: k and v (parallel) pass, everything after q's consumers fails
    bad = {"blocks.0.attn.q", "blocks.0.attn.q_rot", "blocks.0.attn_out", "blocks.1.attn.q", "logits"}
    answer, builds = search(order, lambda ps: {p for p in ps if p in bad})
    assert answer == "blocks.0.attn.q" and len(builds) <= max_builds(len(units(order)))


def test_clean_output_is_one_build() -> None:
    answer, builds = search(["embed", "final_norm", "logits"], lambda ps: set())
    assert answer is None and [b.marked for b in builds] == [["logits"]]
