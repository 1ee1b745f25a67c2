"""The ``port`` engine: a PyTorch port (``--port FILE.py:factory``, or the family's built-in
engine-style port, the target of ``--fault``)."""
from __future__ import annotations

from pathlib import Path

from parity.engines.contract import Engine, runner_create
from parity.errors import UsageError
from parity.options import Opt, RunOptions


def check(opts: RunOptions) -> None:
    """--port and --port-map need --candidate port; the port file exists; the map is valid."""
    if opts.candidate != "port":
        for flag, value in (("--port", opts.port), ("--port-map", opts.port_map)):
            if value:
                raise UsageError(f"{flag} needs --candidate port.", note="e.g. parity run --candidate port --port my_port.py:build")
    if opts.port_map and not Path(opts.port_map).exists():
        raise UsageError(f"--port-map {opts.port_map}: no such file.", note="check the path")
    if opts.port:
        path, sep, name = opts.port.rpartition(":")
        file = Path(path if sep and name.isidentifier() else opts.port)
        if not file.is_file():
            raise UsageError(f"port file '{file}' does not exist.", note="--port path/to/file.py:factory")
    if opts.port_map:
        from parity.capture.probemap import load_map

        load_map(Path(opts.port_map))


ENGINE = Engine(
    name="port",
    summary="a PyTorch port (--port FILE.py:factory, or the family's built-in engine-style port with --fault)",
    requires=("torch",),
    create=runner_create("parity.engines.port.runner"),
    check=check,
    flags=(
        Opt(("--port",), {"metavar": "FILE.py:FACTORY", "help": "with --candidate port: your port, factory(config, state_dict) -> nn.Module (default: the family's built-in port)"}),
        Opt(("--port-map",), {"metavar": "FILE.toml", "help": "probe map of your port (module paths -> canonical names); parity.probe() calls need none"}),
    ),
)
