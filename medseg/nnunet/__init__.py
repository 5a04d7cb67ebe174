"""nnU-Net v2 model folders: reading them safely and running their preprocessing and export exactly.

A trained nnU-Net v2 model is a folder ``<results>/DatasetXXX_Name/<Trainer>__<Plans>__<configuration>/`` holding
``dataset.json``, ``plans.json`` and ``fold_<k>/checkpoint_final.pth`` (TotalSegmentator and most published nnU-Net
models ship in this form). :func:`read_model_folder` turns it into the suite's :class:`ModelFile` (architecture
``nnunetv2``, see :mod:`medseg.nnunet_arch`; folds ensembled) without importing nnU-Net and without executing pickled
code (checkpoints are read with ``torch.load(weights_only=True)``; the numpy scalars their training logs hold are
the only extra types allowed). :func:`predict_nnunet` runs the pipeline the plans describe (nnunetv2's
``DefaultPreprocessor``, ``nnUNetPredictor`` and ``export_prediction``):

1. read the image as nnU-Net's reader does (SimpleITK/nibabel: voxel order, no reorientation; ``NibabelIOWithReorient``:
   RAS first), axes (z, y, x); ``transpose_forward``;
2. crop to the bounding box of the non-zero voxels of all channels (holes filled for the normalisation mask);
3. normalise per channel: ``CTNormalization`` (clip to the stored foreground 0.5/99.5 percentiles, subtract the
   foreground mean, divide by its std), ``ZScoreNormalization`` (per image, inside the non-zero mask when
   ``use_mask_for_norm``), ``NoNormalization``, ``RescaleTo01Normalization``, ``RGBTo01Normalization``;
4. resample to the configuration's spacing: third-order spline (``resampling_fn_data_kwargs``), in-plane only plus
   nearest neighbour across slices when the spacing is anisotropic (max/min > 3);
5. Gaussian sliding window with nnU-Net's tile positions (step 0.5 of the patch), Gaussian (sigma 1/8 of the patch),
   mirroring over the trainer's ``inference_allowed_mirroring_axes``, folds' logits averaged;
6. logits resampled back to the cropped shape (``resampling_fn_probabilities_kwargs``: linear, separate z),
   softmax (sigmoid for region-based models), argmax (regions painted in ``regions_class_order``), pasted into the
   uncropped volume, ``transpose_backward``, written on the input's grid.

Lighter than nnU-Net: steps 5-6 stream (:mod:`medseg.engine`): windows run in order along the axis the way back
resamples, and each slab of logits is resampled, turned into probabilities and labels as soon as no later window
touches it, so memory is bounded by one window's extent of class scores, not by classes x voxels; the working set
is estimated before the first window (float16 accumulators when float32 would not fit, else a one-line refusal).

The package is split by concern: :mod:`.folder` (folders, plans, checkpoints, ``import-nnunet``),
:mod:`.preprocessing` (steps 2-4) and :mod:`.inference` (steps 5-6); every name is importable from here.
"""

from .folder import (  # noqa: F401
    NORMALIZATIONS,
    PIPELINE,
    available_folds,
    configuration,
    import_nnunet,
    is_model_folder,
    label_info,
    read_checkpoint,
    read_model_folder,
)
from .inference import (  # noqa: F401
    _nonlin_and_labels,
    case_windows,
    count_windows,
    gaussian_importance,
    nnunet_steps,
    nnunet_windows,
    predict_nnunet,
    reader_orientation,
    stream_nnunet,
    winning_probability,
)
from .preprocessing import (  # noqa: F401
    ANISO_THRESHOLD,
    _axis_indices,
    crop_to_nonzero,
    new_shape,
    normalise_channel,
    resample_image,
    separate_z,
)
