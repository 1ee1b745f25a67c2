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


@pytest.fixture(scope="session", autouse=True)
def _parity_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """ONNX exports are cached per test session (not in the user's ~/.cache/parity)."""
    import os

    if "PARITY_CACHE" not in os.environ:
        os.environ["PARITY_CACHE"] = str(tmp_path_factory.mktemp("parity-cache"))
