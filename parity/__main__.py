from __future__ import annotations

from parity.cli import entry

entry()
