"""Fuzzing every loader of user files (hypothesis): config.json, sharded checkpoint indexes,
probe and port maps, dump name maps, dump manifests, report JSON (loaded and rendered),
[tool.parity], generation configs, tokenizer files, token-id files, GGUF headers and metadata
(bytes overwritten, metadata and tensors changed), eval sets (JSONL) and chat templates.
Whatever the input, a loader returns or raises parity's own ParityError -- any other exception
is a bug.

Inputs are raw bytes and text, arbitrary JSON values, and valid documents mutated (a value
replaced by an arbitrary one, a key deleted or added, up to three times).

Two profiles per loader: ``quick`` (in ``make test``, a few dozen cases each) and ``ci``
(marked ``slow``, in ``make test-all``: 10,000+ cases over all loaders, a few minutes on two
cores). ``PARITY_FUZZ_EXAMPLES=N`` sets the ci profile's cases per loader for longer runs, e.g.
``PARITY_FUZZ_EXAMPLES=20000 pytest -m slow tests/test_fuzz_loaders.py``.
"""
from __future__ import annotations

import copy
import struct
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from parity.errors import ParityError

ROOT = Path(__file__).resolve().parents[1]
#: ci-profile cases per loader (weight 1); slower loaders get a share (weight < 1)
CI_EXAMPLES = int(os.environ.get("PARITY_FUZZ_EXAMPLES", "1000"))
QUICK_EXAMPLES = 25
COUNTS: dict[str, int] = {}

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
                           max_leaves=16)
texts = st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b.decode("latin-1"))


def _slots(doc: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON-like document."""
    out: list[tuple[Any, Any]] = []
    stack = [doc]
    while stack:
        c = stack.pop()
        keys = list(c) if isinstance(c, dict) else range(len(c)) if isinstance(c, list) else []
        for k in keys:
            out.append((c, k))
            if isinstance(c[k], (dict, list)):
                stack.append(c[k])
    return out


@st.composite
def mutated(draw: Any, doc: Any) -> Any:
    d = copy.deepcopy(doc)
    for _ in range(draw(st.integers(1, 3))):
        slots = _slots(d)
        if not slots:
            break
        container, key = draw(st.sampled_from(slots))
        op = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        if op == "replace":
            container[key] = draw(json_values | scalars)
        elif op == "delete":
            del container[key]
        elif isinstance(container, dict):
            container[draw(st.text(max_size=12))] = draw(json_values)
        else:
            container.append(draw(json_values))
    return d


def documents(valid: Any) -> Any:
    """A valid document mutated, or any JSON value."""
    return mutated(valid) | json_values


def fuzz(name: str, strategy: Any, weight: float = 1.0) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A test running ``check(value, tmp)`` on ``strategy``'s values in both profiles; any exception
    outside the ParityError family fails it."""

    def deco(check: Callable[..., Any]) -> Callable[..., Any]:
        @pytest.mark.parametrize("profile", ["quick", pytest.param("ci", marks=pytest.mark.slow)])
        def test(profile: str, tmp_path: Path) -> None:
            n = QUICK_EXAMPLES if profile == "quick" else max(1, int(CI_EXAMPLES * weight))
            count = 0

            @settings(max_examples=n, deadline=None, database=None, derandomize=profile == "quick",
                      suppress_health_check=list(HealthCheck))
            @given(strategy)
            def one(value: Any) -> None:
                nonlocal count
                count += 1
                try:
                    check(value, tmp_path)
                except ParityError:
                    pass

            t0 = time.perf_counter()
            one()
            COUNTS[f"{name}[{profile}]"] = count
            print(f"fuzz {name} [{profile}]: {count} cases in {time.perf_counter() - t0:.1f} s")

        test.__name__ = f"test_fuzz_{name}"
        return test

    return deco


def _write(tmp: Path, name: str, content: Any) -> Path:
    p = tmp / name
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    elif isinstance(content, str):
        p.write_text(content, encoding="utf-8", errors="surrogatepass")
    else:
        p.write_text(json.dumps(content, allow_nan=True))
    return p


def _valid_config() -> dict[str, Any]:
    from parity.loading.families import load_preset

    return {**load_preset("llama").config, "model_type": "llama"}


def _valid_report() -> dict[str, Any]:
    """A real report (tiny Qwen, the built-in port with silu-wrong-branch@1, 13 probes)."""
    return json.loads((ROOT / "tests" / "data" / "fuzz_report.json").read_text())


# -- config.json and checkpoint indexes -----------------------------------------------------------

@fuzz("config_json", documents(_valid_config()) | texts)
def test_fuzz_config_json(value: Any, tmp: Path) -> None:
    from parity.loading import checkpoint as ckpt
    from parity.loading import families
    from parity.loading.source import _checked

    _write(tmp, "ck/config.json", value)
    cfg = ckpt.read_config(tmp / "ck")
    family = families.family_for_model_type(cfg.get("model_type")) or "llama"
    families.get(family).make_config(_checked(family, cfg, "config.json"))


@fuzz("checkpoint_index", documents({"metadata": {"total_size": 1}, "weight_map": {"a.weight": "model-00001.safetensors",
                                                                                   "b.weight": "model-00002.safetensors"}})
      | texts, weight=0.5)
def test_fuzz_checkpoint_index(value: Any, tmp: Path) -> None:
    from parity.loading import checkpoint as ckpt

    _write(tmp, "ck/model.safetensors.index.json", value)
    for f in ckpt.weight_files(tmp / "ck"):
        assert f.resolve().is_relative_to((tmp / "ck").resolve())


# -- probe maps, port maps, dump name maps, dump manifests ------------------------------------------

def _valid_probe_map() -> dict[str, Any]:
    import tomllib

    return tomllib.loads((ROOT / "probes" / "engine_port.toml").read_text())


@fuzz("probe_map", documents(_valid_probe_map()))
def test_fuzz_probe_map(value: Any, tmp: Path) -> None:
    from parity.capture.probemap import map_from_dict

    pm = map_from_dict(value, "fuzz.toml", "fuzz")
    pm.names(2)
    pm.block_spec()
    for probe in pm.names(2):
        pm.bind(probe, type("Cfg", (), {"num_attention_heads": 2, "num_key_value_heads": 1})())


@fuzz("probe_map_text", texts, weight=0.5)
def test_fuzz_probe_map_text(value: Any, tmp: Path) -> None:
    from parity.capture.probemap import load_map

    load_map(_write(tmp, "map.toml", value))


_NAME_MAP = {"ignore": ["host_*"], "tensor": [{"pattern": r"layers\.(?P<i>\d+)\.mlp", "probe": "blocks.{i}.mlp_out",
                                               "offset": 0, "tp": "sum"}, {"pattern": "emb", "probe": "embed"}]}
_NAMES = st.sampled_from(["layers.3.mlp", "layers.x.mlp", "emb", "host_x", "logits", "blocks.1.attn_out", "other"]) | st.text(max_size=20)


@fuzz("dump_name_map", st.tuples(documents(_NAME_MAP), _NAMES))
def test_fuzz_dump_name_map(value: Any, tmp: Path) -> None:
    from parity.loading.dumps import name_map_from_dict

    doc, name = value
    name_map_from_dict(doc, "fuzz.toml").canonical(name)


@fuzz("dump_name_map_text", texts, weight=0.5)
def test_fuzz_dump_name_map_text(value: Any, tmp: Path) -> None:
    from parity.loading.dumps import load_name_map

    load_name_map(_write(tmp, "names.toml", value))


_MANIFEST = {"format": "parity-dump", "version": 1, "model": "qwen", "dtype": "float32", "input_ids": [1, 2, 3],
             "probes": {"embed": {"shape": [3, 128], "dtype": "float32"}, "logits": {"shape": [3, 151936], "dtype": "float32"}}}


@fuzz("dump_manifest", documents(_MANIFEST) | texts)
def test_fuzz_dump_manifest(value: Any, tmp: Path) -> None:
    from parity.loading.dumps import read_manifest

    _write(tmp, "dump/manifest.json", value)
    read_manifest(tmp / "dump")


# -- reports ------------------------------------------------------------------------------------------

@fuzz("report_json", documents(_valid_report()) | texts)
def test_fuzz_report_json(value: Any, tmp: Path) -> None:
    from parity.cli.report import load, rendering
    from parity.report import compare, console

    from rich.console import Console

    report = load(_write(tmp, "report.json", value))
    quiet = Console(file=open(os.devnull, "w"), width=100)  # noqa: SIM115
    try:
        with rendering("fuzz"):  # what parity report / parity diff do with a loaded report
            console.render(report, console=quiet)
            compare.render_console(compare.diff_reports(report, report), console=quiet)
    finally:
        quiet.file.close()


@fuzz("report_html", mutated(_valid_report()), weight=0.1)
def test_fuzz_report_html(value: Any, tmp: Path) -> None:
    from parity.cli.report import load, rendering
    from parity.report import compare, html

    report = load(_write(tmp, "report.json", value))
    with rendering("fuzz"):
        html.render(report)
        html.render_diff(compare.diff_reports(report, report))


# -- [tool.parity], generation configs ----------------------------------------------------------------

_TOOL = {"model": "qwen", "tokens": 8, "dtype": "fp16", "probes": ["blocks.*"],
         "tolerances": {"blocks.*.mlp_out": {"atol": 0.01, "rtol": 0.01}, "fp16": {"default": {"atol": 0.03, "rtol": 0.03}}}}


@fuzz("tool_parity", documents(_TOOL))
def test_fuzz_tool_parity(value: Any, tmp: Path) -> None:
    from parity.pytest_plugin import config

    if not isinstance(value, dict):
        value = {"x": value}
    config.parse(value)


@fuzz("tool_parity_text", st.tuples(st.sampled_from(["[tool.parity]\n", "[tool]\n", "tool = ", ""]), texts)
      | st.binary(max_size=200), weight=0.5)
def test_fuzz_tool_parity_text(value: Any, tmp: Path) -> None:
    from parity.pytest_plugin import config

    config.load(_write(tmp, "pyproject.toml", value if isinstance(value, bytes) else value[0] + value[1]))


_GEN = {"eos_token_id": [151643, 151645], "pad_token_id": 151643, "do_sample": True, "top_p": 0.8, "top_k": 0,
        "temperature": 0.7, "repetition_penalty": 1.1, "max_new_tokens": 512}


@fuzz("generation_config", documents(_GEN) | texts)
def test_fuzz_generation_config(value: Any, tmp: Path) -> None:
    from parity.loading import genconfig
    from parity.loading.chat import Vocab

    ref = genconfig.GenSettings("ref", dict(_GEN), [151643, 151645])
    cand = genconfig.candidate_settings(ref, str(_write(tmp, "gen.json", value)))
    genconfig.sampling_diff(ref.config, cand.config)
    genconfig.stop_set_diff(ref, cand, Vocab())


# -- tokenizer files, token-id files -------------------------------------------------------------------

@fuzz("tokenizer_json", documents({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []},
                                   "added_tokens": []}) | texts, weight=0.1)
def test_fuzz_tokenizer_json(value: Any, tmp: Path) -> None:
    from parity.loading.chat import vocab_for
    from parity.loading.inputs import load_tokenizer

    _write(tmp, "tok/tokenizer.json", value)
    tok = load_tokenizer("llama", None, str(tmp / "tok"))
    vocab_for({}, tok).text([0, 1, 5, 10**6])


_B64 = st.sampled_from(["YQ==", "Yg==", "IA==", "YWI=", "!!", ""])


@fuzz("qwen_tiktoken", st.lists(st.tuples(_B64 | st.text(max_size=6), st.integers(-2, 6) | st.text(max_size=3)), max_size=8)
      | texts, weight=0.25)
def test_fuzz_qwen_tiktoken(value: Any, tmp: Path) -> None:
    pytest.importorskip("tiktoken")
    from parity.loading.chat import vocab_for
    from parity.loading.inputs import load_tokenizer

    text = value if isinstance(value, str) else "".join(f"{t} {r}\n" for t, r in value)
    tok = load_tokenizer("qwen", None, str(_write(tmp, "qwen.tiktoken", text)))
    vocab_for({}, tok).text([0, 1, 3, 10**6])


_ID_ARRAYS = hnp.arrays(st.sampled_from([np.int32, np.int64, np.uint8, np.float32, np.float64, np.complex64, np.bool_]),
                        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4))


@fuzz("input_ids", st.one_of(st.tuples(st.just(".json"), documents([1, 2, 3]) | texts),
                             st.tuples(st.just(".txt"), texts),
                             st.tuples(st.just(".npy"), _ID_ARRAYS),
                             st.tuples(st.just(".npy"), st.binary(max_size=200))))
def test_fuzz_input_ids(value: Any, tmp: Path) -> None:
    from parity.loading.inputs import check_ids, read_ids

    suffix, content = value
    p = tmp / f"ids{suffix}"
    if isinstance(content, np.ndarray):
        np.save(p, content)
    else:
        _write(tmp, p.name, content)
    ids = read_ids(p)
    assert all(isinstance(t, int) for t in ids)
    check_ids(ids, 1000)


# -- GGUF headers and metadata ----------------------------------------------------------------------------

def _gguf_valid() -> bytes:
    from bad_inputs_more import gguf_bytes, model_spec

    return gguf_bytes(*model_spec())


_GGUF = _gguf_valid()


@st.composite
def _gguf_bytes_mutated(draw: Any) -> bytes:
    """The valid tiny GGUF with bytes overwritten (counts, lengths, types, dims...), cut or grown."""
    blob = bytearray(_GGUF)
    head = min(len(blob), 1400)  # the header: where a flipped byte means something
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, head - 1))
        chunk = draw(st.binary(min_size=1, max_size=8) | st.sampled_from([b"\xff" * 8, b"\x00" * 8, b"\x7f", b"\x80"]))
        blob[at:at + len(chunk)] = chunk
    if draw(st.booleans()):
        del blob[draw(st.integers(0, len(blob))):]
    return bytes(blob)


@st.composite
def _gguf_spec_mutated(draw: Any) -> bytes:
    """The valid tiny GGUF's metadata and tensors changed: a value of another type or size, a
    tensor dropped, renamed or reshaped."""
    from bad_inputs_more import F32, I32, STR, U32, U64, gguf_bytes, model_spec

    kv, t = model_spec(draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["value", "drop-key", "drop-tensor", "rename", "reshape", "add"]))
        if op == "value":
            key = draw(st.sampled_from(sorted(kv)))
            kv[key] = draw(st.tuples(st.just(U32), st.integers(0, 2**32 - 1)) | st.tuples(st.just(I32), st.integers(-2**31, 2**31 - 1))
                           | st.tuples(st.just(U64), st.integers(0, 2**64 - 1)) | st.tuples(st.just(F32), st.floats(width=32))
                           | st.tuples(st.just(STR), st.text(max_size=8)))
        elif op == "drop-key" and kv:
            kv.pop(draw(st.sampled_from(sorted(kv))))
        elif op == "drop-tensor" and t:
            t.pop(draw(st.sampled_from(sorted(t))))
        elif op == "rename" and t:
            old = draw(st.sampled_from(sorted(t)))
            t[draw(st.text(max_size=20) | st.sampled_from(["../x", "blk.9.attn_q.weight", "blk.0", "output.weight"]))] = t.pop(old)
        elif op == "reshape" and t:
            t[draw(st.sampled_from(sorted(t)))] = draw(st.lists(st.integers(0, 80), min_size=0, max_size=5))
        else:
            t[draw(st.text(max_size=12))] = draw(st.lists(st.integers(1, 64), min_size=1, max_size=2))
    try:
        return gguf_bytes(kv, t)
    except (struct.error, OverflowError, UnicodeEncodeError):
        return _GGUF[:100]


@fuzz("gguf_header", _gguf_bytes_mutated() | _gguf_spec_mutated() | st.binary(max_size=300).map(lambda b: b"GGUF" + b))
def test_fuzz_gguf_header(value: Any, tmp: Path) -> None:
    """A GGUF header: read with bounded counts, then held against its tensors (within 2 s each)."""
    from parity.loading.gguf_header import check_model, read_header

    t0 = time.perf_counter()
    try:
        head = read_header(_write(tmp, "m.gguf", value))
        arch = head.fields.get("general.architecture")
        check_model(head, arch if isinstance(arch, str) else "llama")
    finally:
        assert time.perf_counter() - t0 < 2.0


# -- eval sets (JSONL) --------------------------------------------------------------------------------------

_LINE = {"prompt": "hello", "target": "hi", "article": "a", "highlights": "b"}


@fuzz("eval_jsonl", st.lists(documents(_LINE).map(lambda d: json.dumps(d, allow_nan=True)) | texts, max_size=5)
      .map("\n".join) | texts | st.binary(max_size=300))
def test_fuzz_eval_jsonl(value: Any, tmp: Path) -> None:
    from parity.run.evaluate import load_items

    items, _ = load_items(_write(tmp, "d.jsonl", value))
    assert all(isinstance(it.text, str) and it.text.strip() for it in items)


# -- chat templates -----------------------------------------------------------------------------------------

_FRAGMENTS = ["{% for m in messages %}", "{% endfor %}", "{{ m.content }}", "{{ m['role'] }}", "{% if add_generation_prompt %}",
              "{% endif %}", "{% else %}", "{{ raise_exception('bad') }}", "{{ messages[0]['content'] }}", "{{ messages[9] }}",
              "{{ ''.__class__ }}", "{{ ''.__class__.__mro__[1].__subclasses__() }}", "{{ range(5)|list }}", "{{ 'a' * 3 }}",
              "{{ messages|tojson }}", "{% set x = 1 %}", "{{ x }}", "{{ bos_token }}", "{{ 1/0 }}", "{%", "}}", "{{", "%}",
              "{# c #}", "{{ m.content|upper }}", "{% macro f(n) %}{{ f(n) }}{% endmacro %}", "{{ f(1) }}", "{{ nope() }}",
              "{{ messages.append(1) }}", "{{ cycler }}", "{{ self }}", "{{ lipsum(2) }}", "<s>", "</s>", "hello ", "\n"]


@fuzz("chat_template", st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=10), max_size=8).map("".join), weight=0.25)
def test_fuzz_chat_template(value: Any, tmp: Path) -> None:
    """The tokenizer's chat template run by wrap_prompt: any template, only parity's errors."""
    from parity.loading import chat

    tok = _chat_tokenizer()
    tok.chat_template = value
    old, chat.TEMPLATE_SECONDS = chat.TEMPLATE_SECONDS, 1.0
    try:
        ids, _ = chat.wrap_prompt("llama2", chat.vocab_for({}, tok), prompt="hello world", ids=None)
    finally:
        chat.TEMPLATE_SECONDS = old
    assert all(isinstance(i, int) for i in ids)


_TOKENIZER: list[Any] = []


def _chat_tokenizer() -> Any:
    if not _TOKENIZER:
        from tokenizers import Tokenizer, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        from bad_inputs_more import WORDS

        raw = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
        raw.pre_tokenizer = pre_tokenizers.Whitespace()
        _TOKENIZER.append(PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>"))
    return _TOKENIZER[0]
