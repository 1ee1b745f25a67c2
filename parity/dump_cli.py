"""`parity dump` and `parity compare` (dumps of probe tensors)."""
from __future__ import annotations

import argparse
from typing import Any


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    pass
