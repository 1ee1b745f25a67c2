"""The pytest plugin, driven by pytester: the documented examples, failures, tolerance globs, bad config."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

# In-process pytester runs restore sys.modules when each test ends, and torch cannot be
# imported twice in one process: load the heavy modules before any pytester fixture exists.
import parity.engines.torch.runner  # noqa: F401, E402
import parity.run  # noqa: F401, E402
import torch  # noqa: F401, E402
import transformers  # noqa: F401, E402

ROOT = Path(__file__).resolve().parents[1]


GUIDE = ROOT / "docs" / "guide" / "pytest-plugin.md"


def readme_example(name: str) -> str:
    """The fenced block after ``<!-- example: NAME -->`` in the plugin's guide page (so they cannot drift)."""
    text = GUIDE.read_text(encoding="utf-8")
    m = re.search(rf"<!-- example: {re.escape(name)} -->\s*```\w*\n(.*?)```", text, re.S)
    assert m, f"{GUIDE.name} has no example {name}"
    return m.group(1)


def plugin_args() -> list[str]:
    """Load the plugin explicitly unless the installed entry point already does."""
    eps = metadata.entry_points(group="pytest11")
    return [] if any(ep.value == "parity.pytest_plugin" for ep in eps) else ["-p", "parity.pytest_plugin"]


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    return pytester.runpytest_inprocess(*plugin_args(), "-p", "no:cacheprovider", *args)


def test_readme_example_passes(pytester: pytest.Pytester) -> None:
    """The documented pyproject.toml keeps the calibrated verdict; only the call with tolerances= is absolute."""
    pytester.makepyprojecttoml(readme_example("pyproject.toml"))
    pytester.makepyfile(test_port_parity=readme_example("test_port_parity.py"))
    result = run(pytester)
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*parity results*", "PASS *test_fp16_matches_reference*PASSED | * probes within x4 of the precision twin*",
                                 "PASS *test_bf16_with_own_mlp_tolerance*PASSED | * probes within tolerance*"])


def test_documented_absolute_example_is_absolute(pytester: pytest.Pytester) -> None:
    """The fixed-tolerance example says what it does: every test judged by atol/rtol."""
    text = readme_example("pyproject-absolute.toml")
    assert 'tolerance = "absolute"' in text
    pytester.makepyprojecttoml(text)
    pytester.makepyfile(test_port_parity=readme_example("test_port_parity.py"))
    result = run(pytester, "-k", "fp16 or fp32")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["PASS *test_fp16_matches_reference*PASSED | * probes within tolerance*"])


FAILING = '''
import pytest

def broken_port(ctx):
    import torch
    from parity.engines.torch import runner as pytorch
    backend = pytorch.create(ctx)
    with torch.no_grad():
        backend.model.get_submodule("transformer.h.2.mlp.w1").weight.mul_(1.5)
    return backend

@pytest.mark.parity(model="qwen", candidate=broken_port, tokens=8, device="cpu", tolerance="absolute")
def test_broken(parity):
    parity.assert_parity()

@pytest.mark.parity(model="qwen", tokens=8, device="cpu")
def test_pattern_beyond_the_model(parity):
    parity.assert_parity(tolerances={"blocks.9.mlp_out": {"atol": 1.0}})
'''


def test_failure_names_probe_tolerance_and_writes_html(pytester: pytest.Pytester, tmp_path: Path) -> None:
    pytester.makepyfile(test_failing=FAILING)
    html_dir = tmp_path / "html"
    result = run(pytester, "--parity-html", str(html_dir))
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    assert "FAILED | blocks.2.mlp_out | max_abs=" in out and "> atol=0.02 rtol=0.02" in out
    assert "first divergent probe: blocks.2.mlp_out (block 2, mlp; step)" in out
    assert "vs tolerance atol 0.02 + rtol 0.02*|ref|" in out
    assert "neighbouring probes:" in out and re.search(r">\s+blocks\.2\.mlp_out\s+fail", out)
    assert "blocks.2.mlp_in" in out and "blocks.2.resid_post" in out
    assert "pattern 'blocks.9.mlp_out' matches no probe of this model" in out
    assert "During handling" not in out
    assert "Traceback" not in out and "parity/run/" not in out
    pages = list(html_dir.glob("*.html"))
    assert len(pages) == 1 and "test_broken" in pages[0].name
    assert "FAIL test_failing.py::test_broken" in out


CALIBRATED = '''
import pytest

def broken_port(ctx):
    import torch
    from parity.engines.torch import runner as pytorch
    backend = pytorch.create(ctx)
    with torch.no_grad():
        backend.model.get_submodule("transformer.h.2.mlp.w1").weight.mul_(1.5)
    return backend

@pytest.mark.parity(model="qwen", candidate=broken_port, tokens=8, device="cpu")
def test_broken(parity):
    parity.assert_parity()

@pytest.mark.parity(model="qwen", tokens=8, device="cpu", candidate="port")
def test_clean_port_in_bf16(parity):
    report = parity.assert_parity(dtype="bf16")
    assert report.run["verdict"]["mode"] == "calibrated" and report.row("logits").excess <= 4
'''


def test_default_verdict_is_calibrated(pytester: pytest.Pytester) -> None:
    """No tolerance table anywhere: the fixture judges against the precision twin."""
    pytester.makepyfile(test_cal=CALIBRATED)
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    out = result.stdout.str()
    assert re.search(r"FAILED \| blocks\.2\.mlp_out \| excess x\d+ > budget x4 \(nrmse", out)
    assert "first divergent probe: blocks.2.mlp_out (block 2, mlp; step)" in out
    assert "atol" not in out.split("test_broken")[-1].split("PASS")[0]


GLOBS = '''
import pytest

@pytest.mark.parity(model="qwen")
def test_tables(parity):
    rep = parity.assert_parity(candidate="torch", tolerances={"blocks.3.*": {"atol": 0.04, "rtol": 0.04}})
    tol = {r.name: r.atol for r in rep.probes}
    assert tol["blocks.0.mlp_out"] == 0.011   # [tool.parity.tolerances] glob
    assert tol["blocks.3.mlp_out"] == 0.05    # exact name beats both globs
    assert tol["blocks.3.attn_out"] == 0.04   # assert_parity(tolerances=) glob
    assert tol["blocks.0.attn_out"] == 0.03   # [tool.parity.tolerances.fp16] default
    assert tol["logits"] == 0.05              # the preset's fp16 rule
    assert rep.run["tokens"] == 4             # --parity-tokens

def test_fp32_uses_preset_table(parity):
    rep = parity.assert_parity(candidate="torch", dtype="fp32")
    assert rep.row("blocks.0.attn_out").atol == 1e-4 and rep.row("blocks.0.mlp_out").atol == 0.011
    assert parity.cache.builds == 1           # one reference for both tests
'''


def test_tolerance_globs_most_specific_first(pytester: pytest.Pytester) -> None:
    pytester.makepyprojecttoml(readme_example("pyproject-absolute.toml"))
    pytester.makepyfile(test_globs=GLOBS)
    result = run(pytester, "--parity-tokens", "4")
    result.assert_outcomes(passed=2)


@pytest.mark.parametrize(("table", "needle"), [
    ('[tool.parity.tolerances]\n"logits" = {atol = "big"}\n', "[tool.parity.tolerances].logits.atol = 'big' is not a non-negative number"),
    ('[tool.parity.tolerances]\n"logits" = {atl = 1e-3}\n', "[tool.parity.tolerances].logits has unknown key 'atl'"),
    ('[tool.parity.tolerances.fp16]\n"blocks.*.mlp_output" = {atol = 1e-3}\n', "[tool.parity.tolerances.fp16] pattern 'blocks.*.mlp_output' matches no probe name"),
    ('[tool.parity]\ndtipe = "fp16"\n', "[tool.parity] has unknown key 'dtipe'"),
])
def test_malformed_config_is_a_usage_error(pytester: pytest.Pytester, table: str, needle: str) -> None:
    pytester.makepyprojecttoml(table)
    pytester.makepyfile(test_x="def test_x(parity):\n    pass\n")
    result = run(pytester)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert needle in err, err
    assert "Traceback" not in err + result.stdout.str()


def test_plugin_import_does_not_import_torch() -> None:
    code = ("import sys, parity.pytest_plugin, parity.pytest_plugin.config\n"
            "heavy = [m for m in ('torch', 'transformers', 'numpy', 'onnxruntime', 'tensorrt') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_options_are_shared_with_the_cli(pytester: pytest.Pytester) -> None:
    from parity.options import GROUPS
    from parity.pytest_plugin import PLUGIN_GROUPS

    result = run(pytester, "--help")
    text = result.stdout.str()
    for key in PLUGIN_GROUPS:
        for opt in GROUPS[key][1]:
            assert "--parity-" + opt.flags[0].lstrip("-") in text
    assert "--parity-html" in text
