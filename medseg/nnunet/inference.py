"""nnU-Net v2's prediction and export, steps 5-6 of :mod:`medseg.nnunet`, on the suite's streaming engine
(:mod:`medseg.engine`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from shared_backbones.cliutil import StageTimer

from ..engine import Windows
from .preprocessing import crop_to_nonzero, new_shape, normalise_channel, resample_image, separate_z


def gaussian_importance(patch: Sequence[int], sigma_scale: float = 1.0 / 8) -> torch.Tensor:
    """nnU-Net's importance map: a unit impulse at ``size // 2`` blurred by a Gaussian of sigma ``size * sigma_scale``
    (truncated at 4 sigma), scaled to a peak of 10 and stored in float16; zeros replaced by the smallest value."""
    from scipy.ndimage import gaussian_filter

    tmp = np.zeros(tuple(patch))
    tmp[tuple(p // 2 for p in patch)] = 1
    g = gaussian_filter(tmp, [p * sigma_scale for p in patch], 0, mode="constant", cval=0)
    g = torch.from_numpy(g / (g.max() / 10)).to(torch.float16)
    g[g == 0] = g[g != 0].min()
    return g.float()


def nnunet_steps(size: int, tile: int, step: float) -> list[int]:
    """nnU-Net's tile starts along one axis: ``ceil((size - tile) / (tile * step)) + 1`` tiles, evenly spread."""
    n = int(np.ceil((size - tile) / (tile * step))) + 1
    if n <= 1:
        return [0]
    actual = (size - tile) / (n - 1)
    return [int(np.round(actual * i)) for i in range(n)]


def count_windows(shape: Sequence[int], patch: Sequence[int], step: float) -> int:
    """Network evaluations (without mirroring) for a preprocessed image of ``shape`` (spatial)."""
    shape = [max(s, p) for s, p in zip(shape[-len(patch):], patch)] if len(patch) == len(shape) else \
        [shape[0]] + [max(s, p) for s, p in zip(shape[1:], patch)]
    n = 1
    if len(patch) < len(shape):
        n, shape = shape[0], shape[1:]
    for s, p in zip(shape, patch):
        n *= len(nnunet_steps(s, p, step))
    return n


def _mirror_flips(axes: Sequence[int] | None, dims: int) -> list[tuple[int, ...]]:
    """nnU-Net's passes: the identity, then every non-empty subset of the allowed axes (tensor dims)."""
    import itertools

    if not axes:
        return [()]
    tdims = [int(a) + 2 for a in axes if int(a) < dims]
    return [()] + [c for r in range(1, len(tdims) + 1) for c in itertools.combinations(tdims, r)]


def _nonlin_and_labels(logits: torch.Tensor, regions: bool, order: Sequence[int] | None,
                       label_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Probabilities (softmax, or sigmoid per region) and the label map of one slab of logits ``[K, ...]``."""
    if regions:
        probs = torch.sigmoid(logits)
        labels = torch.zeros(logits.shape[1:], dtype=label_dtype)
        for i, c in enumerate(order or []):
            labels[probs[i] > 0.5] = int(c)
        return probs, labels
    probs = torch.softmax(logits, 0)
    return probs, probs.max(0).indices.to(label_dtype)


def winning_probability(probs: torch.Tensor, regions: bool, order: Sequence[int] | None) -> torch.Tensor:
    """The probability of the class each voxel is labelled with (:func:`_nonlin_and_labels`' labels): the softmax
    maximum; for region-based models the sigmoid of the region that painted the voxel last (0 where none did). What
    a multi-folder task (:mod:`medseg.tasks`) keeps of a folder instead of all its class probabilities."""
    if not regions:
        return probs.max(0).values
    win = torch.zeros(probs.shape[1:], dtype=torch.float32)
    for i, _ in enumerate(order or []):
        painted = probs[i] > 0.5
        win[painted] = probs[i][painted].float()
    return win


def case_windows(case: Any, pre: dict[str, Any], step: float) -> int:
    """Network evaluations :func:`predict_nnunet` will run on ``case`` (crop and resampled shape from the header
    and one pass over the voxels): the total of a progress bar."""
    from ..io import Geometry

    geom = Geometry.from_affine(case.affine, case.spatial_shape, reader_orientation(pre, case.affine))
    nonzero = (case.data != 0).any(0)[None]
    box = crop_to_nonzero(geom.forward(nonzero).transpose([0, *[i + 1 for i in pre["transpose_forward"]]]))[1]
    shape = [b.stop - b.start for b in box]
    spacing = [geom.spacing[i] for i in pre["transpose_forward"]]
    target = list(pre["spacing"])
    if len(target) < len(shape):
        target = [spacing[0]] + target
    return count_windows(new_shape(shape, spacing, target), pre["patch_size"], step)


def reader_orientation(pre: dict[str, Any], affine: np.ndarray) -> str:
    """The orientation nnU-Net's image reader leaves the array in: RAS for ``NibabelIOWithReorient``, otherwise
    the file's own voxel order (SimpleITK and plain nibabel do not reorient)."""
    import nibabel as nib

    if "Reorient" in str(pre.get("reader", "")):
        return "RAS"
    return "".join(nib.aff2axcodes(affine))


def nnunet_windows(shape: Sequence[int], patch: Sequence[int], step: float,
                   mirror_axes: Sequence[int] | None) -> Windows:
    """nnU-Net's windows over a (padded) image of spatial ``shape``: tile starts (:func:`nnunet_steps`), its
    importance map and mirror passes. A 2-D ``patch`` on a 3-D image becomes ``(1, *patch)``: slice by slice."""
    patch = tuple(int(p) for p in patch)
    flips = _mirror_flips(mirror_axes, len(patch))
    weight = gaussian_importance(patch)
    if len(patch) == len(shape) - 1:
        flips = [tuple(d + 1 for d in f) for f in flips]
        starts = [tuple(range(int(shape[0])))] + [tuple(nnunet_steps(s, p, step)) for s, p in zip(shape[1:], patch)]
        return Windows((1, *patch), tuple(starts), weight[None], tuple(flips))
    return Windows(patch, tuple(tuple(nnunet_steps(s, p, step)) for s, p in zip(shape, patch)), weight,
                   tuple(flips))


def _network_bytes(model: Any, patch: Sequence[int], batch_size: int) -> int:
    """Rough working set of one forward pass: the two largest feature maps of the first stage (plus the input)."""
    kw = model.file.arch_kwargs
    feats = kw.get("features_per_stage") or kw.get("features") or [32]
    first = int(feats[0]) if isinstance(feats, (list, tuple)) else int(feats)
    return int(np.prod(patch)) * 4 * max(1, batch_size) * (4 * first + int(kw.get("in_channels", 1)))


def stream_nnunet(model: Any, data: np.ndarray, pre: dict[str, Any], k: int, cropped_shape: Sequence[int],
                  target: Sequence[float], spacing: Sequence[float], *, step: float,
                  mirror_axes: Sequence[int] | None, batch_size: int, probabilities: bool, regions: bool,
                  label_dtype: torch.dtype, acc_dtype: str = "auto",
                  on_window: Callable[[int], None] | None = None, winner: bool = False,
                  prob_sink: Callable[[int, int, torch.Tensor], None] | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
    """Steps 5-6 streamed (:mod:`medseg.engine`): windows in order along the axis the way back resamples slab by
    slab, every finished slab of logits resampled to ``cropped_shape``, turned into probabilities and labels at
    once. Returns labels (and probabilities when asked; with ``winner``, instead of them, the ``[1, ...]``
    :func:`winning_probability`) on the cropped grid and the window count. ``prob_sink(lead, first, probs)``
    receives every slab's probabilities instead (``[K, ...]`` in the grid's axis order, rows ``first ..`` of
    axis ``lead``), so they are never held whole."""
    from ..engine import SlabResampler, plan_memory, stream_windows
    from ..sliding_window import pad_to_window

    kw = pre["resampling_probabilities"]
    axis = separate_z(target, spacing, kw.get("force_separate_z"))
    order, order_z = min(int(kw.get("order", 1)), 1), min(int(kw.get("order_z", 0)), 1)
    lead = axis if axis is not None else 0
    lead_order = order_z if axis is not None else order
    patch = tuple(int(p) for p in pre["patch_size"])
    image = torch.from_numpy(data)
    two_d = len(patch) == image.ndim - 2
    x, crop = pad_to_window(image[None], (1, *patch) if two_d else patch)
    x = x[0]
    windows = nnunet_windows(tuple(x.shape[1:]), patch, step, mirror_axes)
    out_shape = tuple(int(s) for s in cropped_shape)
    plane_out = [s for a, s in enumerate(out_shape) if a != lead]
    # the network up to its last 1x1 seg layer; the engine applies that layer a few classes at a time
    from ..nnunet_arch import FoldEnsemble, NNUNetV2Net

    head = model.net.head() if isinstance(model.net, (NNUNetV2Net, FoldEnsemble)) else None
    # fewer features than classes (TotalSegmentator: 32 vs 118): blend and resample the features, apply the seg
    # layer on the way out (linear, so the same scores); else blend the scores, made a few classes at a time
    features = int(head[0].shape[1]) if head is not None and head[0].shape[1] < k else None
    mem = plan_memory(classes=k, network_shape=tuple(x.shape[1:]), patch=windows.patch, lead=lead,
                      channels=int(x.shape[0]), output_voxels=int(np.prod(out_shape)),
                      probabilities=probabilities and prob_sink is None,
                      batch_size=batch_size, mirror_passes=len(windows.flips),
                      activation_bytes=_network_bytes(model, windows.patch, batch_size), acc_dtype=acc_dtype,
                      head_features=int(head[0].shape[1]) if head is not None else None,
                      stitch_channels=features)
    labels = torch.empty((out_shape[lead], *plane_out), dtype=label_dtype)
    probs = None
    if probabilities and prob_sink is None:
        probs = torch.empty((k, out_shape[lead], *plane_out), dtype=torch.float32)
    if winner:  # a multi-folder task: one probability per voxel, not K
        probs = torch.empty((1, out_shape[lead], *plane_out), dtype=torch.float32)

    only_labels = probs is None and prob_sink is None and not regions   # argmax of the logits (softmax is
                                                                         # monotonic), a few classes at a time

    def to_labels(a: int, part: torch.Tensor) -> None:
        if only_labels:
            labels[a:a + part.shape[0]] = part
            return
        m = part.shape[1]
        p, lab = _nonlin_and_labels(part, regions, pre.get("regions_class_order"), label_dtype)
        labels[a:a + m] = lab
        if winner:
            probs[0, a:a + m] = winning_probability(p, regions, pre.get("regions_class_order"))
        elif probs is not None:
            probs[:, a:a + m] = p
        if prob_sink is not None:
            prob_sink(lead, a, p.movedim(1, lead + 1) if lead else p)

    back = SlabResampler(crop[lead].stop - crop[lead].start, out_shape[lead], plane_out, to_labels,
                         lead_order=lead_order, plane_order=order, labels=only_labels,
                         head=head if features else None)
    plane_crop = tuple(c for a, c in enumerate(crop) if a != lead)

    def emit(first: int, rows: torch.Tensor) -> None:
        lo, hi = max(first, crop[lead].start), min(first + rows.shape[1], crop[lead].stop)
        if hi > lo:
            back.push(lo - crop[lead].start, rows[(slice(None), slice(lo - first, hi - first), *plane_crop)])

    fmt = torch.channels_last_3d if (torch.device(model.device).type == "cpu" and len(patch) == 3) else None
    if fmt is not None:
        model.net.to(memory_format=fmt)

    forward = model.net.features if head is not None else model.net

    def scores(w: torch.Tensor) -> torch.Tensor:
        out = model.net(w[:, :, 0] if two_d else w)
        return out[0] if isinstance(out, (list, tuple)) else out

    from ..cpu_precision import check_on_window

    check_on_window(model, scores, x[(slice(None), *windows.centre)][None].to(model.device), regions=regions,
                    passes=windows.count * len(windows.flips))

    def net(w: torch.Tensor) -> torch.Tensor:
        if two_d:
            w = w[:, :, 0]
        with model.policy.autocast():
            out = forward(w if fmt is None else w.contiguous(memory_format=fmt))
        if isinstance(out, (list, tuple)):
            out = out[0]
        return out[:, :, None] if two_d else out

    with torch.inference_mode():
        stream_windows(net, x, windows, num_outputs=features or k, emit=emit, lead=lead, acc_dtype=mem.acc_dtype,
                       batch_size=batch_size, device=model.device, on_window=on_window,
                       head=None if features else head)
    assert back.done()
    labels = labels.movedim(0, lead)
    probs = probs.movedim(1, lead + 1) if probs is not None else None
    return labels, probs, windows.count


def probability_fill(model: Any) -> np.ndarray:
    """The probabilities nnU-Net exports outside its crop box: background 1 (softmax models), 0 for every region
    (region-based models); one value per network output."""
    k = int(model.file.arch_kwargs["num_classes"])
    fill = np.zeros(k, np.float32)
    if model.pre.get("regions") is None:
        fill[0] = 1
    return fill


def predict_nnunet(case: Any, model: Any, *, mirror: bool = True, step: float = 0.5, batch_size: int = 1,
                   probabilities: bool | Any = False, timer: StageTimer | None = None,
                   on_window: Callable[[int], None] | None = None, acc_dtype: str = "auto",
                   winner: bool = False) -> dict[str, Any]:
    """Run an nnU-Net v2 model (a :class:`medseg.predict.VolumeModel` whose preprocessing is ``nnunetv2``) on a
    :class:`medseg.io.Case`; returns ``labels`` ``[X, Y, Z]`` on the input grid, optional ``probabilities``
    ``[X, Y, Z, K]`` and ``windows``. ``winner``: ``probabilities`` is instead ``[X, Y, Z]``, the probability of
    each voxel's label (:func:`winning_probability`; 0 outside the crop), what :mod:`medseg.tasks` merges.
    ``probabilities`` may be a :class:`medseg.probfile.SlabProbabilityWriter`: every slab goes to its place in the
    file as soon as it is made (``probabilities`` of the result is then None; the caller closes the writer)."""
    from ..io import Geometry

    timer = timer or StageTimer()
    pre = model.pre
    with timer("preprocess"):
        geom = Geometry.from_affine(case.affine, case.spatial_shape, reader_orientation(pre, case.affine))
        data = geom.forward(case.data)                            # [C, z, y, x], the reader's axes
        spacing = list(geom.spacing)
        tf = pre["transpose_forward"]
        data = data.transpose([0, *[i + 1 for i in tf]])
        spacing = [spacing[i] for i in tf]
        shape_before_crop = data.shape[1:]
        data, box, mask = crop_to_nonzero(data)
        if np.shares_memory(data, case.data):
            data = data.copy()
        data = np.ascontiguousarray(data, dtype=np.float32)     # one working copy, normalised in place
        cropped_shape = data.shape[1:]
        target = list(pre["spacing"])
        if len(target) < len(cropped_shape):
            target = [spacing[0]] + target
        shape = new_shape(cropped_shape, spacing, target)
        if any(n.get("use_mask") for n in pre["normalization"]):
            from scipy.ndimage import binary_fill_holes

            mask = binary_fill_holes(mask)
        for c, entry in enumerate(pre["normalization"]):
            normalise_channel(data[c], entry, mask)
        del mask
        data = resample_image(data, shape, spacing, target, pre["resampling_data"])
    with timer("network"):
        k = int(model.file.arch_kwargs["num_classes"])
        regions = pre.get("regions") is not None
        ldt = torch.uint8 if len(model.classes) <= 256 else torch.int32
        mirror_axes = pre.get("mirror_axes") if mirror else None
        sink = None
        if probabilities is not None and not isinstance(probabilities, bool):
            writer, tb = probabilities, pre["transpose_backward"]

            def sink(lead: int, first: int, p: torch.Tensor) -> None:
                region = [slice(b.start, b.stop) for b in box]      # the slab's box on the transposed full grid
                region[lead] = slice(box[lead].start + first, box[lead].start + first + p.shape[lead + 1])
                p_r = p.permute(0, *[tb[i] + 1 for i in range(p.ndim - 1)]).numpy()
                writer.write(geom.backward_box([region[tb[i]] for i in range(3)]), geom.backward(p_r))

        labels, probs, windows = stream_nnunet(model, data, pre, k, cropped_shape, target, spacing, step=step,
                                               mirror_axes=mirror_axes, batch_size=batch_size,
                                               probabilities=bool(probabilities), regions=regions, label_dtype=ldt,
                                               acc_dtype=acc_dtype, on_window=on_window, winner=winner,
                                               prob_sink=sink)
        del data
    with timer("resample back"):
        full = np.zeros(shape_before_crop, dtype=labels.numpy().dtype)
        full[box] = labels.numpy()
        del labels
        tb = pre["transpose_backward"]
        lab = geom.backward(full.transpose(tb))
        prob_out = None
        if probs is not None:
            pfull = np.zeros((probs.shape[0], *shape_before_crop), dtype=np.float32)
            if not regions and not winner:
                pfull[0] = 1
            pfull[(slice(None), *box)] = probs.numpy()
            del probs
            prob_out = geom.backward(pfull.transpose([0, *[i + 1 for i in tb]]))
            if winner:
                prob_out = prob_out[..., 0]
    return {"labels": lab, "probabilities": prob_out, "windows": windows}
