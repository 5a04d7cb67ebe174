"""Volume prediction: model files -> preprocessing -> sliding window (+TTA, ensembling) -> label map on the input grid.

The model file's ``preprocessing`` says how to get from a NIfTI file to the network's input:
``orientation`` (``"RAS"``: closest canonical orientation), ``axis_order`` (``"zyx"``: nibabel array transposed
(2, 1, 0)), ``spacing`` (z, y, x mm; None = no resampling), ``normalization`` (one scheme per channel, see
:mod:`medseg.preprocess`), ``patch_size`` (z, y, x window) and ``in_channels``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shared_backbones.cliutil import StageTimer
from shared_backbones.errors import InputError, ModelFileError
from shared_backbones.loaded import LoadedModel

from .io import Case, Geometry, model_array
from .models import network_stride
from .preprocess import class_labels, normalise, resample, resample_slabs, target_shape
from .sliding_window import window_slices

TASK = "medseg"
#: Above this many bytes of class scores the stitching buffer stays in CPU memory when running on a GPU.
GPU_STITCH_LIMIT = 2 * 1024 ** 3


@dataclass
class VolumeModel(LoadedModel):
    """A loaded volume model: a suite model file, or an nnU-Net v2 model folder read by :mod:`medseg.nnunet`."""

    TASK = TASK

    @property
    def pre(self) -> dict[str, Any]:
        return self.file.preprocessing

    @property
    def is_nnunet(self) -> bool:
        """True when the model runs nnU-Net v2's own preprocessing and export (:mod:`medseg.nnunet`)."""
        return self.pre.get("pipeline") == "nnunetv2"

    @property
    def default_tta(self) -> bool:
        """Whether prediction mirrors when ``--tta`` is not given: on for nnU-Net models (model folders and files
        made by ``medseg import-nnunet``, which keep the trainer's ``mirror_axes``) whose trainer allows mirroring,
        as nnU-Net predicts; off for the suite's own model files."""
        return self.is_nnunet and bool(self.pre.get("mirror_axes"))

    @property
    def in_channels(self) -> int:
        return int(self.pre.get("in_channels") or self.file.arch_kwargs.get("in_channels", 1))

    @property
    def classes(self) -> list[str]:
        if self.is_nnunet:
            return list(self.file.classes)
        k = int(self.file.arch_kwargs.get("num_classes", len(self.file.classes) or 2))
        names = list(self.file.classes)
        return names if len(names) == k else ["background"] + [f"class_{i}" for i in range(1, k)]

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        sp = self.pre.get("spacing")
        return None if sp is None else tuple(float(s) for s in sp)  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        return str(self.pre.get("orientation", "RAS"))

    def window(self, shape: Sequence[int]) -> tuple[int, int, int]:
        """The sliding window: the model's patch size, or the volume rounded up to the network stride."""
        stride = network_stride(self.net)
        patch = self.pre.get("patch_size")
        if patch:
            return tuple(int(p) for p in patch)  # type: ignore[return-value]
        return tuple(min(128, -(-int(s) // st) * st) for s, st in zip(shape, stride))  # type: ignore[return-value]


def load_model(path: str | Path, device: str = "auto", precision: str = "auto",
               folds: Sequence[int | str] | None = None, checkpoint: str = "checkpoint_final.pth") -> VolumeModel:
    """One model: a suite model file (.pt) or an nnU-Net v2 trained-model folder (``folds``/``checkpoint`` apply)."""
    from .nnunet import is_model_folder, read_model_folder

    p = Path(path)
    if p.is_dir():
        if not is_model_folder(p):
            raise ModelFileError("a folder, but not an nnU-Net v2 model folder (no plans.json); "
                                 "give a model file (.pt) or <Trainer>__<Plans>__<configuration>/", p)
        vm = VolumeModel.from_model_file(read_model_folder(p, folds, checkpoint), device, precision, path=p)
    else:
        vm = VolumeModel.from_file(p, device, precision)
    if precision == "auto" and vm.device.type == "cpu":  # bf16 where the CPU has it natively and labels agree
        from .cpu_precision import auto_policy

        vm.policy = auto_policy(vm.device)
        vm.bf16_to_check = vm.policy.name == "bf16"  # judged on the first case's central window (check_on_window)
    # the network now holds the weights: drop the file's copy (prediction reads only its metadata), which would
    # otherwise stay resident for the whole run (as much memory again as the parameters)
    vm.file.state_dict = {}
    return vm


def load_models(paths: Sequence[str | Path], device: str = "auto", precision: str = "auto",
                folds: Sequence[int | str] | None = None,
                checkpoint: str = "checkpoint_final.pth") -> list[VolumeModel]:
    """Load one or more models (an ensemble must agree on classes and input channels)."""
    if not paths:
        raise ModelFileError("no model file given (use --model model.pt)")
    out: list[VolumeModel] = []
    for p in paths:
        vm = load_model(p, device, precision, folds, checkpoint)
        if out and (vm.classes != out[0].classes or vm.in_channels != out[0].in_channels):
            raise ModelFileError(f"ensemble member disagrees with {Path(out[0].path or '').name} on classes or input "
                                 f"channels", p)
        if out and (vm.is_nnunet or out[0].is_nnunet):
            raise ModelFileError("an nnU-Net model runs its own preprocessing and ensembles its folds; it cannot be "
                                 "ensembled with other models (run them separately)", p)
        out.append(vm)
    return out


@dataclass
class Prediction:
    """Result for one case: labels on the input grid (file axis order) and optional class probabilities."""

    case: Case
    labels: np.ndarray
    classes: list[str]
    probabilities: np.ndarray | None = None  # [X, Y, Z, K] float32 on the input grid
    times: dict[str, float] = field(default_factory=dict)
    windows: int = 0


def count_windows(case: Case, models: Sequence[VolumeModel], overlap: float = 0.5) -> int:
    """Number of window evaluations (mirrored passes run inside each) predict will run for ``case`` with
    ``overlap``: the total of its progress bar."""
    total = 0
    for m in models:
        if m.is_nnunet:
            from .nnunet import case_windows

            total += case_windows(case, m.pre, 1.0 - overlap)
            continue
        geom = Geometry.from_affine(case.affine, case.spatial_shape, m.orientation)
        shape = target_shape(geom.model_shape, geom.spacing, m.spacing)
        win = m.window(shape)
        total += len(window_slices(tuple(max(s, w) for s, w in zip(shape, win)), win, overlap))
    return total


def probability_writer(path: str | Path, case: Case, model: VolumeModel, *, overwrite: bool = False,
                       descrip: str | None = None) -> Any:
    """A :class:`medseg.probfile.SlabProbabilityWriter` for ``model``'s probabilities of ``case`` (one per network
    output; outside the field of view background 1, or every region 0), to pass as ``predict_case``'s
    ``probabilities``. Refuses (one line) when the output's disk cannot hold them."""
    from .probfile import SlabProbabilityWriter

    if model.is_nnunet:
        from .nnunet.inference import probability_fill

        fill = probability_fill(model)
    else:
        fill = np.eye(len(model.classes), dtype=np.float32)[0]
    return SlabProbabilityWriter(path, case, len(fill), fill=fill, overwrite=overwrite, descrip=descrip)


def _stream_probabilities(m: VolumeModel, image: torch.Tensor, emit: Callable[[int, torch.Tensor], None], *,
                          tta: bool, overlap: float, batch_size: int,
                          on_window: Callable[[int], None] | None) -> None:
    """Softmax probabilities of one model on a preprocessed image ``[C, z, y, x]``, handed to ``emit(z0, rows)``
    (``[K, n, y, x]`` float32, CPU) slab by slab as the windows finish them (:func:`medseg.engine.stream_windows`)."""
    from .engine import stream_windows
    from .sliding_window import pad_to_window, suite_windows

    k = len(m.classes)
    window = m.window(image.shape[1:])
    x, crop = pad_to_window(image[None], window)
    windows = suite_windows(tuple(x.shape[2:]), window, overlap, tta=tta)
    stitch = torch.device("cpu")
    if m.device.type == "cuda" and k * window[0] * int(np.prod(x.shape[3:])) * 4 < GPU_STITCH_LIMIT:
        stitch = m.device

    from .cpu_precision import check_on_window

    check_on_window(m, m.net, x[(slice(None), slice(None), *windows.centre)].to(m.device),
                    passes=windows.count * len(windows.flips))

    def net(win: torch.Tensor) -> torch.Tensor:
        with m.policy.autocast():
            return m.net(win)

    def rows_out(first: int, rows: torch.Tensor) -> None:
        lo, hi = max(first, crop[0].start), min(first + rows.shape[1], crop[0].stop)
        if hi <= lo:
            return
        rows = rows[:, lo - first:hi - first][(slice(None), slice(None), *crop[1:])]
        rows = rows.sub(rows.amax(0, keepdim=True)).exp_()     # softmax over classes, rows already a copy
        emit(lo - crop[0].start, rows.div_(rows.sum(0, keepdim=True)).cpu())

    with torch.inference_mode():
        stream_windows(net, x[0].to(stitch), windows, num_outputs=k, emit=rows_out, batch_size=batch_size,
                       device=m.device, stitch_device=stitch, on_window=on_window)


@torch.inference_mode()
def predict_case(case: Case, models: Sequence[VolumeModel], *, tta: bool | None = None, overlap: float = 0.5,
                 batch_size: int = 1, probabilities: bool | Any = False, timer: StageTimer | None = None,
                 on_window: Callable[[int], None] | None = None) -> Prediction:
    """Segment one case with one model or an ensemble (probabilities averaged on the first model's grid).

    ``probabilities``: True to return them whole, or a :class:`medseg.probfile.SlabProbabilityWriter` (see
    :func:`probability_writer`) that receives them slab by slab as they are made (nothing K x voxels is held).

    ``tta``: mirror test-time augmentation; ``None`` = the model's default (:attr:`VolumeModel.default_tta`: off for
    suite models; on over the trainer's allowed axes for nnU-Net models, folders and imported files alike, as
    nnU-Net predicts). An nnU-Net model folder runs nnU-Net's own
    preprocessing and export (:func:`medseg.nnunet.predict_nnunet`), with tile step ``1 - overlap``.
    """
    timer = timer or StageTimer()
    if not 0 <= overlap < 1:
        raise InputError(f"overlap must be in [0, 1), got {overlap}")
    if models and models[0].is_nnunet:
        from .io import check_channels
        from .nnunet import predict_nnunet

        check_channels(case, models[0].in_channels)
        res = predict_nnunet(case, models[0], mirror=models[0].default_tta if tta is None else tta, step=1.0 - overlap,
                             batch_size=batch_size, probabilities=probabilities, timer=timer, on_window=on_window)
        return Prediction(case, res["labels"], models[0].classes, res["probabilities"], dict(timer.times),
                          res["windows"])
    tta = bool(tta)
    from .engine import SlabResampler

    geom0 = None
    acc: torch.Tensor | None = None          # ensembles: probabilities summed on the first model's grid
    labels_model: torch.Tensor | None = None
    probs_model: torch.Tensor | None = None
    label_type = torch.uint8 if len(models[0].classes) <= 256 else torch.int32
    writer = probabilities if probabilities is not None and not isinstance(probabilities, bool) else None
    onehot = np.eye(len(models[0].classes), dtype=np.float32)[0]

    def write_slab(geom: Any, z0: int, part: torch.Tensor) -> None:
        """One slab ``[K, n, y, x]`` (rows ``z0 ..`` of the model grid) of probabilities into ``writer``."""
        box = geom.backward_box((slice(z0, z0 + part.shape[1]), slice(None), slice(None)))
        arr = geom.backward(part.numpy())
        if case.nonfinite is not None:
            arr[case.nonfinite[box]] = onehot
        writer.write(box, arr)

    for m in models:
        if case.data.shape[0] != m.in_channels:
            from .io import check_channels
            check_channels(case, m.in_channels)
        with timer("preprocess"):
            arr, geom = model_array(case, m.orientation)
            arr = arr.astype(np.float32, copy=False)
            geom0 = geom0 or geom
            exclude = None if case.nonfinite is None else torch.from_numpy(geom.forward(case.nonfinite[None])[0])
            image = normalise(torch.from_numpy(arr), m.pre.get("normalization") or [{"scheme": "zscore"}], exclude)
            del arr  # keep one copy of the image at a time
            image = resample(image, target_shape(image.shape[1:], geom.spacing, m.spacing))
        with timer("network"):
            shape = tuple(image.shape[1:])
            if len(models) == 1:               # one model: straight back to the input grid, slab by slab
                out_shape = tuple(int(s) for s in geom0.model_shape)
                labels_model = torch.empty(out_shape, dtype=label_type)
                if probabilities and writer is None:
                    probs_model = torch.empty((len(m.classes), *out_shape), dtype=torch.float32)

                def to_labels(a: int, part: torch.Tensor, lab: torch.Tensor = labels_model,
                              prob: torch.Tensor | None = probs_model, geom: Any = geom) -> None:
                    lab[a:a + part.shape[1]] = class_labels(part, label_type)
                    if prob is not None:
                        prob[:, a:a + part.shape[1]] = part
                    if writer is not None:
                        write_slab(geom, a, part)

                back = SlabResampler(shape[0], out_shape[0], out_shape[1:], to_labels)
                _stream_probabilities(m, image, back.push, tta=tta, overlap=overlap, batch_size=batch_size,
                                      on_window=on_window)
            else:
                full = torch.empty((len(m.classes), *shape), dtype=torch.float32)

                def keep(z0: int, rows: torch.Tensor, full: torch.Tensor = full) -> None:
                    full[:, z0:z0 + rows.shape[1]] = rows

                _stream_probabilities(m, image, keep, tta=tta, overlap=overlap, batch_size=batch_size,
                                      on_window=on_window)
            del image
        if len(models) > 1:
            with timer("ensemble"):
                acc = full if acc is None else acc.add_(resample(full, tuple(acc.shape[1:])))
                del full
    assert geom0 is not None
    with timer("resample back"):
        if acc is not None:
            acc.div_(len(models))
            slabs = resample_slabs(acc, geom0.model_shape, lambda p: class_labels(p, label_type))
            labels_model = torch.cat(slabs, 0)
            if writer is not None:
                done = [0]

                def put(part: torch.Tensor) -> torch.Tensor:
                    write_slab(geom0, done[0], part)
                    done[0] += part.shape[1]
                    return part.new_empty(0)

                resample_slabs(acc, geom0.model_shape, put, slab=4)
            elif probabilities:
                probs_model = torch.cat(resample_slabs(acc, geom0.model_shape, lambda p: p), 1)
            del acc
        assert labels_model is not None
        labels = geom0.backward(labels_model.numpy())
        if case.nonfinite is not None:  # NaN/Inf in the input (outside the field of view): background
            labels[case.nonfinite] = 0
        probs_out = None
        if probs_model is not None:
            probs_out = geom0.backward(probs_model.numpy()).astype(np.float32)
            if case.nonfinite is not None:
                probs_out[case.nonfinite] = np.eye(probs_out.shape[-1], dtype=np.float32)[0]
    return Prediction(case, labels, models[0].classes, probs_out, dict(timer.times))


# ----------------------------------------------------------------------------------------------- postprocessing
def class_indices(selection: Sequence[str] | None, classes: Sequence[str]) -> list[int] | None:
    """Resolve ``--keep-classes`` entries (names or label numbers) to label indices."""
    if not selection:
        return None
    out = []
    for item in selection:
        for tok in str(item).split(","):
            tok = tok.strip()
            if not tok:
                continue
            if tok.isdigit() and 0 < int(tok) < len(classes):
                out.append(int(tok))
            elif tok in classes[1:]:
                out.append(list(classes).index(tok))
            else:
                raise InputError(f"unknown class {tok!r} (model classes: {', '.join(classes[1:])})")
    return sorted(set(out))


def keep_classes(labels: np.ndarray, keep: Sequence[int] | None) -> np.ndarray:
    """Set every label not in ``keep`` to background (labels keep their numbers)."""
    if keep is None:
        return labels
    return np.where(np.isin(labels, list(keep)), labels, 0).astype(labels.dtype)


def largest_component(labels: np.ndarray) -> np.ndarray:
    """Keep only the largest 26-connected component of every foreground class."""
    from scipy import ndimage

    out = labels.copy()
    structure = np.ones((3, 3, 3), dtype=bool)
    for c in np.unique(labels):
        if c == 0:
            continue
        mask = labels == c
        comp, n = ndimage.label(mask, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[mask & (comp != int(sizes.argmax()))] = 0
    return out
