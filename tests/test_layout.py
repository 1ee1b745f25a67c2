"""The layout: subpackages per concept with arrows pointing down only, no import cycles, short
modules, and the top-level models/ and probes/ found the same way from a wheel, an editable
install and a plain checkout -- never importable as top-level modules of their own."""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Lower layers first: a module may import its own package and the packages before it, never
# one after it. "base" is parity's top-level modules (errors, options, resources, __init__).
LAYERS = ["base", "compare", "capture", "report", "models", "loading", "verdict", "faults", "engines", "run",
          "cli", "pytest_plugin"]
MAX_LINES = 500
#: the package's own entry points, which reach up on purpose: ``parity.probe`` (re-exported
#: lazily from the capture API) and ``python -m parity`` (the CLI)
ENTRY_POINTS = {("parity", "parity.capture.api"), ("parity.__main__", "parity.cli")}


def modules() -> dict[str, Path]:
    """Every module of parity (models/ as parity.models) -> its file."""
    found = {}
    for top, pkg in ((ROOT / "parity", "parity"), (ROOT / "models", "parity.models")):
        for path in top.rglob("*.py"):
            rel = path.relative_to(top).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            found[".".join([pkg, *parts])] = path
    return found


def imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> parity modules it imports, at the top or inside functions alike."""
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("parity"):
                for alias in node.names:
                    sub = f"{node.module}.{alias.name}"
                    graph[name].add(sub if sub in mods else node.module)
            elif isinstance(node, ast.Import):
                graph[name].update(a.name for a in node.names if a.name.startswith("parity"))
        graph[name].discard(name)
    return graph


def layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in LAYERS) else "base"


def test_no_module_imports_one_that_imports_it_back() -> None:
    graph = imports(modules())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in list(graph):
        if v not in index:
            visit(v)
    assert not cycles, cycles


def test_arrows_point_down_only() -> None:
    graph = imports(modules())
    rank = {name: i for i, name in enumerate(LAYERS)}
    upward = sorted(f"{a} -> {b}" for a, deps in graph.items() for b in deps
                    if rank[layer(b)] > rank[layer(a)] and (a, b) not in ENTRY_POINTS)
    assert not upward, upward


def test_modules_are_short_or_say_why() -> None:
    long = []
    for name, path in modules().items():
        text = path.read_text()
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and "Long:" not in doc:
            long.append(f"{name} ({len(text.splitlines())} lines)")
    assert not long, long


def test_every_package_is_listed_for_the_wheel() -> None:
    import runpy

    listed = set(runpy.run_path(str(ROOT / "setup.py"), run_name="layout_check")["packages"]())
    packages = {n for n, p in modules().items() if p.name == "__init__.py"} | {"parity.models", "parity.probes",
                                                                                 "parity.report.templates", "parity.models.data"}
    assert listed == packages


def _site_packages() -> str:
    """This interpreter's package folders (torch, transformers...), without the checkout."""
    dirs = [p for p in sys.path if p.rstrip(os.sep).endswith(("site-packages", "dist-packages"))]
    return os.pathsep.join(dirs or [sysconfig.get_paths()["purelib"]])


def _run(pythonpath: list[str], *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """Python without site processing (no .pth, so no editable install) on ``pythonpath``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = os.pathsep.join(pythonpath)
    return subprocess.run([sys.executable, "-S", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


CHECK = ("import importlib.util, sys, parity, parity.models.qwen, parity.models.engine\n"
         "from parity.resources import shipped_dir\n"
         "from parity.loading.families import load_preset\n"
         "print(parity.__file__); print(parity.models.qwen.__file__)\n"
         "assert (shipped_dir('probes') / 'qwen.toml').is_file() and load_preset('smollm2').fetched == 'smollm2'\n"
         "for name in ('models', 'probes'):\n"
         "    spec = importlib.util.find_spec(name)\n"
         "    assert spec is None or spec.origin is None, (name, spec)  # at most an empty namespace\n")


#: what the wheel build printed (setuptools' warnings among it)
BUILD_LOG: list[str] = []


@pytest.fixture(scope="module")
def wheel_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel `pip wheel .` builds, unpacked (what `pip install` puts in site-packages)."""
    out = tmp_path_factory.mktemp("wheel")
    had_build = (ROOT / "build").exists()
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(out),
                        str(ROOT)], check=True, capture_output=True, text=True)
    BUILD_LOG.append(r.stdout + r.stderr)
    if not had_build:  # setuptools builds in the source tree without isolation
        shutil.rmtree(ROOT / "build", ignore_errors=True)
    (whl,) = out.glob("parity_debugger-*.whl")
    site = out / "site"
    with zipfile.ZipFile(whl) as zf:
        zf.extractall(site)
    return site


def test_wheel_ships_models_and_probes_inside_the_package(wheel_site: Path) -> None:
    assert (wheel_site / "parity" / "models" / "qwen" / "modeling.py").is_file()
    assert (wheel_site / "parity" / "models" / "llama" / "preset.toml").is_file()
    assert (wheel_site / "parity" / "probes" / "engine_port.toml").is_file()
    assert (wheel_site / "parity" / "report" / "templates" / "report.html.j2").is_file()
    assert not (wheel_site / "models").exists() and not (wheel_site / "probes").exists()
    assert (wheel_site / "parity" / "models" / "data" / "summarize.jsonl").is_file()


def test_wheel_builds_without_setuptools_warnings(wheel_site: Path) -> None:
    """Every folder Python could import is listed (data folders as namespace packages): the
    build prints none of setuptools' 'Package would be ignored' warnings."""
    log = "".join(BUILD_LOG)
    assert "Building wheel" in log
    assert "absent from the `packages` configuration" not in log and "Warning:" not in log, log[-3000:]


@pytest.mark.slow  # several seconds of model builds/exports: make test-all
def test_wheel_runs_from_elsewhere(wheel_site: Path, tmp_path: Path) -> None:
    r = _run([str(wheel_site), _site_packages()], "-c", CHECK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0].startswith(str(wheel_site))
    assert r.stdout.splitlines()[1].startswith(str(wheel_site / "parity" / "models"))
    r = _run([str(wheel_site), _site_packages()], "-m", "parity", "run", "--model", "llama", "--candidate", "port",
             "--tokens", "4", "--no-files", "-q", cwd=tmp_path)
    assert r.returncode == 0 and "PASSED" in r.stdout, r.stdout + r.stderr


def test_plain_checkout_on_pythonpath(tmp_path: Path) -> None:
    """How the GPU machine runs parity: a copy of the repository and PYTHONPATH=."""
    r = _run([str(ROOT), _site_packages()], "-c", CHECK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(str(ROOT / "models"))
    r = _run([str(ROOT), _site_packages()], "-m", "parity", "probes", "--model", "qwen", "-p", "blocks.0.attn_out",
             cwd=tmp_path)
    assert r.returncode == 0 and "transformer.h.0.attn" in r.stdout, r.stderr


def test_leftover_caches_of_the_old_layout_do_not_hide_the_source_tree(tmp_path: Path) -> None:
    """A checkout updated from the layout before keeps ignored parity/models/*/__pycache__."""
    tree = tmp_path / "tree"
    shutil.copytree(ROOT / "parity", tree / "parity", ignore=shutil.ignore_patterns("__pycache__"))
    for kind in ("models", "probes"):
        shutil.copytree(ROOT / kind, tree / kind, ignore=shutil.ignore_patterns("__pycache__"))
        (tree / "parity" / kind / "qwen" / "__pycache__").mkdir(parents=True)
    r = _run([str(tree), _site_packages()], "-c", CHECK, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[1].startswith(str(tree / "models"))


def test_editable_install_finds_the_top_level_folders(tmp_path: Path) -> None:
    """The dev venv is `pip install -e .`: run with its site processing, from elsewhere."""
    code = "import parity, parity.models.qwen; from parity.resources import shipped_dir; print(shipped_dir('models'))"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip() == str(ROOT / "models"), r.stderr


# -- the engine contract --------------------------------------------------------------------------

def _engine_modules() -> dict[str, Path]:
    return {n: p for n, p in modules().items() if n.startswith("parity.engines.")}


def _annotation(arg: ast.arg) -> str:
    return ast.unparse(arg.annotation) if arg.annotation is not None else ""


def loose_factories(text: str) -> list[str]:
    """Functions ``create`` not taking an EngineContext, ``prepare`` not taking RunOptions,
    and parameters ``ctx`` that are not an EngineContext (Any or no annotation included)."""
    loose = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.FunctionDef) or not node.args.args:
            continue
        first = node.args.args[0]
        want = {"create": "EngineContext", "prepare": "RunOptions"}.get(node.name)
        if want and _annotation(first) != want:
            loose.append(f"{node.name}({first.arg}: {_annotation(first) or '-'})")
        loose += [f"{node.name}(ctx: {_annotation(a) or '-'})" for a in node.args.args
                  if a.arg == "ctx" and _annotation(a) != "EngineContext"]
    return loose


def _options_expr(node: ast.expr) -> bool:
    """``opts``, ``options``, ``o`` (the engines' names for the run options) or ``<x>.options``."""
    return (isinstance(node, ast.Name) and node.id in ("opts", "options", "o")) or \
        (isinstance(node, ast.Attribute) and node.attr == "options")


def option_writes(text: str) -> list[str]:
    """Writes into the run options: a field assigned, augmented or deleted, setattr on them,
    or their vars() written."""
    writes = []
    for node in ast.walk(ast.parse(text)):
        targets: list[ast.expr] = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        elif isinstance(node, ast.Delete):
            targets = node.targets
        elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("setattr", "object.__setattr__") and node.args:
            targets = [ast.Attribute(value=node.args[0], attr="?")]
        for t in targets:
            if isinstance(t, ast.Attribute) and _options_expr(t.value):
                writes.append(f"{node.lineno}: {ast.unparse(t)}")
            elif isinstance(t, ast.Subscript) and isinstance(t.value, ast.Call) and ast.unparse(t.value.func) == "vars" \
                    and t.value.args and _options_expr(t.value.args[0]):
                writes.append(f"{node.lineno}: {ast.unparse(t)}")
    return writes


def test_engine_factories_are_typed() -> None:
    """Every engine's ``create`` takes an EngineContext and ``prepare`` RunOptions (never Any or
    nothing), and every parameter called ``ctx`` in an engine is an EngineContext."""
    loose = [f"{n}.{f}" for n, p in _engine_modules().items() for f in loose_factories(p.read_text())]
    assert not loose, loose


def test_engines_never_assign_to_the_run_options() -> None:
    """What an engine derives it returns (``prepare`` -> new RunOptions); it never writes into
    the options it is given."""
    writes = [f"{n}:{w}" for n, p in _engine_modules().items() for w in option_writes(p.read_text())]
    assert not writes, writes


def test_engine_context_and_declarations_are_frozen() -> None:
    import dataclasses

    from parity.engines.contract import Engine, EngineContext

    for cls in (Engine, EngineContext):
        assert cls.__dataclass_params__.frozen, cls  # type: ignore[attr-defined]
    ctx = EngineContext(None, None, None, None, "cpu")  # type: ignore[arg-type]
    with pytest.raises(dataclasses.FrozenInstanceError):
        ctx.options = None  # type: ignore[misc]


def test_layout_checks_catch_what_they_forbid() -> None:
    """The two checks above find an Any-typed factory and every kind of write to the options."""
    bad = ("from typing import Any\n"
           "def create(ctx: Any):\n    ctx.options.dtype = 'fp32'\n"
           "def prepare(opts, progress=None):\n    opts.gguf = 'x'\n    setattr(opts, 'dtype', 'fp16')\n"
           "    o.tokens += 1\n    vars(options)['seed'] = 1\n")
    assert sorted(loose_factories(bad)) == ["create(ctx: Any)", "create(ctx: Any)", "prepare(opts: -)"]
    assert len(option_writes(bad)) == 5
    good = "def prepare(opts: RunOptions, progress=None):\n    return dataclasses.replace(opts, gguf='x')\n"
    assert loose_factories(good) == [] and option_writes(good) == []
