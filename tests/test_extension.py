"""parity extended from outside, with no edit of parity: an engine registered by a
distribution in the ``parity.engines`` entry-point group (tests/data/toy_engine: a module and
its dist-info, put on sys.path as pip would install them), and a model family added as one
folder with ``--family-dir`` (tests/data/families/toymistral)."""
from __future__ import annotations

from pathlib import Path

import pytest

from conftest import read_report

DATA = Path(__file__).parent / "data"
FAMILIES = DATA / "families"


@pytest.fixture
def toy_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """The toy distribution installed: its module and dist-info (with the entry point) on sys.path."""
    monkeypatch.syspath_prepend(str(DATA / "toy_engine"))


def test_toy_engine_is_found_through_its_entry_point(toy_installed: None) -> None:
    from importlib.metadata import entry_points

    from parity import engines

    assert [ep.value for ep in entry_points(group=engines.GROUP) if ep.name == "toy"] == ["toy_engine:ENGINE"]
    assert "toy" in engines.names() and engines.info("toy").summary.startswith("a toy engine")


def test_toy_engine_runs(toy_installed: None, run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--candidate", "toy", "--model", "llama", "--tokens", "6", "-q", "--out", str(tmp_path))
    assert code == 0 and "PASSED" in out, out + err
    rep = read_report(tmp_path)
    assert rep["run"]["candidate"]["name"] == "toy" and rep["run"]["candidate"]["backend"] == "toy"


@pytest.mark.slow
def test_toy_engine_flag_reaches_it(toy_installed: None, run_cli, tmp_path: Path) -> None:
    """Its own flag (declared by the engine, no RunOptions field) changes what it runs: the
    final norm scaled is the first divergent probe."""
    code, out, err = run_cli("run", "--candidate", "toy", "--toy-scale", "3", "--model", "llama", "--tokens", "6", "-q",
                             "--out", str(tmp_path))
    assert code == 1, out + err
    assert read_report(tmp_path)["summary"]["message"].startswith("FAILED | final_norm |")


def test_toy_engine_check_runs_before_any_model(toy_installed: None, run_cli) -> None:
    code, out, err = run_cli("run", "--candidate", "toy", "--toy-scale", "-1", "-q", "--no-files")
    assert code == 2 and "--toy-scale -1.0: need a number > 0" in err


def test_doctor_lists_the_toy_engine(toy_installed: None, run_cli) -> None:
    code, out, _ = run_cli("doctor")
    assert code == 0 and "  toy " in out and "a toy engine from tests/data" in out


def test_builtins_need_no_installed_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    """A plain checkout on PYTHONPATH has no dist-info: the built-in table still names every engine."""
    from parity import engines

    monkeypatch.setattr(engines, "entry_points", lambda group: [])
    assert engines.names() == list(engines.BUILTIN)
    assert all(engines.info(n).name == n for n in engines.BUILTIN)


def test_builtin_table_matches_the_declared_entry_points() -> None:
    import tomllib

    from parity import engines

    root = Path(__file__).resolve().parents[1]
    declared = tomllib.loads((root / "pyproject.toml").read_text())["project"]["entry-points"][engines.GROUP]
    assert declared == engines.BUILTIN


def test_every_engine_folder_is_registered() -> None:
    from parity import engines

    root = Path(__file__).resolve().parents[1] / "parity" / "engines"
    folders = sorted(p.parent.name for p in root.glob("*/__init__.py"))
    assert folders == sorted(engines.BUILTIN)


def test_toy_family_from_its_folder(run_cli, tmp_path: Path) -> None:
    code, out, err = run_cli("run", "--family-dir", str(FAMILIES), "--model", "toymistral", "--tokens", "6", "-q",
                             "--out", str(tmp_path))
    assert code == 0 and "PASSED" in out, out + err
    rep = read_report(tmp_path)
    assert rep["run"]["model"] == "toymistral" and rep["run"]["num_blocks"] == 2
    assert rep["run"]["reference"]["backend"] == "reference"


def test_toy_family_probe_map_is_its_own(run_cli) -> None:
    code, out, err = run_cli("probes", "--family-dir", str(FAMILIES), "--model", "toymistral", "-p", "blocks.1.mlp_out")
    assert code == 0 and str(FAMILIES / "toymistral" / "probes.toml") in out and "model.layers.1.mlp" in out, out + err


def test_unknown_family_names_the_found_ones(run_cli) -> None:
    code, _, err = run_cli("run", "--family-dir", str(FAMILIES), "--model", "nope", "-q", "--no-files")
    assert code == 2 and "valid models: qwen, qwen2, llama, smollm2, toymistral" in err


def test_missing_family_dir_is_a_usage_error(run_cli, tmp_path: Path) -> None:
    code, _, err = run_cli("run", "--family-dir", str(tmp_path / "absent"), "-q", "--no-files")
    assert code == 2 and "--family-dir" in err


TOY_TEST = '''
def test_toy(parity):
    parity.assert_parity(candidate="toy", model="llama", tokens=4)
'''


@pytest.mark.slow
def test_pytest_plugin_offers_and_checks_an_outside_engine(toy_installed: None, pytester: pytest.Pytester) -> None:
    """The plugin takes the engine's flag as --parity-toy-scale, and runs its early check."""
    from test_pytest_plugin import run

    pytester.makepyfile(test_toy=TOY_TEST)
    bad = run(pytester, "--parity-toy-scale=-1")
    bad.assert_outcomes(failed=1)
    bad.stdout.fnmatch_lines(["*parity: --toy-scale -1.0: need a number > 0*"])
    run(pytester, "--parity-toy-scale=1").assert_outcomes(passed=1)
