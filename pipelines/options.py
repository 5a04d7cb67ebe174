"""One declaration per training option: a dataclass per task whose fields are the keyword arguments of the task's
``train_*`` function, and whose metadata (flag, help, choices, ...) builds the ``train`` subcommand's parser.

The CLI adds the options of the table with :func:`add_options` (and the suite's common ones with
``shared_backbones.cliutil.add_common``), then calls ``train_x(**options_from(Table, args))``: nothing is copied
by hand, so a new option is one new field. This module imports nothing heavy (no torch, no Lightning), so building
a parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from typing import Any


def option(default: Any = None, help: str = "", *, flag: str | None = None, cli: bool = True,
           **argparse_kwargs: Any) -> Any:
    """A dataclass field that is also a command-line option (``--name-with-dashes`` unless ``flag``).

    ``cli=False``: the value comes from an option declared elsewhere (``add_common``: --device, --seed ...)."""
    meta = {"help": help, "flag": flag, "cli": cli, "argparse": argparse_kwargs}
    if isinstance(default, (list, dict, set)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


def add_options(parser: argparse.ArgumentParser | Any, table: type, skip: tuple[str, ...] = ()) -> None:
    """Add every ``cli=True`` field of the dataclass ``table`` to ``parser``."""
    for f in dataclasses.fields(table):
        meta = f.metadata
        if not meta.get("cli", False) or f.name in skip:
            continue
        kwargs = dict(meta.get("argparse") or {})
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, bool) and "action" not in kwargs:
            kwargs["action"] = "store_false" if default else "store_true"
        elif "type" not in kwargs and "action" not in kwargs and isinstance(default, (int, float)):
            kwargs["type"] = type(default)
        flags = [meta["flag"]] if isinstance(meta.get("flag"), str) else list(meta.get("flag") or [])
        parser.add_argument(*(flags or ["--" + f.name.replace("_", "-")]), dest=f.name, default=default,
                            help=meta.get("help") or f.name, **kwargs)


def options_from(table: type, namespace: argparse.Namespace | dict[str, Any], **override: Any) -> dict[str, Any]:
    """The keyword arguments of ``table``'s fields taken from a parsed namespace (missing ones keep defaults)."""
    values = vars(namespace) if isinstance(namespace, argparse.Namespace) else dict(namespace)
    out = {}
    for f in dataclasses.fields(table):
        if f.name in override:
            out[f.name] = override[f.name]
        elif f.name in values:
            out[f.name] = values[f.name]
    return dataclasses.asdict(table(**out))


# -------------------------------------------------------------------------------------------------------- medseg
@dataclass
class MedsegTrainOptions:
    """``medseg train`` = :func:`pipelines.medseg.train_medseg` (positional ``dataset`` and ``-o`` are its first
    two arguments)."""

    arch: str = option("unet3d", "unet3d | stunet-s/b/l/h | revunet3d | revunet3d-plain")
    folds: int = option(5, "number of folds (k-fold over cases)")
    epochs: int = option(50, "training epochs")
    steps_per_epoch: int = option(50, "patch batches per epoch (all processes together)")
    patch_size: list[int] | None = option(None, "patch size (default: planned from the data)", flag="--patch",
                                          type=int, nargs=3, metavar=("Z", "Y", "X"))
    batch_size: int = option(2, "patches per batch and process")
    spacing: list[float] | None = option(None, "target spacing in mm (default: median of the training cases)",
                                         type=float, nargs=3, metavar=("Z", "Y", "X"))
    optimizer: str = option("sgd", "sgd (nnU-Net's: momentum 0.99, Nesterov) or adamw/adam (converge faster on "
                                   "short runs)", choices=["sgd", "adamw", "adam"])
    lr: float = option(1e-2, "learning rate, poly decay")
    base_channels: int | None = option(None, "first-stage channels (unet3d, revunet3d; default 32 / 16)", type=int)
    workers: int = option(0, "processes for preprocessing and data loading (0: in-process)")
    work_dir: str | None = option(None, "logs and checkpoints (default: <output>.train/)")
    max_time: str | None = option(None, "time budget for the whole run, validation included (DD:HH:MM:SS, "
                                         "'8 min', '2h')")
    num_nodes: int = option(1, "nodes (multi-node DDP: launch with torchrun or srun on every node)")
    strategy: str = option("auto", "Lightning strategy (auto = DDP when more than one process trains)")
    # from add_common
    fold: int | str = option(0, cli=False)
    device: str = option("auto", cli=False)
    devices: int | str = option("auto", cli=False)
    precision: str = option("auto", cli=False)
    seed: int = option(0, cli=False)
    resume: str | None = option(None, cli=False)
    quiet: bool = option(False, cli=False)
    overwrite: bool = option(False, cli=False)


# -------------------------------------------------------------------------------------------------------- remote
def _str_list(text: str) -> list[str]:
    from pathlib import Path

    path = Path(text)
    if path.suffix.lower() == ".txt" and path.is_file():
        return [t.strip() for t in path.read_text().replace(",", "\n").splitlines() if t.strip()]
    return [t.strip() for t in text.split(",") if t.strip()]


def _int_list(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


@dataclass
class RemoteTrainOptions:
    """``remote train`` = :func:`pipelines.remote.train_remote` (inputs are read into ``series`` by the CLI)."""

    labels: str | None = option(None, "label raster: class index per pixel, 255 = unlabelled")
    table: str | None = option(None, "CSV or Parquet table of per-pixel/per-field time series with a label column "
                                      "(instead of rasters; columns like B04_2024-05-01)")
    fields: str | None = option(None, "field IDs (GeoTIFF or vector file) for --per-field")
    field_id_attr: str | None = option(None, "attribute holding the field ID in a vector file")
    per_field: bool = option(False, "one sample per field (its mean time series, majority label) instead of per "
                                    "pixel")
    arch: str = option("ffdnn", "architecture", choices=("ffdnn", "cnn1d", "unet2d"))
    classes: list[str] | None = option(None, "class names in label order (default healthy,yellow_rust,"
                                              "nitrogen_deficiency)", type=_str_list)
    bands: list[str] | None = option(None, "bands to use (default: 10 and 20 m bands present)", type=_str_list)
    indices: list[str] | None = option(None, "index traits of the FFDNN filter (default TCARI/OSAVI,WDVI,NDVI,"
                                              "NDRE,PSRI)", type=_str_list)
    grid_days: int | None = option(None, "time-grid step in days (default: median spacing)", type=int)
    folds: int = option(5, "spatially blocked folds")
    block_size: int = option(32, "spatial block size in pixels (in map units for a table with x/y columns)")
    buffer: int = option(2, "training pixels closer than this to a test block are dropped")
    chip: int = option(64, "chip size for unet2d (multiple of 32)")
    max_per_class: int = option(20000, "labelled pixels sampled per class")
    epochs: int = option(30, "training epochs")
    batch_size: int = option(256, "samples per batch and process")
    lr: float = option(3e-3, "learning rate (AdamW)")
    channels: int | None = option(None, "width of the temporal blocks (ffdnn/cnn1d)", type=int)
    depth: int | None = option(None, "number of temporal blocks (ffdnn/cnn1d)", type=int)
    n_modes: int | None = option(None, "Fourier modes kept per block (ffdnn)", type=int)
    encoder: str | None = option(None, "smp encoder of unet2d (default resnet18)")
    offset: float | None = option(None, "DN offset added before /10000 (overrides metadata; stored in the model "
                                         "file)", type=float)
    scl_invalid: list[int] | None = option(None, "SCL classes masked as invalid (default 0,1,3,8,9,10)",
                                           type=_int_list)
    no_cloud_mask: bool = option(False, "ignore the SCL band")
    work_dir: str | None = option(None, "logs and checkpoints (default: <output stem>_run/ next to the output)")
    max_time: str | None = option(None, "time budget per fold, validation included (DD:HH:MM:SS, '8 min', '2h')")
    num_nodes: int = option(1, "nodes (multi-node DDP: launch with torchrun or srun on every node)")
    strategy: str = option("auto", "Lightning strategy (auto = DDP when more than one process trains)")
    # from add_common
    fold: int | str = option(0, cli=False)
    device: str = option("auto", cli=False)
    devices: int | str = option("auto", cli=False)
    precision: str = option("auto", cli=False)
    seed: int = option(0, cli=False)
    resume: str | None = option(None, cli=False)
    quiet: bool = option(False, cli=False)
    overwrite: bool = option(False, cli=False)
