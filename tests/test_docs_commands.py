"""Every ``parity`` command shown in README.md and docs/ is exercised: parsed by parity's own
argument parser, and run (in a scratch folder per page) unless the page marks it parse-only.

The convention (docs/contributing/testing.md, "Commands in the docs are tests"):

- commands are lines starting with ``parity `` in ``sh`` blocks, or ``$ parity `` in
  ``console`` blocks (the lines after it are its sample output, checked against the real
  output with numbers masked); ``text``/``toml``/``python`` blocks hold no commands;
- ``<!-- docs-test: WORDS -->`` right before a block: ``parse`` (parse only), ``slow``,
  ``real`` (needs the fetched SmolLM2), ``needs=pkg,pkg``, ``exit=N``;
- a trailing ``# exit N`` on a command sets its own expected exit code;
- ``<!-- docs-file: NAME -->`` before a block writes the block to NAME (a relative path; its
  folders are made) in the page's folder.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^(`{3,})\s*([\w+-]*)\s*$")
ANNOTATION = re.compile(r"^<!--\s*docs-(test|file):\s*(.*?)\s*-->$")
EXIT_COMMENT = re.compile(r"#\s*exit\s+(\d+)\b")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")
WORDS = {"parse", "slow", "real"}
#: the user's cache (the fetched SmolLM2), read before the test session points PARITY_CACHE at a temp folder
USER_CACHE = os.environ.get("PARITY_CACHE")


@dataclass
class Command:
    argv: list[str]
    text: str
    exit: int
    expected_output: list[str] = field(default_factory=list)


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    info: str
    body: str
    test: dict[str, str] = field(default_factory=dict)  # annotation words -> value ("" for flags)
    file: str | None = None

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    def commands(self) -> list[Command]:
        default_exit = int(self.test.get("exit", "0"))
        lines = _join_continuations(self.body.splitlines())
        found: list[Command] = []
        if self.info == "sh":
            for ln in lines:
                if ln.startswith("parity "):
                    found.append(_command(ln, default_exit))
        elif self.info == "console":
            for ln in lines:
                if ln.startswith("$ "):
                    found.append(_command(ln[2:], default_exit)) if ln.startswith("$ parity ") else None
                elif found:
                    found[-1].expected_output.append(ln)
        return found


def _join_continuations(lines: list[str]) -> list[str]:
    out: list[str] = []
    for ln in lines:
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + ln.strip()
        else:
            out.append(ln)
    return out


def _command(text: str, default_exit: int) -> Command:
    m = EXIT_COMMENT.search(text)
    argv = shlex.split(text, comments=True)
    assert argv and argv[0] == "parity", text
    return Command(argv[1:], text.strip(), int(m.group(1)) if m else default_exit)


def _parse_annotation(text: str) -> dict[str, str]:
    words: dict[str, str] = {}
    for word in text.split():
        key, _, value = word.partition("=")
        if key not in WORDS | {"needs", "exit"}:
            raise AssertionError(f"unknown docs-test word '{word}' (known: {sorted(WORDS)}, needs=, exit=)")
        words[key] = value
    return words


def blocks(page: Path) -> list[Block]:
    found: list[Block] = []
    lines = page.read_text(encoding="utf-8").splitlines()
    i, pending_test, pending_file = 0, None, None
    while i < len(lines):
        line = lines[i]
        ann = ANNOTATION.match(line.strip())
        if ann:
            if ann.group(1) == "test":
                pending_test = _parse_annotation(ann.group(2))
            else:
                pending_file = ann.group(2)
            i += 1
            continue
        fence = FENCE.match(line)
        if fence:
            ticks, info, start = fence.group(1), fence.group(2), i
            i += 1
            body: list[str] = []
            while i < len(lines) and lines[i].rstrip() != ticks:
                body.append(lines[i])
                i += 1
            found.append(Block(page, start + 1, info, "\n".join(body) + "\n", pending_test or {}, pending_file))
            pending_test = pending_file = None
        elif line.strip():
            pending_test = pending_file = None  # an annotation applies to the very next block only
        i += 1
    return found


ALL_BLOCKS = [b for page in PAGES for b in blocks(page)]
COMMAND_BLOCKS = [b for b in ALL_BLOCKS if b.commands()]


def _run_params() -> list[object]:
    params = []
    for b in COMMAND_BLOCKS:
        if "parse" in b.test:
            continue
        marks = [pytest.mark.slow] if "slow" in b.test else []
        if "real" in b.test:
            marks.append(pytest.mark.real)
        params.append(pytest.param(b, id=b.id, marks=marks))
    return params


def test_the_docs_show_commands() -> None:
    """The collector finds what it should (a parser that found nothing would pass every test)."""
    assert len([c for b in COMMAND_BLOCKS for c in b.commands()]) >= 40
    readme = [b for b in COMMAND_BLOCKS if b.page.name == "README.md"]
    assert readme and readme[0].info == "console", "the README's first command block is a run with its real output"


def test_annotations_are_used_on_command_blocks() -> None:
    """A docs-test comment before a block without commands is a mistake (it tests nothing)."""
    stray = [b.id for b in ALL_BLOCKS if b.test and not b.commands()]
    assert not stray, f"docs-test annotations on blocks without parity commands: {stray}"


@pytest.mark.parametrize("block", COMMAND_BLOCKS, ids=lambda b: b.id)
def test_commands_parse(block: Block) -> None:
    from parity.cli import build_parser

    for cmd in block.commands():
        try:
            build_parser().parse_args(cmd.argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                pytest.fail(f"{block.id}: argparse refuses `{cmd.text}`")


_FOLDERS: dict[Path, Path] = {}


def _page_folder(page: Path, factory: pytest.TempPathFactory) -> Path:
    """One scratch folder per page, shared by its blocks in order, holding its docs-file blocks."""
    if page not in _FOLDERS:
        folder = factory.mktemp(re.sub(r"\W+", "_", str(page.relative_to(ROOT))))
        for b in blocks(page):
            if b.file:
                (folder / b.file).parent.mkdir(parents=True, exist_ok=True)
                (folder / b.file).write_text(b.body, encoding="utf-8")
        _FOLDERS[page] = folder
    return _FOLDERS[page]


def _masked(line: str) -> str:
    return " ".join(NUMBER.sub("N", line).split())


def check_sample_output(block: Block, cmd: Command, printed: str) -> None:
    """Each sample line appears in what the command printed, in order, numbers masked."""
    real = [_masked(ln) for ln in printed.splitlines()]
    pos = 0
    for want in cmd.expected_output:
        if want.strip() in ("", "..."):
            continue
        w = _masked(want)
        try:
            pos = real.index(w, pos) + 1
        except ValueError:
            pytest.fail(f"{block.id}: `{cmd.text}` did not print (numbers masked):\n  {want}\nit printed:\n{printed}")


def _skip_unless_ready(block: Block) -> None:
    for pkg in filter(None, block.test.get("needs", "").split(",")):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{block.id} needs {pkg}, which is not installed")
    if "real" in block.test:  # the caller has pointed PARITY_CACHE back at the user's cache
        from parity.loading import fetch

        if not (fetch.model_dir("smollm2") / "config.json").is_file():
            pytest.skip(f"{block.id} needs SmolLM2, which is not fetched: run `make model` (parity fetch smollm2)")


@pytest.mark.parametrize("block", _run_params())
def test_commands_run(block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    from parity.cli import main

    if "real" in block.test:
        if USER_CACHE:
            monkeypatch.setenv("PARITY_CACHE", USER_CACHE)
        else:
            monkeypatch.delenv("PARITY_CACHE", raising=False)
    _skip_unless_ready(block)
    monkeypatch.chdir(_page_folder(block.page, tmp_path_factory))
    monkeypatch.setenv("COLUMNS", "100")
    for cmd in block.commands():
        code = main(cmd.argv)
        out, err = capsys.readouterr()
        assert code == cmd.exit, f"{block.id}: `{cmd.text}` exited {code}, the page says {cmd.exit}\n{out}\n{err}"
        if cmd.expected_output:
            check_sample_output(block, cmd, err + out if err.startswith("[parity") else out + err)


def test_readme_pytest_example_is_the_guides() -> None:
    """The README's pytest snippet is part of the plugin page's example, which a test runs."""
    readme = [b for b in blocks(ROOT / "README.md") if b.info == "python"]
    guide = (ROOT / "docs" / "guide" / "pytest-plugin.md").read_text(encoding="utf-8")
    assert readme, "the README shows a pytest example"
    for b in readme:
        assert b.body.strip() in guide, f"{b.id} is not in docs/guide/pytest-plugin.md's example"


# -- code the pages point at ---------------------------------------------------------------
DOTTED = re.compile(r"(?<![\w./-])(parity(?:\.\w+)+)")
PATH = re.compile(r"(?<![\w/.-])((?:parity|models|probes|tests|benchmarks|docs)/[\w/.-]*\w)")
#: names the pages use that are not importable definitions: the fixture's method, data packages
NOT_DEFINITIONS = {"parity.assert_parity", "parity.probes", "parity.models"}


def _top_level_names(source: str) -> dict[str, set[str]]:
    """Module-level names, each with the names defined in its body (for classes)."""
    import ast

    names: dict[str, set[str]] = {}
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            inner = {n.name for n in getattr(node, "body", []) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
            names[node.name] = inner
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    names[t.id] = set()
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for a in node.names:
                names[(a.asname or a.name).split(".")[0]] = set()
    return names


def _resolves(dotted: str) -> bool:
    parts = dotted.split(".")
    for k in range(len(parts), 0, -1):
        try:
            spec = importlib.util.find_spec(".".join(parts[:k]))
        except (ImportError, ValueError):
            spec = None
        if spec is None:
            continue
        rest = parts[k:]
        if not rest:
            return True
        if not spec.origin or not spec.origin.endswith(".py"):
            return False
        source = Path(spec.origin).read_text(encoding="utf-8")
        names = _top_level_names(source)
        if rest[0] not in names:  # a lazy attribute the module's __getattr__ serves by name
            return "__getattr__" in names and any(f"{q}{rest[0]}{q}" in source for q in "\"'")
        return len(rest) == 1 or rest[1] in names[rest[0]] or not names[rest[0]]
    return False


def test_code_the_pages_name_exists() -> None:
    """Every ``parity.x.y`` and every repository path a page names exists: a renamed module or a
    moved file shows up here, with the page to update."""
    stale = []
    for page in PAGES:
        if page.name == "cli.md":
            continue  # generated from the parser
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for m in DOTTED.finditer(line):
                name = m.group(1)
                if name not in NOT_DEFINITIONS and not _resolves(name):
                    stale.append(f"{page.relative_to(ROOT)}:{n}: {name}")
            for m in PATH.finditer(line):
                path = m.group(1)
                if any(c in path for c in "<{*") or path.endswith("_"):
                    continue  # a pattern, not a file
                if not (ROOT / path).exists():
                    stale.append(f"{page.relative_to(ROOT)}:{n}: {path}")
    assert not stale, "pages name code that is not there:\n" + "\n".join(stale)
