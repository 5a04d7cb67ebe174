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

from shared_backbones.cliutil import parse_threads
from shared_backbones.options import DURATION_HELP, Number, fraction, parse_duration

# ranges that make every accepted value a valid run
EPOCHS = Number(int, min=1, max=1_000_000)
BATCH = Number(int, min=1, max=65536)
LR = Number(float, min=0, max=10, min_open=True)
FOLDS = Number(int, min=2, max=1000)
WORKERS = Number(int, min=0, max=256)
NODES = Number(int, min=1, max=4096)
WORK_DIR_HELP = "logs and checkpoints (default: <output stem>_run/ next to the output)"
FOLDS_WORK_DIR_HELP = ("logs and checkpoints (default: <output stem>_run/ next to the output; with --fold all "
                       "<output stem>_fold<k>_run/, or <work-dir>/fold<k>)")
MAX_TIME_HELP = f"time budget {{}}, validation included ({DURATION_HELP})"
STRATEGY_HELP = "Lightning strategy (auto = DDP when more than one process trains)"
NODES_HELP = "nodes (multi-node DDP: launch with torchrun or srun on every node)"


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
        elif kwargs.get("type") in (int, float) or ("type" not in kwargs and "action" not in kwargs and (
                isinstance(default, (int, float)) or str(f.type).split(" ")[0] in ("int", "float"))):
            raise TypeError(f"{table.__name__}.{f.name}: a numeric option needs a Number type "
                            "(shared_backbones.options.Number(kind, min=, max=))")
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
class CommonTrainOptions:
    """The options every train command takes from ``shared_backbones.cliutil.add_common`` (declared there, so
    ``cli=False`` here): the base of every task's table."""

    device: str = option("auto", cli=False)
    devices: int | str = option("auto", cli=False)
    precision: str = option("auto", cli=False)
    seed: int = option(0, cli=False)
    resume: str | None = option(None, cli=False)
    quiet: bool = option(False, cli=False)
    overwrite: bool = option(False, cli=False)


@dataclass
class MedsegTrainOptions(CommonTrainOptions):
    """``medseg train`` = :func:`pipelines.medseg.train_medseg` (positional ``dataset`` and ``-o`` are its first
    two arguments)."""

    arch: str = option("unet3d", "unet3d | stunet-s/b/l/h | revunet3d | revunet3d-plain")
    folds: int = option(5, "number of folds (k-fold over cases)", type=FOLDS)
    epochs: int = option(50, "training epochs", type=EPOCHS)
    steps_per_epoch: int = option(50, "patch batches per epoch (all processes together)",
                                  type=Number(int, min=1, max=1_000_000))
    patch_size: list[int] | None = option(None, "patch size (default: planned from the data)", flag="--patch",
                                          type=Number(int, min=4, max=1024), nargs=3, metavar=("Z", "Y", "X"))
    batch_size: int = option(2, "patches per batch and process", type=BATCH)
    spacing: list[float] | None = option(None, "target spacing in mm (default: median of the training cases)",
                                         type=Number(float, min=0, max=100, min_open=True), nargs=3,
                                         metavar=("Z", "Y", "X"))
    optimizer: str = option("sgd", "sgd (nnU-Net's: momentum 0.99, Nesterov) or adamw/adam (converge faster on "
                                   "short runs)", choices=["sgd", "adamw", "adam"])
    lr: float = option(1e-2, "learning rate, poly decay", type=LR)
    base_channels: int | None = option(None, "first-stage channels (unet3d, revunet3d; default 32 / 16)",
                                       type=Number(int, min=1, max=1024))
    workers: int = option(0, "processes for preprocessing and data loading (0: in-process)", type=WORKERS)
    work_dir: str | None = option(None, WORK_DIR_HELP)
    max_time: float | None = option(None, MAX_TIME_HELP.format("for the whole run"), type=parse_duration)
    num_nodes: int = option(1, NODES_HELP, type=NODES)
    strategy: str = option("auto", STRATEGY_HELP)
    fold: int | str = option(0, cli=False)  # from add_common


# -------------------------------------------------------------------------------------------------------- remote
def _str_list(text: str) -> list[str]:
    from pathlib import Path

    path = Path(text)
    if path.suffix.lower() == ".txt" and path.is_file():
        return [t.strip() for t in path.read_text().replace(",", "\n").splitlines() if t.strip()]
    return [t.strip() for t in text.split(",") if t.strip()]


_SCL_CLASS = Number(int, min=0, max=11)


def _scl_list(text: str) -> list[int]:
    """Comma-separated Sentinel-2 SCL classes (0..11)."""
    try:
        return [_SCL_CLASS(t) for t in text.split(",") if t.strip()]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"expected comma-separated SCL classes (0..11), got {text!r}") from None


@dataclass
class RemoteTrainOptions(CommonTrainOptions):
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
    grid_days: int | None = option(None, "time-grid step in days (default: median spacing)",
                                   type=Number(int, min=1, max=366))
    folds: int = option(5, "spatially blocked folds", type=FOLDS)
    block_size: int = option(32, "spatial block size in pixels (in map units for a table with x/y columns)",
                             type=Number(int, min=1, max=1_000_000))
    buffer: int = option(2, "training pixels closer than this to a test block are dropped",
                         type=Number(int, min=0, max=100_000))
    chip: int = option(64, "chip size for unet2d (multiple of 32)", type=Number(int, min=32, max=4096))
    max_per_class: int = option(20000, "labelled pixels sampled per class", type=Number(int, min=1))
    epochs: int = option(30, "training epochs", type=EPOCHS)
    batch_size: int = option(256, "samples per batch and process", type=BATCH)
    lr: float = option(3e-3, "learning rate (AdamW)", type=LR)
    channels: int | None = option(None, "width of the temporal blocks (ffdnn/cnn1d)", flag="--width",
                                  type=Number(int, min=1, max=1024))
    depth: int | None = option(None, "number of temporal blocks (ffdnn/cnn1d)", type=Number(int, min=1, max=64))
    n_modes: int | None = option(None, "Fourier modes kept per block (ffdnn)", type=Number(int, min=1, max=1024))
    encoder: str | None = option(None, "smp encoder of unet2d (default resnet18)")
    offset: float | None = option(None, "DN offset added before /10000 (overrides metadata; stored in the model "
                                         "file)", type=Number(float, min=-10000, max=10000))
    scl_invalid: list[int] | None = option(None, "SCL classes masked as invalid (default 0,1,3,8,9,10)",
                                           type=_scl_list)
    no_cloud_mask: bool = option(False, "ignore the SCL band")
    work_dir: str | None = option(None, FOLDS_WORK_DIR_HELP)
    max_time: float | None = option(None, MAX_TIME_HELP.format("per fold"), type=parse_duration)
    num_nodes: int = option(1, NODES_HELP, type=NODES)
    strategy: str = option("auto", STRATEGY_HELP)
    fold: int | str = option(0, cli=False)  # from add_common


# ------------------------------------------------------------------------------------------------------ audiosep
@dataclass
class AudiosepTrainOptions(CommonTrainOptions):
    """``audiosep train`` = :func:`pipelines.audiosep.train_audiosep` (positional ``data`` and ``-o`` are its
    first two arguments)."""

    val_dir: str | None = option(None, "validation folder, laid out as DATA (default: a k-fold split of DATA)")
    mix_type: str = option("clean", "LibriMix / WHAM! mixture: clean (the speakers), both (speakers + noise), single "
                                    "(speaker 1 + noise: one source, s1/)", choices=("clean", "both", "single"))
    dynamic_mixing: bool = option(False, "draw training mixtures on the fly from DATA")
    arch: str = option("convtasnet-small", "architecture preset",
                       choices=("convtasnet-small", "convtasnet-base", "convtasnet-causal", "convtasnet"))
    reversible: bool = option(False, "reversible TCN stack (training memory flat in depth)")
    num_sources: int | None = option(None, "sources per mixture (default: the data's s1/, s2/ ... count; 1 with "
                                           "--mix-type single; 2 with --dynamic-mixing and no --val-dir)",
                                     flag="--sources", type=Number(int, min=1, max=8))
    sample_rate: int = option(8000, "rate of the data and of the model", type=Number(int, min=1000, max=192000))
    segment: float = option(4.0, "training crop in seconds (paper: 4)", type=Number(float, min=0.1, max=600))
    batch_size: int = option(4, "mixtures per step and device", type=BATCH)
    epochs: int = option(100, "maximum number of epochs", type=EPOCHS)
    max_steps: int = option(-1, "stop after this many optimiser steps (-1: no limit)",
                            type=Number(int, min=1, max=10**9, special={"-1": -1}))
    max_time: float | None = option(None, MAX_TIME_HELP.format("for the whole run"), type=parse_duration)
    lr: float = option(1e-3, "Adam learning rate", type=LR)
    scheduler: str = option("plateau", "plateau: halve after 3 epochs without improvement (paper); cosine: decay to "
                                       "0 over --epochs; time-cosine: warm-up, then cosine decay over the "
                                       "--max-time budget", choices=("plateau", "cosine", "time-cosine"))
    epoch_size: int = option(1000, "mixtures per epoch with --dynamic-mixing", type=Number(int, min=1, max=10**7))
    speed_perturb: float = option(0.0, "with --dynamic-mixing, play each source at a random speed within 1 +- "
                                       "this (0.15: new voices)", type=fraction)
    fold: int = option(0, "validation fold of DATA when no --val-dir is given", type=Number(int, min=0, max=999))
    folds: int = option(5, "number of folds for that split", type=FOLDS)
    workers: int = option(0, "data-loading worker processes", type=WORKERS)
    threads: int | str | None = option(None, "torch threads on CPU [torch's default]; auto: time a few training "
                                             "steps at 1 and at torch's count and keep more only if >10%% faster "
                                             "(1 is often much faster on a small machine shared with other jobs)",
                                       type=parse_threads, metavar="N|auto")
    work_dir: str | None = option(None, WORK_DIR_HELP)
    num_nodes: int = option(1, NODES_HELP, type=NODES)
    strategy: str = option("auto", STRATEGY_HELP)


# -------------------------------------------------------------------------------------------------------- phases
@dataclass
class PhasesTrainOptions(CommonTrainOptions):
    """``medseg phases train`` = :func:`pipelines.phases.train_phases` (positional ``data`` and ``-o`` are its
    first two arguments)."""

    arch: str = option("colontcn", "model architecture", choices=("colontcn", "mstcn"))
    blocks: int | None = option(None, "ColonTCN blocks N: the paper's 12 (4-fold) when not given, 13 for its 5-fold "
                                      "setting", type=Number(int, min=1, max=64))
    stages: int | None = option(None, "MS-TCN stages: the paper's 4 when not given", type=Number(int, min=1, max=16))
    causal: bool = option(False, "online model: only past frames")
    reversible: bool = option(False, "reversible ColonTCN (memory flat in depth)")
    folds: int = option(4, "k (0 with --groups: leave-one-group-out)",
                        type=Number(int, min=2, max=1000, special={"0": 0}))
    groups: str | None = option(None, "CSV video,group (centre/study): folds never split a group")
    split_dir: str | None = option(None, "fixed splits: MS-TCN train.split<k>.bundle / test.split<k>.bundle files "
                                         "(--fold 0 is split 1)")
    layout: str = option("auto", "feature array layout: tc = [frames, dims], ct = [dims, frames] (MS-TCN's), auto = "
                                 "the width every video shares is the dims axis", choices=("auto", "tc", "ct"))
    epochs: int = option(50, "maximum number of epochs", type=EPOCHS)
    max_time: float | None = option(None, MAX_TIME_HELP.format("per fold") + "; the best checkpoint so far is "
                                    "exported", type=parse_duration)
    batch_size: int = option(2, "videos per batch (per process)", type=BATCH)
    lr: float = option(5e-4, "AdamW learning rate", type=LR)
    fps: float = option(5.0, "frame rate of the features (stored in the model file)",
                        type=Number(float, min=0, max=1000, min_open=True))
    background: list[str] | None = option(None, "classes left out of the validation Edit / F1 and the fold table "
                                                "(as MS-TCN's bg_class); without it every class counts",
                                          nargs="+", metavar="CLASS")
    work_dir: str | None = option(None, FOLDS_WORK_DIR_HELP)
    num_nodes: int = option(1, NODES_HELP, type=NODES)
    strategy: str = option("auto", STRATEGY_HELP)
    fold: int | str = option(0, cli=False)  # from add_common
