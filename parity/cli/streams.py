"""stdout and stderr that survive their reader going away (``parity run ... | head -1``).

A closed pipe must never change a command's exit code: the verdict is what the exit code
says, whether or not anyone still reads the table. While a command runs, ``sys.stdout`` and
``sys.stderr`` are wrapped; a write or flush that meets a closed pipe points the stream's file
descriptor at the null device (what the Python documentation recommends for SIGPIPE, see
https://docs.python.org/3/library/signal.html#note-on-sigpipe) and the command carries on,
writing its report files and returning its verdict's code. The table library (rich) never
sees the BrokenPipeError, so its own handler (which raises SystemExit(1)) never runs.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from typing import Any, TextIO


class PipeSafe:
    """A text stream whose writes and flushes to a closed pipe go to the null device instead."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.broken = False

    def write(self, text: str) -> int:
        if not self.broken:
            try:
                return self._stream.write(text)
            except BrokenPipeError:
                self._reader_gone()
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        try:
            self._stream.flush()
        except BrokenPipeError:
            self._reader_gone()

    def _reader_gone(self) -> None:
        """The file descriptor now writes to the null device: what the stream still buffers
        (and the interpreter flushes at exit) goes nowhere instead of failing again."""
        self.broken = True
        with contextlib.suppress(OSError, ValueError, io.UnsupportedOperation):
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, self._stream.fileno())
            finally:
                os.close(devnull)
        with contextlib.suppress(OSError, ValueError):
            self._stream.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding... of the stream
        return getattr(self._stream, name)


@contextlib.contextmanager
def pipe_safe() -> Iterator[None]:
    """``sys.stdout`` and ``sys.stderr`` wrapped in PipeSafe while the block runs, flushed
    (through the wrappers) and restored after it."""
    saved = sys.stdout, sys.stderr
    sys.stdout = PipeSafe(saved[0]) if saved[0] is not None else saved[0]  # type: ignore[assignment]
    sys.stderr = PipeSafe(saved[1]) if saved[1] is not None else saved[1]  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.flush()
        sys.stdout, sys.stderr = saved
