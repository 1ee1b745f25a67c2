"""The one exception family of parity.

Every error a user can cause derives from :class:`ParityError`. The CLI prints its
``message`` on one line, then ``Note: <note>`` when there is one, and exits 2.
"""
from __future__ import annotations


class ParityError(Exception):
    """Base class: a usage or input problem the user can fix."""

    def __init__(self, message: str, note: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.note = note

    def __str__(self) -> str:
        return self.message if not self.note else f"{self.message} Note: {self.note}"


class UsageError(ParityError):
    """A bad command-line option or argument value."""


class ModelError(ParityError):
    """An unknown model family, a bad preset or a config that does not fit."""


class CheckpointError(ParityError):
    """A checkpoint folder that is missing, incomplete or inconsistent."""


class ProbeError(ParityError):
    """Unknown probe names, filters matching nothing, shape mismatches."""


class BackendError(ParityError):
    """A backend that is unavailable or cannot run what was asked."""


class InputError(ParityError):
    """Prompt, token ids or tokenizer problems."""
