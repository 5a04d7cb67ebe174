"""The command-line contract shared by ``medseg``, ``medseg phases``, ``audiosep``, ``remote`` and ``pipelines``.

One module, as rasterio's ``rio`` keeps its shared options in one place. Every command builds its parser with
:func:`make_parser` / :func:`add_command` (``--version``, defaults shown, two or three real examples at the end of
``--help``) and takes its common options from :func:`add_common`:

``-m/--model`` (repeatable where ensembles make sense), ``-o/--output`` (a file or a folder, chosen by the input),
``--device cpu|cuda[:N]|mps|auto``, ``--devices``, ``--precision``, ``-q/--quiet``, ``--overwrite``, ``--seed``,
``--resume``, ``--fold K|all``. Old spellings (``--out-dir``, ``--accelerator``, ``--all-folds``) keep working for
one release and print a deprecation line.

Output safety is checked once for everyone before any work (:func:`prepare_outputs`): the output's folder can be
created and written, an existing output needs ``--overwrite``, an output is never one of the inputs. Files are written
under a temporary name and renamed when complete (:func:`atomic_output`) with the usual permissions (0644 under the
default umask). :func:`run_batch` goes on past a bad input and lists the failures at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

from .errors import InputError, OutputExistsError, RankFailedError, UserError, first_line
from .options import DEVICE_CHOICES, Number, parse_device, parse_devices, seed_int

T = TypeVar("T")

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_RANK_FAILED = 1
#: out of memory (torch's allocator, MemoryError): the machine's limit, not the user's input
EXIT_OUT_OF_MEMORY = 1


# ------------------------------------------------------------------------------------------------ running
def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None,
            prog: str | None = None) -> int:
    """Run ``main(argv)`` and map user errors to ``<prog>: error: <message>`` with exit code 2.

    Ctrl-C prints ``<prog>: interrupted`` and returns 130; a failed process of a distributed run
    (:class:`RankFailedError`) is one line with exit code 1. Out of memory (Python's :class:`MemoryError`, torch's
    ``DefaultCPUAllocator: can't allocate memory`` RuntimeError, ``torch.OutOfMemoryError`` on a GPU) is one line,
    ``<prog>: error: out of memory while running <prog> <command>: <first line>; try ...``, with exit code 1
    (:data:`EXIT_OUT_OF_MEMORY`: the machine's limit, not bad input).
    """
    prog = prog or Path(sys.argv[0]).name
    allow_ctrl_c()
    try:
        rc = main(argv)
        return int(rc or 0)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RankFailedError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_RANK_FAILED
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        words = [a for a in (sys.argv[1:] if argv is None else argv) if not str(a).startswith("-")][:1]
        what = " ".join([prog, *map(str, words)])
        print(f"{prog}: error: out of memory while running {what}: {first_line(exc, 300)}; try a smaller "
              "--batch-size, window/tile or chunk size, fewer outputs, or a machine with more memory",
              file=sys.stderr)
        return EXIT_OUT_OF_MEMORY


def is_out_of_memory(exc: BaseException) -> bool:
    """True for Python's :class:`MemoryError` and torch's allocator failures (``torch.OutOfMemoryError``, a
    RuntimeError saying ``DefaultCPUAllocator: can't allocate memory`` or ``CUDA out of memory``); checked by name
    and message, so torch is not imported here."""
    if isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError":
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("can't allocate memory" in text or "out of memory" in text)


def allow_ctrl_c() -> None:
    """Make Ctrl-C (SIGINT) raise :class:`KeyboardInterrupt` even when the parent started us with it ignored (a
    command started as a background job of a script inherits SIGINT ignored)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def run_batch(items: Sequence[T], work: Callable[[T], Any], *, prog: str, quiet: bool = False,
              name: Callable[[T], str] = str) -> int:
    """Call ``work(item)`` for every item; a :class:`UserError` on one item is reported and the batch goes on.

    Returns 0 when every item succeeded, else prints ``<prog>: N of M inputs failed:`` and one line per failure
    on stderr and returns 2. A single item fails exactly as an unbatched command would (the error propagates).
    """
    if len(items) == 1:
        work(items[0])
        return 0
    failures: list[tuple[str, str]] = []
    for item in items:
        try:
            work(item)
        except UserError as exc:
            failures.append((name(item), str(exc)))
            print(f"{prog}: error: {exc} (continuing with the next input)", file=sys.stderr)
    if failures:
        print(f"{prog}: {len(failures)} of {len(items)} inputs failed:", file=sys.stderr)
        for item_name, message in failures:  # a message that starts with the item's path is not prefixed again
            line = message if message.startswith(f"{item_name}: ") else f"{item_name}: {message}"
            print(f"  {line}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def say(message: str, quiet: bool = False) -> None:
    """Print a summary line to stderr unless ``quiet``."""
    if not quiet:
        print(message, file=sys.stderr)


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", quiet: bool = False, **kwargs: Any) -> Any:
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


# ------------------------------------------------------------------------------------------------ outputs
def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _nearest_existing(path: Path) -> Path:
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_folder(folder: str | Path) -> Path:
    """Fail early, in one line, when ``folder`` cannot be created or written (nothing is created here)."""
    folder = Path(folder).absolute()
    base = _nearest_existing(folder)
    if not base.is_dir():
        raise InputError("cannot create the output folder: a parent path is a file", base)
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=base)
    except OSError as exc:
        raise InputError(f"output folder is not writable ({exc.strerror or exc})", base) from None
    os.close(fd)
    os.unlink(probe)
    return folder


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def prepare_outputs(outputs: Iterable[str | Path], inputs: Iterable[str | Path] = (), *,
                    overwrite: bool = False, folders: Iterable[str | Path] = ()) -> list[Path]:
    """Check every output before any work: not an input, absent unless ``overwrite``, its folder writable.

    ``outputs`` are files, ``folders`` are output folders (which may exist). Returns the output file paths.
    """
    ins = [Path(p) for p in inputs]
    in_resolved = {p.resolve() for p in ins}
    outs = [Path(p) for p in outputs]
    for out in outs:
        if out.resolve() in in_resolved or any(_same_file(out, i) for i in ins):
            raise InputError("the output is one of the inputs (choose another -o/--output)", out)
        if out.is_dir():
            raise InputError("output is a folder, expected a file name", out)
        if out.exists() and not overwrite:
            raise OutputExistsError(out)
        check_writable_folder(out.parent)
    for folder in map(Path, folders):
        if folder.exists() and not folder.is_dir():
            raise InputError("output must be a folder", folder)
        check_writable_folder(folder)
    return outs


def check_output(path: str | Path, overwrite: bool) -> Path:
    """Refuse an existing output unless ``overwrite``; check and create its parent folder."""
    path = Path(path)
    if path.is_dir():
        raise InputError("output is a folder, expected a file name", path)
    if path.exists() and not overwrite:
        raise OutputExistsError(path)
    check_writable_folder(path.parent)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create the output folder ({exc.strerror or exc})", path.parent) from None
    return path


def make_readable(path: str | Path, folder: bool = False) -> None:
    """Give a finished output the permissions a normal write would (0644 / 0755 under umask 022)."""
    os.chmod(path, (0o777 if folder else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_output(path: str | Path, overwrite: bool = False, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary name keeps the file's extension(s) (``suffix`` overrides), so writers that pick the
    format from the name (nibabel, soundfile, rasterio) behave as for the final name. The finished file gets
    the permissions of a normal write (not the 0600 of a temporary file).
    """
    path = check_output(path, overwrite)
    if suffix is None:
        suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            make_readable(tmp_path, folder=tmp_path.is_dir())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


# ------------------------------------------------------------------------------------------------ parsers
def package_version() -> str:
    """The installed convsuite version (the source tree's when not installed)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("convsuite")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        from . import __version__

        return __version__


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults shown after each option's help; descriptions and examples keep their line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "%(default)" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def make_parser(prog: str, description: str, examples: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The top-level parser of a command: description, ``--version``, the suite's help formatter."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=HelpFormatter,
                                     epilog=_examples(examples))
    parser.add_argument("--version", action="version", version=f"%(prog)s (convsuite) {package_version()}",
                        help="print the convsuite version and exit")
    return parser


def _examples(examples: Sequence[str]) -> str | None:
    return "examples:\n" + "\n".join(f"  {e}" for e in examples) if examples else None


def add_command(subparsers: Any, name: str, *, help: str, examples: Sequence[str],
                description: str | None = None, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` shows defaults and ends with the given real examples (two or three)."""
    parser = subparsers.add_parser(name, help=help, description=description or help, aliases=list(aliases),
                                   formatter_class=HelpFormatter, epilog=_examples(examples))
    parser.add_argument("--version", action="version", version=f"%(prog)s (convsuite) {package_version()}",
                        help="print the convsuite version and exit")
    return parser


class _Deprecated(argparse.Action):
    """An old spelling: prints a deprecation line, then stores into the new option's destination."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", const_value: Any = None,
                 **kwargs: Any) -> None:
        self.new = new
        self.const_value = const_value
        if const_value is not None:
            kwargs["nargs"] = 0
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated and will be removed in the next release; "
              f"use {self.new}", file=sys.stderr)
        value = self.const_value if self.const_value is not None else values
        if isinstance(getattr(namespace, self.dest, None), list) and not isinstance(value, list):
            getattr(namespace, self.dest).append(value)
        else:
            setattr(namespace, self.dest, value)


def add_deprecated(parser: argparse.ArgumentParser, old: str, new: str, dest: str, *,
                   const: Any = None, **kwargs: Any) -> None:
    """Keep ``old`` working for one release: it sets ``dest`` (to ``const`` for a flag) and says to use ``new``.

    ``kwargs`` (``type=``, ``nargs=``) read the old spelling's values as the new option reads them; without them it
    takes the new option's ``type`` and ``nargs`` when the parser already has ``new``."""
    new_action = parser._option_string_actions.get(new.split("/")[-1].split()[0])
    if new_action is not None and const is None:
        kwargs.setdefault("type", new_action.type)
        if new_action.nargs is not None:
            kwargs.setdefault("nargs", new_action.nargs)
    parser.add_argument(old, dest=dest, action=_Deprecated, new=new, const_value=const, help=argparse.SUPPRESS,
                        default=argparse.SUPPRESS, **kwargs)


def parse_fold(text: str) -> int | str:
    """``--fold`` values: a fold number (0 .. 9999), or ``all`` for every fold."""
    if text == "all":
        return "all"
    try:
        return _FOLD(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected a fold number (0 .. 9999) or 'all', got {text!r}") from None


_FOLD = Number(int, min=0, max=9999)
#: argparse type: a whole number >= 1 (thread and worker counts)
parse_positive_int = Number(int, min=1, max=4096)
#: argparse type for ``--threads``: a whole number >= 1, or ``auto`` (timed per machine)
parse_threads = Number(int, min=1, max=4096, special={"auto": "auto"})


def add_common(parser: argparse.ArgumentParser, *, model: str | None = None, model_help: str = "",
               output: str | None = None, output_required: bool = False, device: bool = True,
               devices: bool = False, precision: bool = True, overwrite: bool = True, quiet: bool = True,
               seed: bool = False, resume: bool = False, fold: bool = False, fold_default: int | str = 0,
               old_spellings: bool = True) -> argparse.ArgumentParser:
    """Add the contract's options to a subcommand; each is optional so commands take only what applies.

    - ``model``: ``"one"`` (``-m/--model``, required) or ``"many"`` (repeatable: an ensemble).
    - ``output``: help text for ``-o/--output`` (``None`` = no such option); ``--out-dir`` is its old spelling.
    - ``device``: ``--device``; ``--accelerator`` is its old spelling. ``devices``: ``--devices`` for training.
    - ``fold``: ``--fold K|all``; ``--all-folds`` is its old spelling.
    """
    from .precision import PRECISION_CHOICES

    if model == "one":
        parser.add_argument("-m", "--model", required=True, help=model_help or "model file (.pt)")
    elif model == "many":
        parser.add_argument("-m", "--model", action="append", required=True,
                            help=model_help or "model file (.pt); repeat to ensemble (probabilities averaged)")
    if output is not None:
        parser.add_argument("-o", "--output", required=output_required, help=output)
        if old_spellings:
            add_deprecated(parser, "--out-dir", "-o/--output", "output")
    if device:
        parser.add_argument("--device", default="auto", type=parse_device,
                            help="where to run: auto (cuda, then mps, then cpu) | cpu | cuda | cuda:N | mps")
        if old_spellings:
            add_deprecated(parser, "--accelerator", "--device", "device")
    if devices:
        parser.add_argument("--devices", default="auto", type=parse_devices,
                            help="devices per node: a count (DDP when > 1), a list such as 0,1, or auto")
    if precision:
        parser.add_argument("--precision", default="auto", choices=PRECISION_CHOICES,
                            help="auto = bf16 on recent GPUs, fp16 on older ones, fp32 on CPU")
    if seed:
        parser.add_argument("--seed", type=seed_int, default=0, help="random seed, set before the model is built")
    if resume:
        parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="CKPT",
                            help="continue training from a Lightning checkpoint (no value: the work folder's "
                                 "last.ckpt)")
    if fold:
        parser.add_argument("--fold", type=parse_fold, default=fold_default,
                            help="validation fold number, or 'all' to train every fold and print the table")
        if old_spellings:
            add_deprecated(parser, "--all-folds", "--fold all", "fold", const="all")
    if overwrite:
        parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    if quiet:
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summaries")
    return parser


def lightning_device(device: str = "auto", devices: int | str = "auto") -> dict[str, Any]:
    """Map the contract's ``--device``/``--devices`` to Lightning's ``accelerator`` and ``devices`` (one place).

    A device this machine cannot run (``cuda`` without a GPU, ``mps`` off Apple silicon) is refused here, in one
    line, before Lightning starts."""
    from .precision import check_device_available

    base, _, index = str(device).partition(":")
    accelerator = {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu", "mps": "mps"}.get(base)
    if accelerator is None:
        raise InputError(f"unknown device {device!r} (choose from {', '.join(DEVICE_CHOICES)}, cuda:N)")
    check_device_available(str(device).replace("gpu", "cuda"))
    if index:
        return {"accelerator": accelerator, "devices": [int(index)]}
    if accelerator in ("cpu", "mps") and devices == "auto":
        return {"accelerator": accelerator, "devices": 1}
    return {"accelerator": accelerator, "devices": devices}


def iter_subparsers(parser: argparse.ArgumentParser,
                    path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every (command path, parser) below ``parser``, itself included: for tests that check the contract."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen: set[int] = set()
            for name, sub in action.choices.items():
                if id(sub) in seen:
                    continue
                seen.add(id(sub))
                yield from iter_subparsers(sub, (*path, name))
