"""Make real nnU-Net v2 model folders and predictions with nnU-Net itself (the peer of :mod:`medseg.nnunet`).

Run as a separate process (nnU-Net reads its ``nnUNet_raw/_preprocessed/_results`` variables at import time)::

    python nnunet_peer.py make WORK --kinds ct mr [--folds 0 1] [--shape X Y Z] [--configs 3d_fullres 2d] [--predict]
    python nnunet_peer.py predict MODEL_FOLDER IMAGE OUT_FOLDER [--no-mirroring] [--step 0.5]

``make`` writes a tiny raw dataset (CT-like: anisotropic spacing, CTNormalization; MR-like: zero background,
ZScoreNormalization with the non-zero mask), runs nnU-Net's fingerprint extraction, experiment planning and
preprocessing through its Python API, builds each configuration's network with nnU-Net's own trainer (random
weights, smaller feature counts to keep it fast) and saves ``fold_<k>/checkpoint_final.pth`` with the trainer's own
``save_checkpoint``. It prints one JSON object: the model folders and a test image. ``predict`` runs
``nnUNetPredictor`` on the CPU in one process (``predict_from_files_sequential``) and saves probabilities.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np


def _phantom(shape, spacing, kind: str, seed: int):
    """Image and labels (x, y, z) of two blobs; CT: HU-like with a zero border, MR: zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s) * sp for s, sp in zip(shape, spacing)], indexing="ij"))
    ext = np.array([s * sp for s, sp in zip(shape, spacing)])
    lab = np.zeros(shape, np.uint8)
    for label, frac in ((1, 0.22), (2, 0.12)):
        c = ext * rng.uniform(0.35, 0.65, 3)
        r = ext.min() * frac
        lab[((grid - c[:, None, None, None]) ** 2).sum(0) < r ** 2] = label
    if kind == "ct":
        img = rng.normal(40, 15, shape) + (lab == 1) * 120 + (lab == 2) * 300
        img[:2], img[-2:] = 0, 0  # a zero border: the crop to the non-zero box has work to do
    else:
        body = ((grid - ext[:, None, None, None] / 2) ** 2 / (ext[:, None, None, None] * 0.42) ** 2).sum(0) < 1
        img = (rng.normal(300, 40, shape) + (lab == 1) * 250 - (lab == 2) * 150) * body
        lab = lab * body
    return img.astype(np.float32), lab


def _save(path, data, spacing, dtype):
    import nibabel as nib

    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS-like voxel axes, as scanners write
    aff[:3, 3] = [10.0, -5.0, 3.0]
    nib.save(nib.Nifti1Image(data.astype(dtype), aff), str(path))


def _in_process_pools() -> None:
    """Run nnU-Net's fingerprint and preprocessing pools as thread pools in this process (its own code, no spawned
    interpreters re-importing torch: seconds instead of a minute on a busy machine)."""
    import multiprocessing.pool
    import types

    import nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor as fe
    import nnunetv2.preprocessing.preprocessors.default_preprocessor as dp

    shim = types.SimpleNamespace(get_context=lambda *_: types.SimpleNamespace(Pool=multiprocessing.pool.ThreadPool))
    fe.multiprocessing = dp.multiprocessing = shim


def save_random_folder(trainer, plans: dict, dataset_json: dict) -> str:
    """Save an initialised nnU-Net trainer's network as its trained-model folder: random weights with the scale of
    trained ones (norm affines not all 1/0), ``checkpoint_final.pth`` by its own ``save_checkpoint``, plans.json and
    dataset.json beside; returns the folder (``<Trainer>__<Plans>__<configuration>``)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import save_json

    with torch.no_grad():
        for n, p in trainer.network.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    Path(trainer.output_folder).mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(os.path.join(trainer.output_folder, "checkpoint_final.pth"))
    save_json(plans, os.path.join(trainer.output_folder_base, "plans.json"), sort_keys=False)
    save_json(dataset_json, os.path.join(trainer.output_folder_base, "dataset.json"), sort_keys=False)
    return trainer.output_folder_base


def make_one(work: Path, kind: str, folds: list[int], shape: list[int], configs: list[str], dataset_id: int,
             test_shape: list[int] | None, test_spacing: list[float] | None, features: int,
             classes: int = 2, train_spacing: list[float] | None = None) -> dict:
    raw, pre, res = work / "raw", work / "preprocessed", work / "results"
    for d in (raw, pre, res):
        d.mkdir(parents=True, exist_ok=True)
    os.environ.update(nnUNet_raw=str(raw), nnUNet_preprocessed=str(pre), nnUNet_results=str(res))
    name = f"Dataset{dataset_id:03d}_{kind.upper()}"
    ds = raw / name
    (ds / "imagesTr").mkdir(parents=True, exist_ok=True)
    (ds / "labelsTr").mkdir(parents=True, exist_ok=True)
    spacing = train_spacing or ([0.8, 0.8, 3.0] if kind == "ct" else [1.0, 1.0, 1.2])
    for i in range(3):
        img, lab = _phantom(shape, spacing, kind, i)
        _save(ds / "imagesTr" / f"case{i}_0000.nii.gz", img, spacing, np.float32)
        _save(ds / "labelsTr" / f"case{i}.nii.gz", lab, spacing, np.uint8)
    (ds / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT" if kind == "ct" else "T2"},
        "labels": {"background": 0, "organ": 1, "lesion": 2,
                   **{f"structure_{i}": i for i in range(3, classes + 1)}},  # TotalSegmentator-like heads
        "numTraining": 3, "file_ending": ".nii.gz"}))
    test_spacing = test_spacing or ([0.7, 0.7, 2.5] if kind == "ct" else [0.9, 1.1, 1.3])
    img, _ = _phantom(test_shape or shape, test_spacing, kind, 99)
    test = work / f"test_{kind}_0000.nii.gz"
    _save(test, img, test_spacing, np.int16 if kind == "ct" else np.float32)

    import time

    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json, save_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    t0 = time.time()
    _in_process_pools()
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    print(f"fingerprint {time.time() - t0:.1f}s", file=sys.stderr)
    plans_id = plan_experiments([dataset_id])
    print(f"plan {time.time() - t0:.1f}s", file=sys.stderr)
    plans_path = pre / name / f"{plans_id}.json"
    plans = load_json(plans_path)
    for conf in plans["configurations"].values():  # smaller networks: same structure, fewer features
        kw = conf.get("architecture", {}).get("arch_kwargs")
        if kw and features:
            kw["features_per_stage"] = [min(features * 2 ** i, 8 * features) for i in range(kw["n_stages"])]
    save_json(plans, plans_path, sort_keys=False)
    configs = [c for c in configs if c in plans["configurations"]]
    preprocess([dataset_id], plans_id, configurations=configs, num_processes=[1] * len(configs), verbose=False)
    print(f"preprocess {time.time() - t0:.1f}s", file=sys.stderr)
    dataset_json = load_json(ds / "dataset.json")
    out = {"test_image": str(test), "folders": {}, "plans": plans_id}
    for conf in configs:
        for fold in folds:
            torch.manual_seed(fold + 17)
            trainer = nnUNetTrainer({**plans, "continue_training": False}, conf, fold, dataset_json,
                                    device=torch.device("cpu"))
            trainer.initialize()
            trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()  # sets the allowed mirroring axes
            out["folders"][conf] = save_random_folder(trainer, plans, dataset_json)
    return out


def make(work: Path, kinds: list[str], folds: list[int], shape: list[int], configs: list[str], dataset_id: int,
         test_shape: list[int] | None, test_spacing: list[float] | None, features: int, run_predictions: bool,
         classes: int = 2, train_spacing: list[float] | None = None) -> dict:
    """Model folders for every kind (datasets ``dataset_id``, ``dataset_id + 1`` ...), and optionally nnU-Net's
    predictions on each test image: mirroring on/off with float32 sliding-window sums, and as shipped (float16)."""
    out = {}
    for i, kind in enumerate(kinds):
        res = make_one(work, kind, folds, shape, configs, dataset_id + i, test_shape, test_spacing, features, classes,
                       train_spacing)
        if run_predictions:
            res["predictions"] = {}
            for conf, folder in res["folders"].items():
                res["predictions"][conf] = {
                    name: predict(folder, res["test_image"], str(work / "peer" / kind / conf / name), mirror, 0.5,
                                  None, fp32)
                    for name, mirror, fp32 in (("mirror", True, True), ("no_mirror", False, True),
                                               ("mirror_fp16", True, False))}
        out[kind] = res
    return out


def predict(folder: str, image: str, out: str, mirroring: bool, step: float, folds: list | None,
            fp32_accumulators: bool = False, probabilities: bool = True) -> dict:
    import nnunetv2.inference.predict_from_raw_data as pfr
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    if fp32_accumulators:  # nnU-Net's one deliberate precision loss: its logit and weight sums are float16
        class _Torch:
            half = torch.float32

            def __getattr__(self, name):
                return getattr(torch, name)

        pfr.torch = _Torch()
    else:
        pfr.torch = torch

    torch.set_num_threads(max(1, torch.get_num_threads()))
    predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(folder, use_folds=folds, checkpoint_name="checkpoint_final.pth")
    Path(out).mkdir(parents=True, exist_ok=True)
    name = Path(image).name.replace("_0000.nii.gz", "")
    predictor.predict_from_files_sequential([[image]], [str(Path(out) / name)], save_probabilities=probabilities,
                                            overwrite=True)
    return {"labels": str(Path(out) / f"{name}.nii.gz"), "probabilities": str(Path(out) / f"{name}.npz")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("work")
    m.add_argument("--kinds", nargs="+", choices=["ct", "mr"], default=["ct"])
    m.add_argument("--predict", action="store_true", help="also run nnUNetPredictor on each test image")
    m.add_argument("--folds", type=int, nargs="+", default=[0])
    m.add_argument("--shape", type=int, nargs=3, default=[40, 36, 14])
    m.add_argument("--test-shape", type=int, nargs=3)
    m.add_argument("--test-spacing", type=float, nargs=3)
    m.add_argument("--configs", nargs="+", default=["3d_fullres"])
    m.add_argument("--id", type=int, default=901)
    m.add_argument("--features", type=int, default=8, help="first-stage features (0: nnU-Net's plans untouched)")
    m.add_argument("--classes", type=int, default=2, help="foreground labels in dataset.json (network outputs - 1)")
    m.add_argument("--train-spacing", type=float, nargs=3, help="spacing of the training cases (the planned one)")
    p = sub.add_parser("predict")
    p.add_argument("folder")
    p.add_argument("image")
    p.add_argument("out")
    p.add_argument("--no-mirroring", action="store_true")
    p.add_argument("--step", type=float, default=0.5)
    p.add_argument("--folds", nargs="+")
    p.add_argument("--no-probabilities", action="store_true", help="write labels only")
    p.add_argument("--fp32-accumulators", action="store_true",
                   help="run nnU-Net's predictor with float32 instead of float16 sliding-window sums")
    a = ap.parse_args(argv)
    if a.cmd == "make":
        res = make(Path(a.work), a.kinds, a.folds, a.shape, a.configs, a.id, a.test_shape, a.test_spacing,
                   a.features, a.predict, a.classes, a.train_spacing)
    else:
        res = predict(a.folder, a.image, a.out, not a.no_mirroring, a.step, a.folds, a.fp32_accumulators,
                      not a.no_probabilities)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
