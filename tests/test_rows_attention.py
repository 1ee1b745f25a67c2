"""Eager attention in blocks of query rows (parity.loading.rows_attention, and parity's own Qwen):
the same outputs as whole eager attention, on the reference and the twin, with scores that
never exist whole once they pass the block size."""
from __future__ import annotations

import pytest
import torch

from parity.loading import rows_attention as rows


def _hf(cls_name: str, cfg_name: str, **extra):
    import transformers

    cfg = getattr(transformers, cfg_name)(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                          **extra)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg).eval()


@pytest.mark.parametrize("cls_name,cfg_name", [("LlamaForCausalLM", "LlamaConfig"), ("Qwen2ForCausalLM", "Qwen2Config")])
def test_hf_row_blocks_equal_whole_eager(cls_name, cfg_name, monkeypatch):
    model = _hf(cls_name, cfg_name)
    ids = torch.randint(0, 97, (1, 150))
    with torch.no_grad():
        whole = model(input_ids=ids).logits
        assert rows.apply(model) and model.config._attn_implementation == rows.NAME
        calls = []
        eager = rows._family_eager(next(m for m in model.modules() if type(m).__name__.endswith("Attention")))
        monkeypatch.setattr(rows, "SCORE_ELEMENTS", 4 * 150 * 40)  # 40 query rows a block
        monkeypatch.setattr(rows, "_family_eager", lambda m: lambda *a, **k: calls.append(a[1].shape[2]) or eager(*a, **k))
        blocked = model(input_ids=ids).logits
    assert calls[:4] == [40, 40, 40, 30]  # the first layer's blocks: rows 0-39, 40-79, 80-119, 120-149
    assert torch.equal(blocked, whole)


def test_apply_leaves_other_attention_alone():
    model = _hf("LlamaForCausalLM", "LlamaConfig")
    model.set_attn_implementation("sdpa")
    assert not rows.apply(model) and model.config._attn_implementation == "sdpa"
    assert not rows.apply(torch.nn.Linear(2, 2))
    assert rows.public_name(rows.NAME) == "eager" and rows.public_name("sdpa") == "sdpa"


def test_reference_and_twin_use_row_blocks_and_report_eager():
    """ModelSource.build's eager reference and the precision twin get the row blocks; the
    report still says eager (it is eager attention); a candidate asking for eager gets it whole."""
    from parity.engines.torch.runner import ModuleBackend, make_candidate
    from parity.capture.probemap import find_map
    from parity.loading.source import ModelSource
    from parity.options import RunOptions
    from parity.run.twin import twin_model

    src = ModelSource.resolve("llama")
    ref = src.build("cpu")
    assert ref.config._attn_implementation == rows.NAME
    pmap = find_map(src.preset.probe_map)
    assert ModuleBackend(ref, pmap, ref.config, "reference", src.num_blocks).describe()["attn"] == "eager"
    twin, what = twin_model(ref, RunOptions(model="llama", dtype="fp16", twin_gguf=None), "cpu")
    assert what is None and twin.config._attn_implementation == rows.NAME
    cand = make_candidate(ref, pmap, src.config, src.num_blocks, dtype="fp16", device="cpu", attn="eager")
    assert cand.model.config._attn_implementation == "eager"


def test_qwen_row_blocks_equal_whole_eager(monkeypatch):
    from models.qwen import modeling

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, 3, 70, 8) for _ in range(3))
    whole = modeling.eager_attention(q, k, v)
    monkeypatch.setattr(modeling, "EAGER_SCORE_ELEMENTS", 3 * 70 * 16)  # 16 query rows a block
    seen = []
    inner = modeling._eager_rows
    monkeypatch.setattr(modeling, "_eager_rows", lambda q, *a: seen.append(q.shape[-2]) or inner(q, *a))
    blocked = modeling.eager_attention(q, k, v)
    assert seen == [16, 16, 16, 16, 6]
    assert torch.equal(blocked, whole)


def test_unused_packages_hidden_only_while_transformers_imports(tmp_path, monkeypatch):
    """A package transformers would import for what a forward never runs looks absent inside
    the context (transformers asks importlib.util.find_spec), imports as usual afterwards, and
    one already imported is left alone."""
    import importlib
    import importlib.util
    import sys

    from parity.loading import families

    (tmp_path / "parity_unused_pkg.py").write_text("VALUE = 7\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(families, "UNUSED_BY_A_FORWARD", ("parity_unused_pkg", "json"))
    with families.unused_packages_hidden():  # not parity's process: nothing hidden
        assert importlib.util.find_spec("parity_unused_pkg") is not None
    monkeypatch.setattr(families, "HIDE_UNUSED", True)  # as the parity command sets it
    with families.unused_packages_hidden():
        assert importlib.util.find_spec("parity_unused_pkg") is None
        with pytest.raises(ImportError):
            importlib.import_module("parity_unused_pkg")
        assert importlib.util.find_spec("json") is not None  # imported before: not hidden
    assert importlib.import_module("parity_unused_pkg").VALUE == 7
    sys.modules.pop("parity_unused_pkg", None)


def test_model_class_imports_when_a_hidden_package_is_needed_after_all():
    """Where hiding a package breaks transformers' modeling import (it found the package
    before, in a long-lived process, and imports it at module level), parity imports the
    model class with the package after all. In a fresh process: safetensors stands in for
    such a package (modeling_utils imports it unconditionally)."""
    import subprocess
    import sys

    code = ("import sys\nfrom parity.loading import families\nfrom parity.loading.source import ModelSource\n"
            "assert 'safetensors' not in sys.modules\nfamilies.UNUSED_BY_A_FORWARD = ('safetensors',)\n"
            "families.HIDE_UNUSED = True\n"
            "print(type(ModelSource.resolve('llama').build('cpu')).__name__, 'safetensors' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["LlamaForCausalLM", "True"]


def test_apply_leaves_models_without_the_attention_interface_alone(monkeypatch):
    """A modeling file that picks its attention itself (no ALL_ATTENTION_FUNCTIONS: older
    transformers classes, a user's family) keeps whole eager attention."""
    import sys

    model = _hf("LlamaForCausalLM", "LlamaConfig")
    where = sys.modules[type(model.model.layers[0].self_attn).__module__]
    monkeypatch.delattr(where, "ALL_ATTENTION_FUNCTIONS")
    assert not rows.apply(model) and model.config._attn_implementation == "eager"
