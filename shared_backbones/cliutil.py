"""Helpers shared by every CLI: one-line errors, atomic outputs, progress bars, summaries.

CLIs stay thin: they parse arguments and call library functions inside :func:`run_cli`, which turns
:class:`~shared_backbones.errors.UserError` (and a few well-known exceptions) into a one-line message on
stderr with exit code 2 and no traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TypeVar

from .errors import OutputExistsError, UserError

T = TypeVar("T")

EXIT_USAGE = 2


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main(argv)`` and map user errors to ``<prog>: error: <message>`` with exit code 2."""
    prog = prog or Path(sys.argv[0]).name
    try:
        rc = main(argv)
        return int(rc or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except MemoryError:
        print(f"{prog}: error: out of memory (try a smaller --batch-size or tile/chunk size)", file=sys.stderr)
        return EXIT_USAGE


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; create its parent folder."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the file's extension(s) (``suffix`` overrides), so writers that pick the
    format from the name (nibabel, soundfile, rasterio) behave as for the final name.
    """
    path = check_output(path, overwrite)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", quiet: bool = False, **kwargs) -> "tqdm":  # noqa: F821
    """A tqdm bar with rate and ETA on stderr; disabled when ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=quiet, dynamic_ncols=True,
                leave=False, file=sys.stderr, **kwargs)


class StageTimer:
    """Collects wall-clock time per named stage: ``with timer("resample"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - start

    def summary(self) -> str:
        return ", ".join(f"{k} {v:.2f}s" for k, v in self.times.items())


def say(message: str, quiet: bool = False) -> None:
    """Print a summary line to stderr unless ``quiet``."""
    if not quiet:
        print(message, file=sys.stderr)


def add_run_options(parser: "argparse.ArgumentParser", *, device: bool = True, precision: bool = True,  # noqa: F821
                    overwrite: bool = True, quiet: bool = True) -> "argparse.ArgumentParser":  # noqa: F821
    """The options every model-running command shares: --device, --precision, --overwrite, --quiet."""
    from .precision import PRECISION_CHOICES

    if device:
        parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (default auto)")
    if precision:
        parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                            help="auto = bf16 on recent GPUs, fp16 on older ones, fp32 on CPU")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if quiet:
        parser.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    return parser
