"""``pipelines`` command: LightningCLI (``fit|validate|test|predict -c config.yaml``) and ``export``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import run_cli, say
from shared_backbones.errors import InputError


def _export(argv: Sequence[str]) -> int:
    from .export import export_checkpoint

    p = argparse.ArgumentParser(prog="pipelines export", description="Lightning .ckpt -> convsuite model file")
    p.add_argument("checkpoint")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = export_checkpoint(a.checkpoint, a.output, overwrite=a.overwrite)
    say(f"wrote {out}")
    return 0


def _lightning(argv: Sequence[str]) -> int:
    from lightning.pytorch.cli import LightningCLI

    import pipelines.example  # noqa: F401  (registers the example architecture)

    from .base import SuiteModule

    args = list(argv)
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args) and not Path(args[i + 1]).is_file():
            raise InputError("config file not found", args[i + 1])
    LightningCLI(
        SuiteModule,
        None,
        subclass_mode_model=True,
        subclass_mode_data=True,
        args=args,
        save_config_kwargs={"overwrite": True},
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)

    def _main(a: Sequence[str] | None) -> int:
        a = list(a or [])
        if a and a[0] == "export":
            return _export(a[1:])
        if not a or a[0] not in ("fit", "validate", "test", "predict", "-h", "--help"):
            raise InputError(
                "usage: pipelines {fit,validate,test,predict} -c config.yaml | pipelines export CKPT -o model.pt"
            )
        return _lightning(a)

    return run_cli(_main, args, prog="pipelines")


if __name__ == "__main__":
    sys.exit(main())
