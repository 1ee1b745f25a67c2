from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    from parity.cli import main

    def go(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return go


def read_report(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "report.json").read_text())
