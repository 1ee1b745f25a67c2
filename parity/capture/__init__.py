"""Capture: the canonical probe names (probes), probe maps (probemap), hooks that take the
tensors (hooks), the captures and the sinks that fill them (sinks), and the ``parity.probe``
API for ports (api). Importing this package imports no torch."""
