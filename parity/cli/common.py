"""What the commands share: exit codes, progress lines, run ids."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from datetime import datetime
from collections.abc import Callable, Sequence
from typing import Any

from parity.engines.checks import check_options, check_tolerances

EXIT_OK, EXIT_DIVERGED, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3
__all__ = ["check_options", "check_tolerances"]  # where the commands and the pytest plugin share them


class StageProgress:
    """A command's progress, stage by stage (``progress("building reference")`` starts one;
    ``progress.update(text)`` refreshes the current one, e.g. a decode step).

    On a terminal: a live spinner line (rich) for the running stage with its elapsed time,
    replaced by a line with its duration when the next one starts. Elsewhere (CI logs, pipes):
    one timestamped line per stage, no updates. Nothing at all with -q (progress() is None)."""

    def __init__(self, live: bool | None = None) -> None:
        self.t0 = self.started = time.perf_counter()
        self.live = sys.stderr.isatty() if live is None else live
        self.current: str | None = None
        self._status: Any = None
        from parity.report.term import make_console

        self.console = make_console(stderr=True)

    def __call__(self, what: str) -> None:
        now = time.perf_counter()
        if not self.live:  # wrapped at the console's width, continuation lines under the text
            from parity.report.term import prose

            prose(self.console, f"{what} ...", lead=f"[parity {now - self.t0:6.2f}s] ")
            self.console.file.flush()
            return
        self._done(now)
        self.current, self.started = what, now
        self._status = self.console.status(f"{what} ...", spinner="dots")
        self._status.start()

    def update(self, text: str) -> None:
        if self.live and self._status is not None:
            self._status.update(f"{self.current}: {text}")

    def _done(self, now: float) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
            from parity.report.term import prose

            prose(self.console, f"{self.current} ({now - self.started:.1f} s)", style="dim")

    def close(self) -> None:
        """End the running stage (before the command prints its results)."""
        if self.live:
            self._done(time.perf_counter())


def say(text: str, lead: str = "") -> None:
    """A line of a command's output on stdout, wrapped between words at the console's width
    (continuation lines indented under the text after ``lead``)."""
    from parity.report.term import make_console, prose

    prose(make_console(), text, lead=lead)


def progress(quiet: bool) -> StageProgress | None:
    return None if quiet else StageProgress()


def done(progress: StageProgress | None) -> None:
    if progress is not None:
        progress.close()


def produce(ns: argparse.Namespace, out: Path, make: Callable[[StageProgress | None], Any], render: Callable[[Any], None],
            write: Callable[[Any, Path], dict[str, Path]], write_html: Callable[[Any, Path], Any]) -> Any:
    """What `parity eval`, `generate` and `quant-sweep` share: inside the command's Outputs
    (nothing half-written if anything fails), ``make(progress)`` the result, render it, write
    its files (each path ``write`` returns) and the --html file, then say where they went."""
    from parity.outputs import Outputs

    html = getattr(ns, "html", None)
    with Outputs(None if ns.no_files else out, [("--html", html)]) as outputs:
        prog = progress(ns.quiet)
        try:
            result = make(prog)
        finally:
            done(prog)
        render(result)
        lines = []
        if not ns.no_files:
            paths = write(result, outputs.dir)
            lines.append("Reports: " + "  ".join(str(outputs.final(path)) for path in paths.values()))
        if html:
            write_html(result, outputs.file(html))
            lines.append(f"HTML report: {html}")
        outputs.commit()
    for line in lines:
        say(line)
    return result


def run_id(ns: argparse.Namespace) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    model = getattr(ns, "model", None) or infer_model(getattr(ns, "checkpoint", None))
    return f"{stamp}-{model}-{ns.candidate}-{ns.dtype}"


def add_groups(parser: argparse.ArgumentParser, keys: tuple[str, ...]) -> None:
    """Option groups on ``parser``; with "candidate", every engine's own group too."""
    from parity import engines
    from parity.options import ENGINE_DESTS, add_group

    dests: list[str] = []
    for key in keys:
        add_group(parser, key, _model_help() if key == "model" else None)
        if key != "candidate":
            continue
        for eng in engines.all_engines():
            if eng.flags:
                group = parser.add_argument_group(f"engine: {eng.name}")
                for o in eng.flags:
                    group.add_argument(*o.flags, **o.kwargs)
                    dests.append(o.dest)
    if dests:
        parser.set_defaults(**{ENGINE_DESTS: dests})


def _model_help() -> dict[str, str]:
    """--model's help names the families found (parity's and $PARITY_MODEL_PATH's)."""
    from parity.loading import families

    return {"model": "model family: " + ", ".join(families.names()) + "; --family-dir adds your own "
                     "(default: the checkpoint's model_type, else qwen)"}


def with_model(opts: Any, ns: argparse.Namespace) -> Any:
    """``opts`` with the family inferred from the checkpoint when --model was not given."""
    import dataclasses

    if getattr(ns, "model", None) is not None:
        return opts
    return dataclasses.replace(opts, model=infer_model(getattr(ns, "checkpoint", None), getattr(ns, "family_dirs", ())))


def infer_model(checkpoint: str | None, family_dirs: Sequence[str] = ()) -> str:
    """The family of ``checkpoint`` (config.json's or a GGUF file's model_type), else "qwen"."""
    if not checkpoint:
        return "qwen"
    import json

    from parity.loading import families

    path, mt = Path(checkpoint), None
    try:
        if (path / "config.json").is_file():
            mt = json.loads((path / "config.json").read_text()).get("model_type")
        elif path.is_file() and path.suffix == ".gguf":
            from parity.loading import gguf

            mt = gguf.read_info(path).model_type
    except Exception:  # noqa: BLE001 - unreadable: loading says why, with the default family
        mt = None
    return families.family_for_model_type(mt, family_dirs) or "qwen"
