"""``pipelines`` command: LightningCLI (``fit|validate|test|predict -c config.yaml``) and ``export``."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from shared_backbones.cliutil import add_common, make_parser, run_cli, say
from shared_backbones.errors import InputError


def _export(argv: Sequence[str]) -> int:
    from .export import export_checkpoint

    p = make_parser("pipelines export", "Lightning .ckpt of a convsuite task -> the suite's model file (the file the "
                    "task's predict command takes)",
                    examples=["pipelines export runs/medseg/checkpoints/best-epoch=9.ckpt -o unet.pt",
                              "pipelines export unet.pt.train/checkpoints/last.ckpt -o unet_last.pt --overwrite"])
    p.add_argument("checkpoint", help="Lightning checkpoint written by `pipelines fit` or a train command")
    add_common(p, output="model file to write (.pt)", output_required=True, device=False, precision=False,
               old_spellings=False)
    a = p.parse_args(argv)
    out = export_checkpoint(a.checkpoint, a.output, overwrite=a.overwrite)
    say(f"wrote {out}", a.quiet)
    return 0


def _suite_cli() -> type:
    """LightningCLI whose fit/validate/... turn Ctrl-C into KeyboardInterrupt (the suite's "interrupted" line and
    exit 130) instead of Lightning's ``sys.exit(1)``, and hide Lightning's own Ctrl-C message."""
    from lightning.pytorch.cli import LightningCLI

    from .trainer import _quiet_lightning

    class SuiteCLI(LightningCLI):
        def _run_subcommand(self, subcommand: str) -> None:
            _quiet_lightning(False)
            try:
                super()._run_subcommand(subcommand)
            except SystemExit:
                if getattr(self, "trainer", None) is not None and self.trainer.interrupted:
                    raise KeyboardInterrupt from None
                raise

    return SuiteCLI


def _lightning(argv: Sequence[str]) -> int:
    from .base import SuiteModule

    args = list(argv)
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args) and not Path(args[i + 1]).is_file():
            raise InputError("config file not found", args[i + 1])
    _suite_cli()(
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
