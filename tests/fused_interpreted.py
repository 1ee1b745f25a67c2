"""Fused (Triton) statistics through Triton's interpreter, on CPU tensors.

Not collected by a plain `pytest` run (the name does not start with test_): TRITON_INTERPRET
must be set before Triton is imported, so test_fused.py runs this file in a subprocess with
it set. The same cases run compiled on a GPU in test_gpu.py."""
from __future__ import annotations

import contextlib
import os

import pytest
import torch

from fused_cases import CASES, TOL, check_case
from parity.compare import diff
from parity.compare import fused
from parity.capture.sinks import Capture, Comparator, Recorder
from parity.compare.tolerances import Tolerance, ToleranceTable

pytest.importorskip("triton", reason="Triton is not installed")
if os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("run by test_fused.py with TRITON_INTERPRET=1", allow_module_level=True)


@pytest.mark.parametrize("name", list(CASES))
def test_fused_matches_eager(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    check_case(name, CASES[name], "cpu", monkeypatch)


def test_batch_of_probes_across_arena_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Many probes, records spread over several arena blocks, eager and fused items mixed:
    each probe gets its own numbers back, in one resolve."""
    monkeypatch.setattr(fused, "ARENA_RECORDS", 16)
    g = torch.Generator().manual_seed(11)
    pairs = {f"p{i}": (torch.randn(3 + i, 50, generator=g),) for i in range(12)}
    pairs = {k: (r, (r * (1 + 0.01 * i)).half()) for i, (k, (r,)) in enumerate(pairs.items())}
    pairs["empty"] = (torch.zeros(0, 4), torch.zeros(0, 4).half())  # eager path inside the batch
    ref_cap = Capture("reference")
    rec = Recorder(ref_cap, keep=True)
    for k, (r, _) in pairs.items():
        rec(k, r)
    comp = Comparator(ref_cap, Capture("candidate"), ToleranceTable(TOL))
    for k, (_, c) in pairs.items():
        comp(k, c)
    got = comp.diffs
    monkeypatch.setenv("PARITY_FUSED_STATS", "0")
    for k, (r, c) in pairs.items():
        want = diff.compare(r, c, TOL)
        assert got[k].max_abs_err == pytest.approx(want.max_abs_err, rel=1e-12), k
        assert got[k].worst_index == want.worst_index and got[k].n_bad == want.n_bad, k
        assert ref_cap.records[k].stats.sum == pytest.approx(diff.tensor_stats(r).sum, rel=1e-12, abs=1e-12), k
        assert comp.capture.records[k].stats.abs_max == diff.tensor_stats(c).abs_max, k


def _deferred_pairs() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Probes of several dtype pairs, widths and layouts (strided views, one row)."""
    g = torch.Generator().manual_seed(5)
    pairs = {}
    for i in range(15):
        rows, width = 2 + i % 5, 40 + 13 * i
        cdt = (torch.float16, torch.bfloat16, torch.float32)[i % 3]
        if i % 4 == 3:  # a column slice of a wider buffer: rows not adjacent
            r = torch.randn(rows, 3 * width, generator=g)[:, width:2 * width]
        else:
            r = torch.randn(rows, width, generator=g)
        if i % 5 == 4:
            r = r.half()  # a float16 reference: another dtype pair
        pairs[f"p{i}"] = (r, (r.float() * (1 + 1e-3 * i) + 1e-3).to(cdt))
    pairs["row"] = (torch.randn(70, generator=g), torch.randn(70, generator=g).half())
    return pairs


def test_deferred_launches_match_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inside fused.deferred() probes queue and launch together (one kernel per dtype pair),
    also when the queue fills up or the records run out mid-way: every probe gets the
    numbers of the eager definition."""
    monkeypatch.setattr(fused, "ARENA_RECORDS", 40)
    monkeypatch.setattr(fused, "HOLD_BYTES", 6000)
    pairs = _deferred_pairs()
    batch = diff.Batch()
    diffs, stats = {}, {}
    launches = []
    real = fused.Arena.flush

    def counting(self: fused.Arena) -> None:
        launches.append(len(self.groups))
        real(self)

    monkeypatch.setattr(fused.Arena, "flush", counting)
    with fused.deferred():
        for k, (r, c) in pairs.items():
            diffs[k] = batch.add_diff(r, c, TOL, lambda v, s=list(r.shape): diff.diff_from(v, s))
            stats[k] = batch.add_tensor(c, lambda v, s=list(c.shape): diff.stats_from(v, s, "x"))
        assert fused.deferring() and fused._WAITING  # queued, not launched
    assert not fused.deferring() and not fused._WAITING
    assert sum(launches) < 2 * len(pairs)  # batched: fewer launches than probes
    monkeypatch.setenv("PARITY_FUSED_STATS", "0")
    for k, (r, c) in pairs.items():
        want, got = diff.compare(r, c, TOL), diffs[k].get()
        assert got.worst_index == want.worst_index and got.n_bad == want.n_bad, k
        assert got.max_abs_err == pytest.approx(want.max_abs_err, rel=1e-6), k
        assert got.cosine == pytest.approx(want.cosine, rel=1e-6), k
        assert stats[k].get().sum == pytest.approx(diff.tensor_stats(c).sum, rel=1e-6, abs=1e-9), k


def test_deferred_statistics_read_the_tensor_at_launch() -> None:
    """Why only vouched-for models defer: a tensor written in place before the queued launch
    is measured as written. Outside deferred() the launch comes first."""
    r = torch.randn(4, 64, generator=torch.Generator().manual_seed(2))
    for defer, want in ((False, 0.0), (True, 1.0)):
        c = r.clone()
        batch = diff.Batch()
        with fused.deferred() if defer else contextlib.nullcontext():
            p = batch.add_diff(r, c, TOL, lambda v: diff.diff_from(v, [4, 64]))
            c.add_(1.0)
        assert p.get().max_abs_err == pytest.approx(want), defer


def test_error_inside_deferred_keeps_the_queue_for_finish() -> None:
    r = torch.randn(3, 32, generator=torch.Generator().manual_seed(3))
    batch = diff.Batch()
    with pytest.raises(RuntimeError), fused.deferred():
        p = batch.add_diff(r, r.half(), TOL, lambda v: diff.diff_from(v, [3, 32]))
        raise RuntimeError("the forward failed")
    assert not fused._WAITING
    assert p.get().n_bad == 0  # launched when the batch is finished


def test_comparator_plans_across_forwards(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Comparator inside deferred() queues a probe with the plan made on an earlier
    forward (same reference, layout and tolerances); a changed layout, tolerance table or
    re-recorded reference falls back to the general path. Every forward gets the numbers
    of the eager definition."""
    monkeypatch.setattr(fused, "HOLD_BYTES", 5000)
    pairs = _deferred_pairs()
    ref_cap = Capture("reference")
    rec = Recorder(ref_cap, keep=True)
    for k, (r, _) in pairs.items():
        rec(k, r)
    queued = []
    real = diff.Batch.queue

    def counting(self: diff.Batch, p: fused.Plan, cand: torch.Tensor) -> diff.Pending:
        queued.append(p)
        return real(self, p, cand)

    real_run = diff.Batch.queue_run

    def counting_run(self: diff.Batch, r: fused.Run, cands: list[torch.Tensor]) -> diff.RunPending:
        queued.extend(r.plans)
        return real_run(self, r, cands)

    monkeypatch.setattr(diff.Batch, "queue", counting)
    monkeypatch.setattr(diff.Batch, "queue_run", counting_run)
    tight = ToleranceTable(Tolerance(1e-4, 0.0))
    passes = [("first", ToleranceTable(TOL), lambda c: c), ("planned", ToleranceTable(TOL), lambda c: c),
              ("planned", ToleranceTable(TOL), lambda c: c.clone()),  # runs made last time, new addresses
              ("other layout", ToleranceTable(TOL), lambda c: c.t().contiguous().t()),
              ("other tolerances", tight, lambda c: c)]
    for label, table, layout in passes:
        if label == "other tolerances":
            ref_cap.records["p0"] = type(ref_cap.records["p0"])("p0", None, pairs["p0"][0].clone())  # re-recorded
        queued.clear()
        comp = Comparator(ref_cap, Capture("candidate"), table)
        with fused.deferred():
            for k, (_, c) in pairs.items():
                comp(k, layout(c))
        got = comp.diffs
        if label == "planned":
            assert len(queued) >= len(pairs) - 2, label  # all but the probes no plan can take
        if label != "planned":
            assert not any(p.owner is table for p in queued) or label == "other layout", label
        monkeypatch.setenv("PARITY_FUSED_STATS", "0")
        for k, (r, c) in pairs.items():
            want = diff.compare(r, c, table.lookup(k))
            assert got[k].n_bad == want.n_bad and got[k].worst_index == want.worst_index, (label, k)
            assert got[k].max_abs_err == pytest.approx(want.max_abs_err, rel=1e-6), (label, k)
            assert comp.capture.records[k].stats.sum == pytest.approx(diff.tensor_stats(c).sum, rel=1e-6, abs=1e-9)
        assert list(comp.capture.records) == list(pairs), label  # in probe order
        monkeypatch.delenv("PARITY_FUSED_STATS")


@pytest.mark.parametrize("model_name,layers", [("qwen", "n_layer"), ("llama", "num_hidden_layers")])
def test_repeated_forwards_queue_planned_runs(model_name: str, layers: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A shipped model's forwards, as a benchmark or an isolation pass repeats them: from the
    second on, every probe is held as the module made it (no canonical view) and queued
    with the others as one run; each forward still gets the eager numbers."""
    from parity.capture import sinks as capture_module
    from parity.engines.torch.runner import ModuleBackend, make_candidate
    from parity.capture.probemap import find_map
    from parity.loading.source import ModelSource

    monkeypatch.setattr(fused, "HOLD_BYTES", 4000)  # runs end mid-forward too
    src = ModelSource.resolve(model_name, overrides={layers: 2, "vocab_size": 128})
    pmap = find_map(src.preset.probe_map)
    names = pmap.names(src.num_blocks)
    model = src.build("cpu")
    ids = torch.randint(0, 128, (1, 5), generator=torch.Generator().manual_seed(0))
    ref_cap = Capture("reference")
    with ModuleBackend(model, pmap, src.config, "reference", src.num_blocks) as ref:
        ref.capture(ids, names, Recorder(ref_cap, keep=True))
    cand = make_candidate(model, pmap, src.config, src.num_blocks, dtype="fp16", device="cpu")
    assert cand.defer_stats
    tols = src.preset.tolerance_table("fp16")
    taken, canonical, runs = [], [], []
    real_take, real_canonical, real_run = Comparator.take, capture_module.canonical, diff.Batch.queue_run

    def take(self: Comparator, name: str, value: torch.Tensor, binding: object) -> None:
        taken.append(name)
        real_take(self, name, value, binding)

    def counting_canonical(value: object, transform: object, heads: object, batched: bool, what: object) -> torch.Tensor:
        canonical.append(what.probe)
        return real_canonical(value, transform, heads, batched, what)

    def queue_run(self: diff.Batch, r: fused.Run, cands: list[torch.Tensor]) -> diff.RunPending:
        runs.append(len(r.plans))
        return real_run(self, r, cands)

    monkeypatch.setattr(Comparator, "take", take)
    monkeypatch.setattr(capture_module, "canonical", counting_canonical)
    monkeypatch.setattr(diff.Batch, "queue_run", queue_run)
    with cand:
        for forward in range(3):
            taken.clear()
            canonical.clear()
            runs.clear()
            comp = Comparator(ref_cap, Capture("candidate"), tols)
            cand.capture(ids, names, comp)
            held = set(taken) - set(canonical)  # given to the Comparator and held without a view
            got = comp.diffs
            monkeypatch.setenv("PARITY_FUSED_STATS", "0")
            eager = Comparator(ref_cap, Capture("eager"), tols)
            cand.capture(ids, names, eager)
            monkeypatch.delenv("PARITY_FUSED_STATS")
            assert set(got) == set(eager.diffs) and len(got) > 20
            for k, want in eager.diffs.items():
                assert got[k].n_bad == want.n_bad and got[k].worst_index == want.worst_index, (forward, k)
                assert got[k].max_abs_err == pytest.approx(want.max_abs_err, rel=1e-6), (forward, k)
                assert got[k].cosine == pytest.approx(want.cosine, rel=1e-9), (forward, k)
                assert comp.capture.records[k].stats.sum == pytest.approx(
                    eager.capture.records[k].stats.sum, rel=1e-5, abs=1e-6), (forward, k)
            if forward:
                plain = {b.probe for b in pmap.resolve(names, src.config) if b.spec.transform is None}
                assert held == plain & set(got) and len(plain) > 20, forward
                assert sum(runs) == len(got) and len(runs) > 1, runs


def test_take_holds_the_module_tensor_only_for_a_view() -> None:
    """Comparator.take: a value is held as the module made it (no batch removal, no head
    reshape) once the plan of its canonical view knows that layout; a value laid out
    otherwise (here a strided view, whose rows the kernel cannot read in place) goes
    through the general path every time. The numbers are those of the canonical tensor."""
    from types import SimpleNamespace

    binding = SimpleNamespace(heads=2, spec=SimpleNamespace(batched=True), probe="p")
    g = torch.Generator().manual_seed(11)
    ref = torch.randn(5, 2, 4, generator=g)
    ref_cap = Capture("reference")
    Recorder(ref_cap, keep=True)("p", ref)
    table = ToleranceTable(TOL)
    wide = (ref.reshape(1, 5, 8) + 1e-3 * torch.randn(1, 5, 8, generator=g)).half()
    gappy = torch.zeros(1, 5, 16, dtype=torch.float16)
    gappy[..., ::2] = wide
    for label, value in (("first", wide), ("planned view", wide.clone()), ("strided", gappy[..., ::2]),
                         ("strided again", gappy[..., ::2])):
        comp = Comparator(ref_cap, Capture("candidate"), table)
        with fused.deferred():
            comp.take("p", value, binding)
            held = [h[2] for h in comp._held]
        assert (bool(held) and held[-1] is value) == (label == "planned view"), label
        want = diff.compare(ref, value[0].reshape(5, 2, 4).float(), TOL)
        got = comp.diffs["p"]
        assert got.max_abs_err == pytest.approx(want.max_abs_err, rel=1e-6) and got.worst_index == want.worst_index


def test_run_with_a_candidate_off_the_element_grid_queues_probe_by_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """Arena.add_run: when a run's candidates are not all on one element grid (pretended
    here: the unit claims 3-byte elements, and the views start 2 bytes past 16-byte
    boundaries), its probes go one by one into the records the run reserved."""
    g = torch.Generator().manual_seed(12)
    refs = {f"p{i}": torch.randn(4, 40, generator=g) for i in range(3)}
    ref_cap = Capture("reference")
    rec = Recorder(ref_cap, keep=True)
    for k, r in refs.items():
        rec(k, r)
    buf = torch.zeros(3 * 200, dtype=torch.float16)

    def cands() -> dict[str, torch.Tensor]:
        out = {}
        for i, (k, r) in enumerate(refs.items()):
            view = buf[i * 200 + 1:i * 200 + 161].view(4, 40)  # rows contiguous, start 2 bytes off
            view.copy_(r + 1e-3 * (i + 1))
            out[k] = view
        return out

    real_run = fused.run

    def odd_run(plans: list[fused.Plan]) -> fused.Run | None:
        r = real_run(plans)
        if r is not None:
            for u in r.units:
                u.c_size = 3
        return r

    monkeypatch.setattr(fused, "run", odd_run)
    calls = []
    real_planned = fused.Arena.add_planned
    monkeypatch.setattr(fused.Arena, "add_planned", lambda self, *a, **k: calls.append(k.get("at")) or real_planned(self, *a, **k))
    for label in ("plans", "run"):
        calls.clear()
        comp = Comparator(ref_cap, Capture("candidate"), ToleranceTable(TOL))
        with fused.deferred():
            for k, c in cands().items():
                comp(k, c)
        got = comp.diffs
        if label == "run":
            assert len(calls) == 3 and all(at is not None for at in calls), calls
        for k, c in cands().items():
            want = diff.compare(refs[k], c.float(), TOL)
            assert got[k].max_abs_err == pytest.approx(want.max_abs_err, rel=1e-6), (label, k)
            assert got[k].worst_index == want.worst_index and got[k].n_bad == want.n_bad, (label, k)
            assert comp.capture.records[k].stats.sum == pytest.approx(float(c.double().sum()), rel=1e-5), (label, k)
