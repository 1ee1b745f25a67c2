from __future__ import annotations

import sys

from parity.cli import main

sys.exit(main())
