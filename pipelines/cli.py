"""``pipelines`` command: LightningCLI (``fit|validate|test|predict -c config.yaml``) and ``export``.

The subcommands are argparse parsers of the suite's contract (``--version``, ``-q/--quiet``, examples at the end of
``--help``); everything after the contract's options goes to LightningCLI unchanged (``--trainer.max_epochs 1``,
``--data.n_val 45``, ``--ckpt_path ...``; ``--options`` lists them). A bad config, an unknown option or missing data
is one line (``pipelines: error: ...``) with exit code 2; a failed rank under DDP is the suite's one line and exit 1.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from shared_backbones.cliutil import add_command, add_common, make_parser, run_cli, say
from shared_backbones.errors import InputError, UserError

PROG = "pipelines"
DESCRIPTION = """Train any convsuite task from a LightningCLI config, and export a checkpoint to the suite's model file.

The train commands of each task (medseg train, medseg phases train, audiosep train, remote train) take the same
path through pipelines; this command is the config-file way in (pipelines/configs/*.yaml)."""
CONFIGS = "pipelines/configs"
_STAGES = {
    "fit": ("train (and validate) a model from a config; checkpoints and logs under trainer.default_root_dir",
            [f"{PROG} fit -c {CONFIGS}/example.yaml",
             f"{PROG} fit -c {CONFIGS}/medseg.yaml --data.data_dir phantoms --trainer.max_epochs 10",
             f"{PROG} fit -c {CONFIGS}/example.yaml --trainer.devices 2 --trainer.strategy ddp"]),
    "validate": ("validation metrics of a checkpoint on the config's validation data",
                 [f"{PROG} validate -c {CONFIGS}/example.yaml --ckpt_path runs/example/last.ckpt",
                  f"{PROG} validate -c {CONFIGS}/medseg.yaml --ckpt_path best.ckpt -q"]),
    "test": ("test metrics of a checkpoint on the config's test data",
             [f"{PROG} test -c {CONFIGS}/example.yaml --ckpt_path runs/example/last.ckpt",
              f"{PROG} test -c {CONFIGS}/remote.yaml --ckpt_path best.ckpt -q"]),
    "predict": ("predictions of a checkpoint on the config's predict data",
                [f"{PROG} predict -c {CONFIGS}/example.yaml --ckpt_path runs/example/last.ckpt",
                 f"{PROG} predict -c {CONFIGS}/example.yaml --ckpt_path best.ckpt -q"]),
}


def _parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, DESCRIPTION, [
        f"{PROG} fit -c {CONFIGS}/example.yaml --trainer.max_epochs 1",
        f"{PROG} export runs/example/logs/version_0/checkpoints/epoch=0-step=4.ckpt -o example.pt",
        f"{PROG} fit -c {CONFIGS}/example.yaml --options",
    ])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (help_text, examples) in _STAGES.items():
        s = add_command(sub, name, help=help_text, examples=examples)
        s.add_argument("-c", "--config", action="append", default=[],
                       help="LightningCLI config file (.yaml; repeat to combine, later ones override)")
        s.add_argument("--options", action="store_true",
                       help="list every LightningCLI option of this stage (trainer, model, data) and exit")
        add_common(s, device=False, precision=False, overwrite=False)
    e = add_command(sub, "export", help="Lightning .ckpt of a convsuite task -> the suite's model file (the file the "
                    "task's predict command takes)",
                    examples=[f"{PROG} export runs/medseg/checkpoints/best-epoch=9.ckpt -o unet.pt",
                              f"{PROG} export unet_run/checkpoints/last.ckpt -o unet_last.pt --overwrite"])
    e.add_argument("checkpoint", help="Lightning checkpoint written by `pipelines fit` or a train command")
    add_common(e, output="model file to write (.pt)", output_required=True, device=False, precision=False,
               old_spellings=False)
    return p


def _export(a: argparse.Namespace) -> int:
    from .export import export_checkpoint

    out = export_checkpoint(a.checkpoint, a.output, overwrite=a.overwrite)
    say(f"wrote {out}", a.quiet)
    return 0


def _one_line(text: str, limit: int = 400) -> str:
    """jsonargparse's multi-line message (key, then the reasons, indented) as one line: the key and its most specific
    reasons, without the repeated "Does not validate" preambles."""
    parts = [p.strip(" -") for p in text.strip().splitlines() if p.strip(" -")]
    noise = ("Does not validate against any of the", "Subtypes:", "Subclass types", "Errors:",
             "Expected a <class 'NoneType'>", "Given value type:", "Given value:")
    keep = [p for p in parts if not p.startswith(noise)]
    line = " ".join(keep or parts)
    return line if len(line) <= limit else line[: limit - 3] + "..."


@contextlib.contextmanager
def _config_errors(what: str) -> Iterator[None]:
    """Errors raised by classes built from a user's config, as one line (exit 2): the config's fault."""
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        yield
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError, RuntimeError,
            MisconfigurationException) as exc:
        if _user_error(exc) is not None:
            raise
        raise InputError(f"the config's {what} cannot be used ({type(exc).__name__}: "
                         f"{_one_line(str(exc), 200)})") from None


def _config_step(what: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _config_errors(what):
            return fn(*args, **kwargs)

    return wrapped


def _user_error(exc: BaseException) -> UserError | None:
    """The suite's own error (a missing dataset, ...) that jsonargparse wrapped while building the classes."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def _suite_cli() -> type:
    """LightningCLI whose fit/validate/... turn Ctrl-C into KeyboardInterrupt (the suite's "interrupted" line and
    exit 130, after the progress bar is closed) instead of Lightning's ``sys.exit(1)``, hide Lightning's own Ctrl-C
    message, and report a failed rank in the suite's one line."""
    from lightning.pytorch.cli import LightningCLI

    from .trainer import fitting

    class SuiteCLI(LightningCLI):
        def _set_seed(self) -> None:
            with _config_errors("seed_everything"):
                super()._set_seed()

        def instantiate_classes(self) -> None:
            # the model, data and trainer are built from the user's config: what their constructors refuse (a
            # negative width, max_epochs -5 ...) is the config's fault, said in one line; so is what the data module
            # refuses while it sets up and builds its loaders (batch_size 0, n_train -1)
            with _config_errors("model, data or trainer"):
                super().instantiate_classes()
            dm = self.datamodule
            if dm is not None:
                for name in ("prepare_data", "setup", "train_dataloader", "val_dataloader", "test_dataloader",
                             "predict_dataloader"):
                    if callable(getattr(dm, name, None)):
                        setattr(dm, name, _config_step(f"data ({type(dm).__name__}.{name})", getattr(dm, name)))

        def _run_subcommand(self, subcommand: str) -> None:
            with fitting(self.trainer):
                super()._run_subcommand(subcommand)

    return SuiteCLI


def _lightning(a: argparse.Namespace, rest: list[str]) -> int:
    from .base import SuiteModule
    from .trainer import _quiet_lightning, child_ranks

    for cfg in a.config:
        if not Path(cfg).is_file():
            raise InputError("config file not found", cfg)
    args = [a.command, *[x for c in a.config for x in ("-c", c)]]
    if a.quiet:
        args += ["--trainer.enable_progress_bar", "false", "--trainer.enable_model_summary", "false"]
    args += rest + (["--help"] if a.options else [])
    cli = _suite_cli()
    _quiet_lightning(a.quiet)
    try:
        with child_ranks(), warnings.catch_warnings():
            # LightningCLI warns when given args and a command line (sys.argv stays: DDP relaunches from it)
            warnings.filterwarnings("ignore", message=r".*LightningCLI's args parameter")
            cli(SuiteModule, None, subclass_mode_model=True, subclass_mode_data=True, args=args,
                save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
    except SystemExit as exc:  # --options (LightningCLI's --help), --print_config
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except Exception as exc:
        user = _user_error(exc)
        if user is not None:
            raise user from None
        from jsonargparse import ArgumentError

        if isinstance(exc, ArgumentError):
            raise InputError(f"{a.command}: {_one_line(str(exc))}") from None
        raise
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def _main(argv_: Sequence[str] | None) -> int:
        a, rest = _parser().parse_known_args(argv_)
        if a.command == "export":
            if rest:
                raise InputError(f"export: unrecognized arguments: {' '.join(rest)}")
            return _export(a)
        return _lightning(a, rest)

    return run_cli(_main, args, prog=PROG)


if __name__ == "__main__":
    sys.exit(main())
