"""No comment, docstring or page cites what a reader of the repository cannot open: an issue
number of the project's tracker ("issue 18"), a design document that is not in the
repository, or the engines' old folder name. Code says what it does, and points at docs/ or an
upstream ``file @ commit`` where it needs a source."""
from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCOPE = ("parity", "models", "tests", "benchmarks", "probes", "docs", ".ci", "README.md", "Makefile",
         "pyproject.toml", "mkdocs.yml")
SUFFIXES = {".py", ".toml", ".md", ".j2", ".yml", ".yaml", ".cfg", ".txt", ""}
STALE = [
    (re.compile(r"\bissues?\s*#?\s*\d+", re.I), "an issue number"),
    (re.compile(r"\bDESIGN\.md\b", re.I), "a design document outside the repository"),
    (re.compile(r"\bdesign notes\b", re.I), "a design document outside the repository"),
    (re.compile(r"\bparity[./]backends\b|(?<![\w/])backends/"), "the old engines folder (now parity/engines/)"),
]


def tracked_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "--", *SCOPE], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        files = [ROOT / line for line in out.splitlines()]
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked sdist)
        files = [p for s in SCOPE for p in ([ROOT / s] if (ROOT / s).is_file() else (ROOT / s).rglob("*"))]
    me = Path(__file__).resolve()
    return [p for p in files if p.is_file() and p.suffix in SUFFIXES and p.resolve() != me]


def test_the_scan_sees_the_sources() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in tracked_files()}
    assert {"parity/cli/__init__.py", "Makefile", "README.md", "tests/conftest.py"} <= names


def test_no_citation_of_issues_or_documents_outside_the_repository() -> None:
    found = []
    for path in tracked_files():
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for pattern, what in STALE:
                m = pattern.search(line)
                if m:
                    found.append(f"{path.relative_to(ROOT)}:{n}: '{m.group(0)}' ({what})")
    assert not found, "describe the behaviour instead of citing:\n" + "\n".join(found)
