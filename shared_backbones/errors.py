"""Error types that CLIs turn into one-line messages with exit code 2."""

from __future__ import annotations

from pathlib import Path


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """An exception's message for a one-line error: its first line (cut at ``limit`` characters), or its type's name
    when it has no message."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if limit is None else line[:limit]


class UserError(Exception):
    """A problem with the user's input (file, option, model file); shown as one line, exit code 2."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


class InputError(UserError):
    """An input file or option that cannot be used."""


class ModelFileError(UserError):
    """A model file that is unreadable, truncated, foreign or of the wrong task."""


class RankFailedError(RuntimeError):
    """Another process of a distributed run (a DDP rank) ended with an error. ``run_cli`` prints
    ``<prog>: error: training process of rank N failed (exit code C)`` and exits with 1."""

    def __init__(self, rank: int, code: int) -> None:
        self.rank, self.code = int(rank), int(code)
        super().__init__(f"training process of rank {self.rank} failed (exit code {self.code})")


class OutputExistsError(UserError):
    """An output file exists and --overwrite was not given."""

    def __init__(self, path: str | Path) -> None:
        super().__init__("output exists (use --overwrite to replace it)", path)
