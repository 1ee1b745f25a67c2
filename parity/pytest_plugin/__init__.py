"""pytest plugin: ``parity`` fixture, ``@pytest.mark.parity`` marker, ``--parity-*`` options.

Registered through ``[project.entry-points.pytest11]``. Importing this module imports no
torch and no engine; the reference model is built on first use and cached for the session
(one per model / input / reference device).

Option precedence, lowest first: RunOptions defaults, ``[tool.parity]`` in pyproject.toml,
``--parity-*`` command-line options, the ``parity`` marker, ``assert_parity(...)`` keywords.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from parity.pytest_plugin import config as pytest_config
from parity.errors import ParityError, UsageError
from parity.options import GROUPS, RunOptions

PLUGIN_GROUPS = ("model", "input", "candidate", "compare")
_STATE = pytest.StashKey["ParityState"]()


@dataclass
class Outcome:
    nodeid: str
    passed: bool
    message: str
    html: Path | None = None


@dataclass
class ParityState:
    config: pytest_config.ParityConfig
    cli: dict[str, Any]
    html_dir: Path | None
    outcomes: list[Outcome] = field(default_factory=list)


def plugin_flag(flag: str) -> str:
    return "--parity-" + flag.lstrip("-")


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "parity: layer-by-layer numerical parity")
    for key in PLUGIN_GROUPS:
        for opt in GROUPS[key][1]:
            kwargs = {k: v for k, v in opt.kwargs.items() if k != "default"}
            kwargs["dest"] = "parity_" + opt.dest
            kwargs["default"] = False if kwargs.get("action") == "store_true" else None
            group.addoption(*[plugin_flag(f) for f in opt.flags if f.startswith("--")], **kwargs)
    group.addoption("--parity-html", metavar="DIR", default=None, help="write an HTML report per failing parity test into DIR")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "parity(model=..., candidate=..., dtype=..., tolerances=..., **run_options): "
                                       "options for the parity fixture's assert_parity()")
    path = pytest_config.find_pyproject(Path(config.rootpath), Path(config.inipath) if config.inipath else None)
    try:
        cfg = pytest_config.load(path)
    except ParityError as exc:
        raise pytest.UsageError(f"parity: {exc} ({path})") from None
    cli = {}
    for key in PLUGIN_GROUPS:
        for opt in GROUPS[key][1]:
            val = config.getoption("parity_" + opt.dest, default=None)
            if val not in (None, False):
                cli[opt.dest] = val
    html = config.getoption("parity_html", default=None)
    config.stash[_STATE] = ParityState(cfg, cli, Path(html) if html else None)


def resolve(state: ParityState, marker: dict[str, Any], call: dict[str, Any]) -> tuple[RunOptions, list[tuple[str, dict[str, Any]]]]:
    """RunOptions and the user tolerance layers for one assert_parity call."""
    values: dict[str, Any] = {}
    for where, layer in (("[tool.parity]", state.config.options), ("command line", state.cli),
                         ("@pytest.mark.parity", marker), ("assert_parity()", call)):
        for k, v in layer.items():
            if k in ("tolerances", "candidate"):
                continue
            values[k] = pytest_config.check_option(k, v, where) if where != "command line" else v
    opts = RunOptions(**{k: v for k, v in values.items() if v is not None})
    dtype = pytest_config.DTYPE_KEYS.get(opts.dtype, opts.dtype)
    layers = [("[tool.parity.tolerances]", state.config.tolerances),
              (f"[tool.parity.tolerances.{dtype}]", state.config.per_dtype.get(dtype, {}))]
    for where, src in (("@pytest.mark.parity(tolerances=)", marker), ("assert_parity(tolerances=)", call)):
        if src.get("tolerances"):
            layers.append((where, dict(src["tolerances"])))
    return opts, layers


class ReferenceCache:
    """Reference captures for this session, keyed by what determines them."""

    KEY_FIELDS = ("model", "checkpoint", "shape", "activations", "seed", "trust_remote_code", "probe_dirs", "probes", "tokens",
                  "prompt", "input_ids", "tokenizer", "device", "ref_device")

    def __init__(self) -> None:
        self.entries: dict[tuple[Any, ...], Any] = {}
        self.builds = 0

    def key(self, opts: RunOptions) -> tuple[Any, ...]:
        return tuple(tuple(v) if isinstance(v, list) else v for v in (getattr(opts, f) for f in self.KEY_FIELDS))

    def get(self, opts: RunOptions) -> Any:
        k = self.key(opts)
        if k not in self.entries:
            from parity.run.reference import prepare_reference

            self.entries[k] = prepare_reference(opts)
            self.builds += 1
        return self.entries[k]


class Parity:
    """What the ``parity`` fixture gives a test."""

    def __init__(self, request: pytest.FixtureRequest, cache: ReferenceCache, state: ParityState) -> None:
        self.request, self.cache, self.state = request, cache, state
        marker = request.node.get_closest_marker("parity")
        self.marker: dict[str, Any] = dict(marker.kwargs) if marker else {}
        self.calls = 0

    def run(self, candidate: Any = None, tolerances: dict[str, Any] | None = None, **options: Any) -> Any:
        """Compare a candidate against the (cached) reference; returns the ReportData."""
        from parity.run.candidate import compare_candidate
        from parity.compare.tolerances import ToleranceTable

        call = {**options, "tolerances": tolerances}
        opts, layers = resolve(self.state, self.marker, call)
        cand = candidate if candidate is not None else self.marker.get("candidate", self.state.cli.get("candidate", self.state.config.options.get("candidate", "torch")))
        create = None
        if callable(cand):
            create, cand = cand, getattr(cand, "__name__", "custom")
        if not isinstance(cand, str):
            raise UsageError(f"candidate must be a registered name or a callable, not {type(cand).__name__}.")
        opts = replace(opts, candidate=cand)
        ref = self.cache.get(opts)
        tols = None
        if any(layer for _, layer in layers):  # explicit tables: an absolute verdict (see parity.verdict.calibrate)
            base: ToleranceTable = ref.source.preset.tolerance_table(opts.dtype)
            names = ref.probe_map.names(ref.source.num_blocks)
            tols = pytest_config.stack(base, layers, names).override(opts.atol, opts.rtol)
        return compare_candidate(ref, opts, tolerances=tols, create=create).report

    def assert_parity(self, candidate: Any = None, tolerances: dict[str, Any] | None = None, **options: Any) -> Any:
        """Fail the test, explaining where and how, unless every probe passes: within the
        budget of the precision twin (calibrated, the default), or within the tolerance
        tables when any are given (absolute)."""
        __tracebackhide__ = True
        from parity.report.failure import explain

        error = None
        try:
            report = self.run(candidate, tolerances, **options)
        except ParityError as exc:
            error = f"parity: {exc}"
        if error is not None:
            pytest.fail(error, pytrace=False)
        self.calls += 1
        passed = report.summary.get("verdict") == "pass"
        outcome = Outcome(self.request.node.nodeid, passed, report.summary.get("message", ""))
        self.state.outcomes.append(outcome)
        if passed:
            return report
        text = explain(report)
        if self.state.html_dir is not None:
            from parity.report import html

            stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", self.request.node.nodeid).strip("_")
            outcome.html = html.write(report, self.state.html_dir / f"{stem}{'' if self.calls == 1 else f'-{self.calls}'}.html")
            text += f"\n  HTML report: {outcome.html}"
        raise AssertionError(text)


@pytest.fixture(scope="session")
def parity_reference_cache() -> ReferenceCache:
    """Reference captures shared by every test of the session."""
    return ReferenceCache()


@pytest.fixture
def parity(request: pytest.FixtureRequest, parity_reference_cache: ReferenceCache) -> Parity:
    """``parity.assert_parity(candidate=..., tolerances=..., **run_options)``."""
    return Parity(request, parity_reference_cache, request.config.stash[_STATE])


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    state = config.stash.get(_STATE, None)
    if state is None or not state.outcomes:
        return
    tr = terminalreporter
    tr.write_sep("=", "parity results")
    for o in state.outcomes:
        tr.write_line(f"{'PASS' if o.passed else 'FAIL'} {o.nodeid}: {o.message}", green=o.passed, red=not o.passed)
        if o.html:
            tr.write_line(f"     HTML report: {o.html}")
