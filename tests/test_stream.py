"""The streamed reference (parity.loading.streamed, parity.run.stream): block by block, the very
bits of the whole reference -- seeded presets and checkpoints alike -- and the twin and the
candidates derived from it are those of the whole run."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from parity.errors import UsageError
from parity.loading import fetch
from parity.loading.source import ModelSource
from parity.loading.streamed import stream_of, streamed_model
from parity.options import RunOptions
from parity.run.candidate import execute
from parity.run.reference import prepare_reference
from parity.run.stream import stream_reason


# where `make model` put SmolLM2 (read before conftest points $PARITY_CACHE at a session folder)
REAL_SMOLLM2 = fetch.model_dir("smollm2")


def _same_capture(a, b) -> None:
    assert list(a.records) == list(b.records)
    for name in a.records:
        x, y = a.tensor(name), b.tensor(name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


@pytest.mark.parametrize("model", ["llama", pytest.param("qwen2", marks=pytest.mark.slow),
                                   pytest.param("qwen", marks=pytest.mark.slow)])
def test_streamed_reference_is_the_whole_reference_bit_for_bit(model: str) -> None:
    whole = prepare_reference(RunOptions(model=model, device="cpu", tokens=12))
    streamed = prepare_reference(RunOptions(model=model, device="cpu", tokens=12, stream_reference=True))
    _same_capture(whole.capture, streamed.capture)
    facts = streamed.facts["streamed"]
    assert facts["why"] == "asked (--stream-reference)" and facts["units"] == whole.source.num_blocks + 3
    assert "streamed" not in whole.facts
    # the weights never stay: after the pass every parameter is a placeholder again
    assert all(p.device.type == "meta" for p in streamed.model.parameters())
    assert stream_of(streamed.model).loads == facts["units"]


def test_seeded_weights_are_drawn_in_any_order() -> None:
    """A parameter asked for again, or out of order, has the value seeded_init gives it."""
    source = ModelSource.resolve("llama")
    whole = dict(source.build("cpu").named_parameters())
    model = streamed_model(source, "cpu", "model.layers.{i}")
    weights = stream_of(model).weights
    names = weights.names()
    for name in [names[5], names[1], names[-1], names[5], names[0]]:
        assert torch.equal(weights.get(name), whole[name].detach()), name


def _checkpoint(folder: Path) -> Path:
    """The tiny llama preset saved as a two-file float16 safetensors checkpoint with an index."""
    from safetensors.torch import save_file

    source = ModelSource.resolve("llama")
    sd = {k: v.to(torch.float16).contiguous() for k, v in source.build("cpu").state_dict().items()}
    folder.mkdir()
    names = sorted(sd)
    half = len(names) // 2
    parts = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
    for file, keys in parts.items():
        save_file({k: sd[k] for k in keys}, str(folder / file))
    index = {"weight_map": {k: f for f, keys in parts.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps({**source.config_dict, "model_type": "llama"}))
    return folder


def test_streamed_checkpoint_is_the_whole_reference_bit_for_bit(tmp_path: Path) -> None:
    ck = str(_checkpoint(tmp_path / "ck"))
    whole = prepare_reference(RunOptions(model="llama", checkpoint=ck, device="cpu", tokens=12))
    streamed = prepare_reference(RunOptions(model="llama", checkpoint=ck, device="cpu", tokens=12, stream_reference=True))
    _same_capture(whole.capture, streamed.capture)
    assert streamed.facts["streamed"]["weights"].startswith("checkpoint ")


def test_streamed_checkpoint_checks_names_and_shapes(tmp_path: Path) -> None:
    from safetensors.torch import load_file, save_file

    from parity.errors import CheckpointError

    ck = _checkpoint(tmp_path / "ck")
    f = ck / "model-00002-of-00002.safetensors"
    sd = load_file(str(f))
    key = sorted(sd)[0]
    sd[key] = sd[key][:-1].contiguous()
    save_file(sd, str(f))
    with pytest.raises(CheckpointError, match=f"'{key}' has shape"):
        prepare_reference(RunOptions(model="llama", checkpoint=str(ck), device="cpu", tokens=8, stream_reference=True))


@pytest.mark.parametrize("kw", [
    {"model": "llama", "attn": "sdpa"},  # the twin is measured: streamed in float16
    pytest.param({"model": "qwen", "candidate": "port", "faults": ["double-rope@2"]},  # the port: a whole state dict
                 marks=pytest.mark.slow),
])
def test_streamed_run_reports_what_the_whole_run_reports(kw: dict) -> None:
    whole = execute(RunOptions(device="cpu", tokens=12, **kw)).report
    streamed = execute(RunOptions(device="cpu", tokens=12, stream_reference=True, **kw)).report
    assert whole.summary["verdict"] == streamed.summary["verdict"]
    assert whole.summary["message"] == streamed.summary["message"]
    for a, b in zip(whole.probes, streamed.probes, strict=True):
        assert (a.name, a.max_abs_err, a.excess, a.isolated_max_abs_err) == (b.name, b.max_abs_err, b.excess, b.isolated_max_abs_err)
    da, db = whole.summary.get("diagnosis") or {}, streamed.summary.get("diagnosis") or {}
    assert (da.get("cause"), da.get("hint")) == (db.get("cause"), db.get("hint"))  # the targeted pass read the same weights
    assert "streamed block by block" in streamed.run["verdict"]["twin"]["label"]
    assert streamed.run["reference"]["streamed"]["why"] == "asked (--stream-reference)"


def test_stream_is_chosen_when_the_model_does_not_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    import parity.loading.limits as limits

    source = ModelSource.resolve("qwen2", shape="72b")
    monkeypatch.setattr(limits, "available_bytes", lambda device=None: 80 << 30)
    why = stream_reason(RunOptions(model="qwen2", shape="72b", dtype="fp16"), source, "cuda")
    assert why is not None and why.startswith("automatic: ") and "> 80.0 GiB free on cuda" in why
    small = ModelSource.resolve("qwen2")
    assert stream_reason(RunOptions(model="qwen2"), small, "cpu") is None


def test_model_faults_refuse_a_streamed_reference() -> None:
    with pytest.raises(UsageError, match="streamed reference does not hold"):
        prepare_reference(RunOptions(model="llama", device="cpu", tokens=8, stream_reference=True,
                                     faults=["mlp-overflow"]))


@pytest.mark.parametrize(("model", "shape", "blocks", "hidden", "vocab"), [
    ("llama", "70b", 80, 8192, 32000), ("llama", "14b", 40, 5120, 32000),
    ("qwen2", "72b", 80, 8192, 152064), ("qwen2", "14b", 48, 5120, 152064),
])
def test_large_shapes(model: str, shape: str, blocks: int, hidden: int, vocab: int) -> None:
    """The real sizes, and a streamed skeleton of them that allocates no weights."""
    source = ModelSource.resolve(model, shape=shape)
    assert (source.num_blocks, source.config.hidden_size, source.config.vocab_size) == (blocks, hidden, vocab)
    m = streamed_model(source, "cpu", "model.layers.{i}")
    s = stream_of(m)
    assert s.describe()["units"] == blocks + 3
    assert all(p.device.type == "meta" for p in m.parameters())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_streamed_reference_on_the_gpu_is_the_whole_reference_bit_for_bit() -> None:
    """Seeded weights drawn per parameter by the CUDA generator, kernels on the GPU: the same bits."""
    whole = prepare_reference(RunOptions(model="qwen2", device="cuda", tokens=64))
    streamed = prepare_reference(RunOptions(model="qwen2", device="cuda", tokens=64, stream_reference=True))
    _same_capture(whole.capture, streamed.capture)
    assert streamed.facts["streamed"]["peak_gpu_gib"] is not None


def test_candidates_that_need_the_whole_reference_refuse_streaming() -> None:
    with pytest.raises(UsageError, match="--candidate onnxruntime builds from the whole reference module"):
        stream_reason(RunOptions(model="llama", candidate="onnxruntime", stream_reference=True),
                      ModelSource.resolve("llama"), "cpu")


@pytest.mark.real
@pytest.mark.slow
def test_streamed_real_checkpoint_with_tied_embeddings_is_bit_for_bit() -> None:
    """SmolLM2 (fetched; tied embeddings: its LM head loads the embedding's tensor)."""
    if not (REAL_SMOLLM2 / "config.json").is_file():
        pytest.skip(f"SmolLM2 is not fetched ({REAL_SMOLLM2} is missing): run `make model` (parity fetch smollm2)")
    ck = str(REAL_SMOLLM2)
    whole = prepare_reference(RunOptions(model="smollm2", checkpoint=ck, device="cpu", tokens=12))
    streamed = prepare_reference(RunOptions(model="smollm2", checkpoint=ck, device="cpu", tokens=12, stream_reference=True))
    _same_capture(whole.capture, streamed.capture)


def test_trained_activations_are_not_streamed() -> None:
    """Planting trained-model structure calibrates with a whole-model forward: never streamed."""
    source = ModelSource.resolve("llama", activations="trained")
    with pytest.raises(UsageError, match="a streamed reference cannot plant it"):
        stream_reason(RunOptions(model="llama", stream_reference=True), source, "cpu")
