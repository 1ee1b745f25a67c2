"""The bisect search itself: bound on builds, answer, several marks per build."""
from __future__ import annotations

import math

import pytest

from parity.bisect import max_builds, search


@pytest.mark.parametrize("marks", [1, 2, 3, 5])
def test_search_finds_first_failure_within_bound(marks: int) -> None:
    for n in range(1, 70):
        order = [f"p{i}" for i in range(n)]
        for first in [*range(n), None]:
            def measure(ps: list[str]) -> set[str]:
                return {p for p in ps if first is not None and int(p[1:]) >= first}

            answer, builds = search(order, measure, marks)
            assert answer == (None if first is None else f"p{first}")
            assert len(builds) <= max_builds(n, marks)
            assert all(len(b.marked) <= marks for b in builds)
    assert max_builds(39, 1) == math.ceil(math.log2(39)) + 1 == 7


def test_clean_output_is_one_build() -> None:
    answer, builds = search(["a", "b", "c"], lambda ps: set())
    assert answer is None and [b.marked for b in builds] == [["c"]]
