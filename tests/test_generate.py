"""Generation parity: KV-cache decode on both sides, stop sets, sampling config, faults."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from conftest import read_report
from parity.run import generate
from parity.run.decode import Stepper, full_forward_last
from parity.run.generate import GenerateOptions, classify_flip
from parity.loading.source import ModelSource

IM_START, IM_END, ENDOFTEXT = 151644, 151645, 151643
PROMPT = [872, 1879, 374, 264, 3460, 315, 23541, 13]


def gen_cli(run_cli, out: Path, *args: str) -> tuple[int, str, dict]:
    code, stdout, err = run_cli("generate", "--device", "cpu", "-q", "--out", str(out), *args)
    return code, stdout + err, read_report(out) if (out / "report.json").exists() else {}


# --------------------------------------------------------------------------- KV cache itself


@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
def test_cached_decode_equals_full_forward(model: str) -> None:
    ref = ModelSource.resolve(model).build("cpu")
    with Stepper(ref) as st:
        logits, seq = st.prefill(PROMPT), list(PROMPT)
        for _ in range(4):
            seq.append(int(logits.argmax()))
            logits = st.step(seq[-1])
    full = full_forward_last(ref, seq)
    assert torch.allclose(logits, full, atol=2e-5, rtol=1e-5), (logits - full).abs().max()


# --------------------------------------------------------------------------- clean candidates


@pytest.mark.parametrize("model", ["qwen", "qwen2", "llama"])
def test_fp32_candidate_generation_parity(model: str, tmp_path: Path, run_cli) -> None:
    code, out, rep = gen_cli(run_cli, tmp_path, "--model", model, "--dtype", "fp32", "--max-new-tokens", "5")
    assert code == 0, out
    g = rep["generation"]
    assert g["first_divergent_step"] is None and g["first_token_flip_step"] is None
    assert g["reference"]["tokens"] == g["candidate"]["tokens"] and len(g["steps"]) == 5
    assert all(s["passed"] and s["max_abs_err"] <= 1e-5 and s["topk_overlap"] == 1.0 for s in g["steps"])
    assert g["stop_set_diff"] is None and g["sampling_diff"] == [] and g["overrun"] is None
    assert "PASSED" in out
    with open(tmp_path / "steps.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == list(range(5))


# --------------------------------------------------------------------------- flips


def test_classify_flip_crafted() -> None:
    # fp16-like band: atol 0.05 + rtol 0.05 * |logit| (logit 4.0 -> band 0.25)
    band = 0.05 + 0.05 * 4.0
    assert classify_flip(0.003, band) == "near-tie"
    assert classify_flip(2 * band, band) == "near-tie"
    assert classify_flip(2 * band + 1e-6, band) == "confident"
    assert classify_flip(3.0, band) == "confident"
    assert classify_flip(0.0, 0.0) == "near-tie"  # an exact tie broken either way


def test_fp16_flip_is_reported_and_classified(tmp_path: Path, run_cli) -> None:
    # Seed 1 of the tiny llama: fp16 flips a near-tie at step 12 (reference margin ~0.004).
    code, out, rep = gen_cli(run_cli, tmp_path, "--model", "llama", "--seed", "1", "--tokens", "8",
                             "--dtype", "fp16", "--max-new-tokens", "14")
    g = rep["generation"]
    k = g["first_token_flip_step"]
    assert k is not None, "expected a flip for this seed"
    row = g["steps"][k]
    assert row["ref_token"] != row["cand_token"] and row["flip"] == "near-tie"
    assert row["ref_margin"] == pytest.approx(row["gap"]) and 0 < row["gap"] < 0.05
    assert all(not s["comparable"] for s in g["steps"][k + 1:])  # contexts differ after a flip
    assert g["first_divergent_step"] is None and code == 0, out  # a near tie is not a bug
    assert "near-tie flip" in out


# --------------------------------------------------------------------------- faults


def _boost_im_end(monkeypatch: pytest.MonkeyPatch, prompt: list[int], at_step: int) -> None:
    """Test-only weight edit: make <|im_end|>'s lm_head row a slightly scaled copy of the row
    of the token greedy decode picks at ``at_step``, so the model really emits <|im_end|> there."""
    original = ModelSource.build

    def build(self, device="cpu", attn="eager"):  # noqa: ANN001, ANN202
        model = original(self, device, attn)
        with Stepper(model) as st:
            logits, seq = st.prefill(prompt), []
            for _ in range(at_step + 1):
                seq.append(int(logits.argmax()))
                logits = st.step(seq[-1])
        with torch.no_grad():
            model.lm_head.weight[IM_END] = model.lm_head.weight[seq[at_step]] * 1.05
        return model

    monkeypatch.setattr(ModelSource, "build", build)


def test_eos_token_fault_overruns_im_end(tmp_path: Path, run_cli, monkeypatch: pytest.MonkeyPatch) -> None:
    ids_file = tmp_path / "ids.json"
    ids_file.write_text(json.dumps(PROMPT))
    _boost_im_end(monkeypatch, [IM_START] + PROMPT + [IM_END, IM_START], at_step=2)
    code, out, rep = gen_cli(run_cli, tmp_path / "r", "--model", "qwen", "--dtype", "fp32", "--chat",
                             "--input-ids", str(ids_file), "--max-new-tokens", "8", "--fault", "eos-token")
    assert code == 1
    g = rep["generation"]
    assert g["prompt"]["ids"][0] == IM_START and g["prompt"]["ids"][-2:] == [IM_END, IM_START]
    assert g["reference"]["tokens"][-1] == IM_END and len(g["reference"]["tokens"]) == 3
    assert g["reference"]["ended_by"] == "stop token `<|im_end|>`"
    assert g["candidate"]["stop_ids"] == [ENDOFTEXT]
    assert g["stop_set_diff"]["missing_in_candidate"] == ["151645 <|im_end|>"]
    ov = g["overrun"]
    assert ov["kind"] == "overrun" and ov["tokens"] == 5 and ov["at_step"] == 2
    assert "candidate continued 5 tokens past `<|im_end|>`" in out
    assert g["first_divergent_step"] is None  # the logits agree; only stopping differs


def test_kv_position_fault_only_generation_sees_it(tmp_path: Path, run_cli) -> None:
    code, out, _ = run_cli("run", "--model", "qwen", "--dtype", "fp32", "--device", "cpu", "--tokens", "8",
                           "-q", "--out", str(tmp_path / "run"))
    assert code == 0, out  # the single forward pass is fine
    code, out, rep = gen_cli(run_cli, tmp_path / "gen", "--model", "qwen", "--dtype", "fp32",
                             "--max-new-tokens", "4", "--fault", "kv-position", "--teacher-forcing")
    assert code == 1
    g = rep["generation"]
    assert g["first_divergent_step"] == 1
    assert g["steps"][0]["passed"] and g["steps"][0]["max_abs_err"] == 0.0
    assert all(not s["passed"] for s in g["steps"][1:]) and len(g["error_curve"]) == 4
    assert "position" in g["hint"] and "KV cache" in g["hint"]
    assert "Diagnosis:" in out and "error curve" in out


@pytest.mark.parametrize("model", ["qwen", "llama"])
def test_port_candidate_generates_and_kv_fault_is_found(model: str, tmp_path: Path, run_cli) -> None:
    """Generation uses the engine-style ports (their own KV cache): clean = exact; the
    kv-position fault on the port shows at step 1, a port fault at step 0."""
    code, out, rep = gen_cli(run_cli, tmp_path / "clean", "--model", model, "--candidate", "port", "--dtype", "fp32",
                             "--max-new-tokens", "4")
    assert code == 0, out
    assert all(s["max_abs_err"] < 1e-4 for s in rep["generation"]["steps"])
    code, out, rep = gen_cli(run_cli, tmp_path / "kv", "--model", model, "--candidate", "port", "--dtype", "fp32",
                             "--max-new-tokens", "4", "--fault", "kv-position", "--teacher-forcing")
    assert code == 1 and rep["generation"]["first_divergent_step"] == 1
    code, out, rep = gen_cli(run_cli, tmp_path / "rope", "--model", model, "--candidate", "port", "--dtype", "fp32",
                             "--max-new-tokens", "2", "--fault", "silu-wrong-branch")
    assert code == 1 and rep["generation"]["first_divergent_step"] == 0


def test_run_refuses_generation_faults(run_cli) -> None:
    code, _, err = run_cli("run", "--fault", "kv-position", "-q", "--no-files")
    assert code == 2 and "single forward pass cannot show it" in err and "parity generate --fault kv-position" in err


def test_kv_position_fault_hf_family_via_position_ids() -> None:
    opts = GenerateOptions(model="llama", dtype="fp32", device="cpu", tokens=6, max_new_tokens=3, faults=["kv-position"])
    res = generate.execute(opts)
    g = res.report.generation
    assert not res.passed and g["first_divergent_step"] == 1 and g["steps"][0]["max_abs_err"] == 0.0


# --------------------------------------------------------------------------- sampling config


def test_sampling_config_diff_with_real_qwen_generation_config(tmp_path: Path) -> None:
    # What an engine given Qwen-7B-Chat's generation_config.json, with its own top_k, would use.
    cfg = {"eos_token_id": ENDOFTEXT, "pad_token_id": ENDOFTEXT, "do_sample": True, "top_p": 0.8,
           "top_k": 50, "repetition_penalty": 1.1, "max_window_size": 6144, "max_new_tokens": 512}
    path = tmp_path / "generation_config.json"
    path.write_text(json.dumps(cfg))
    opts = GenerateOptions(model="qwen", tokens=4, candidate_generation_config=str(path))
    source = ModelSource.resolve("qwen")
    plan = generate.plan(opts, source)
    assert plan.ref_settings.config["top_p"] == 0.8 and plan.ref_settings.config["top_k"] == 0
    assert plan.ref_settings.stop_ids == [ENDOFTEXT, IM_END]
    assert plan.cand_settings.stop_ids == [ENDOFTEXT]  # the engine honours eos_token_id only
    diff = generate.sampling_diff(plan.ref_settings.config, plan.cand_settings.config)
    assert [d["key"] for d in diff] == ["temperature", "top_k"]
    assert diff[1] == {"key": "top_k", "reference": 0, "candidate": 50}


@pytest.mark.parametrize(("model", "eos", "pad"), [("qwen2", [151645, 151643], 151643), ("llama", 2, 0)])
def test_preset_generation_tables(model: str, eos, pad) -> None:  # noqa: ANN001
    plan = generate.plan(GenerateOptions(model=model, tokens=4), ModelSource.resolve(model))
    assert plan.ref_settings.config["eos_token_id"] == eos and plan.ref_settings.config["pad_token_id"] == pad
    assert plan.ref_settings.stop_ids == plan.cand_settings.stop_ids


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--max-new-tokens", "0"], "--max-new-tokens 0"),
        (["--max-new-tokens", "-3"], "--max-new-tokens -3"),
        (["--model", "llama", "--tokens", "4096"], "context is 4096"),
        (["--stop-token", "<|im_stop|>"], "--stop-token '<|im_stop|>' is not a token"),
        (["--fault", "eos-tokens"], "unknown fault 'eos-tokens'"),
        (["--fault", "double-rope"], "needs --candidate port"),
        (["--fault", "kv-position@3"], "takes no @block"),
        (["--model", "llama", "--fault", "eos-token"], "changes nothing"),
        (["--prompt", "hello"], "needs a tokenizer"),
        (["--candidate-generation-config", "/nonexistent.json"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_exit_2(args: list[str], needle: str, run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("generate", "--device", "cpu", "-q", "--out", str(tmp_path), *args)
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("parity: error:") and needle in lines[0], err
    assert not (tmp_path / "report.json").exists()


# --------------------------------------------------------------------------- with a tokenizer


@pytest.fixture(scope="module")
def qwen_tiktoken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synthetic qwen.tiktoken with Qwen's 151643 ranks (so the special ids are the real ones):
    the 256 bytes, then ' w<n>' pieces."""
    import base64

    pytest.importorskip("tiktoken")
    pieces = [bytes([b]) for b in range(256)] + [f" w{i}".encode() for i in range(151643 - 256)]
    path = tmp_path_factory.mktemp("tok") / "qwen.tiktoken"
    path.write_text("".join(f"{base64.b64encode(p).decode()} {r}\n" for r, p in enumerate(pieces)))
    return path


def test_chat_prompt_with_tokenizer_strips_specials(qwen_tiktoken: Path, tmp_path: Path, run_cli,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    args = ["--model", "qwen", "--dtype", "fp32", "--tokenizer", str(qwen_tiktoken), "--chat",
            "--prompt", "hello world", "--max-new-tokens", "4"]
    opts = GenerateOptions(model="qwen", tokenizer=str(qwen_tiktoken), chat=True, prompt="hello world")
    prompt = generate.plan(opts, ModelSource.resolve("qwen")).ids
    _boost_im_end(monkeypatch, prompt, at_step=1)
    code, out, rep = gen_cli(run_cli, tmp_path, *args)
    assert code == 0, out
    g = rep["generation"]
    assert g["prompt"]["ids"] == prompt and prompt[0] == IM_START and g["prompt"]["how"] == "chatml text template"
    assert g["reference"]["tokens"][-1] == IM_END and len(g["reference"]["tokens"]) == 2
    text = g["reference"]["text"]
    assert "<|im_end|>" not in text and text.startswith(" w") and text == g["candidate"]["text"]
    assert f"reference (stop token `<|im_end|>`): {text}" in out


def test_candidate_config_with_extra_stop_stops_early(tmp_path: Path) -> None:
    """An engine whose generation config names a different end token stops where the
    reference decodes on: early stop, and the stop-set difference that caused it."""
    ref = ModelSource.resolve("llama").build("cpu")
    with Stepper(ref) as st:
        first = int(st.prefill(PROMPT).argmax())
    path = tmp_path / "gen.json"
    path.write_text(json.dumps({"eos_token_id": [2, first], "pad_token_id": 0, "do_sample": True,
                                "top_p": 0.9, "temperature": 0.6, "max_length": 4096, "bos_token_id": 1}))
    ids = tmp_path / "ids.txt"
    ids.write_text(" ".join(map(str, PROMPT)))
    res = generate.execute(GenerateOptions(model="llama", dtype="fp32", device="cpu", input_ids=str(ids),
                                           max_new_tokens=4, candidate_generation_config=str(path)))
    g = res.report.generation
    assert not res.passed and g["sampling_diff"][0]["key"] == "eos_token_id"
    assert g["stop_set_diff"]["extra_in_candidate"] == [str(first)]
    assert g["overrun"]["kind"] == "early-stop" and g["overrun"]["at_step"] == 0 and g["overrun"]["tokens"] == 3
    assert g["candidate"]["tokens"] == [first] and len(g["reference"]["tokens"]) == 4


# --------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize(("model", "dtype"), [("qwen", "fp16"), ("qwen2", "bf16"), ("llama", "fp32")])
def test_cuda_generation(model: str, dtype: str, tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("generate", "--model", model, "--device", "cuda", "--dtype", dtype,
                         "--max-new-tokens", "16", "-q", "--out", str(tmp_path))
    rep = read_report(tmp_path)
    g = rep["generation"]
    assert rep["run"]["candidate"]["device"].startswith("cuda")
    assert code == 0, rep["summary"]["message"]
    assert g["first_divergent_step"] is None and all(s["flip"] in (None, "near-tie") for s in g["steps"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_kv_position_fault(tmp_path: Path, run_cli) -> None:
    code, _, _ = run_cli("generate", "--model", "qwen2", "--device", "cuda", "--dtype", "fp16", "--max-new-tokens", "4",
                         "--fault", "kv-position", "--teacher-forcing", "-q", "--out", str(tmp_path))
    assert code == 1 and read_report(tmp_path)["generation"]["first_divergent_step"] == 1
