"""Run TotalSegmentator's own CLI offline on random-weight model folders with the names and plans it expects.

Run as a separate process (nnU-Net and TotalSegmentator read their folder variables at import time)::

    python totalseg_peer.py WORK

TotalSegmentator's task "total" runs five nnU-Net v2 3d_fullres folders (datasets 291..295, trainer
``nnUNetTrainerNoMirroring``, plans ``nnUNetPlans``, fold 0) found under ``$TOTALSEG_HOME_DIR/nnunet/results`` and
downloads only what is missing there. This script plans one tiny CT dataset at 1.5 mm with nnU-Net's own fingerprint
extraction and planner (features narrowed), builds each part's network with nnU-Net's own trainer class (random
weights, output channels = the part's classes from TotalSegmentator's ``class_map_5_parts``), saves it with the
trainer's ``save_checkpoint`` under TotalSegmentator's folder names, writes a test CT at 1.5 mm (RAS, whole numbers,
so its own resampling to 1.5 mm is the identity), runs ``TotalSegmentator -i ct.nii.gz -o ts.nii.gz --ml -ta total
-d cpu`` and again with nnU-Net's sliding-window sums in float32 instead of float16 (``ts_fp32.nii.gz``), and writes
the matching medseg task file (``total.yaml``: the five folders, TotalSegmentator's class values
and names, overlap ``last``). It prints one JSON object: the image, the task file, TotalSegmentator's label map, its
class map and the classes of each part.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

PARTS = {291: "organs", 292: "vertebrae", 293: "cardiac", 294: "muscles", 295: "ribs"}
TRAINER, PLANS, CONF = "nnUNetTrainerNoMirroring", "nnUNetPlans", "3d_fullres"
SPACING = 1.5


def _ct(shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU, whole numbers: air around a body with organ blobs) and blob labels."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    c = np.array(shape, np.float32)[:, None, None, None] / 2
    body = (((grid - c) / (c * 0.85)) ** 2)[:2].sum(0) < 1
    img = np.where(body, 40.0, -1000.0) + rng.normal(0, 20, shape)
    lab = np.zeros(shape, np.uint8)
    for k in range(1, 4):
        centre = np.array(shape) * rng.uniform(0.3, 0.7, 3)
        blob = (((grid - centre[:, None, None, None]) / (np.array(shape)[:, None, None, None] * 0.15)) ** 2).sum(0) < 1
        img[blob & body] += 150 * k
        lab[blob & body] = k
    return np.round(img).astype(np.int16), lab


def _save(path: Path, data: np.ndarray, dtype) -> None:
    import nibabel as nib

    aff = np.diag([SPACING, SPACING, SPACING, 1.0])
    aff[:3, 3] = [-30.0, -25.0, 10.0]
    nib.save(nib.Nifti1Image(data.astype(dtype), aff), str(path))


def make_weights(work: Path, weights: Path) -> dict[str, str]:
    """Plan a tiny 1.5 mm CT dataset with nnU-Net and save one random-weight folder per part of "total"."""
    os.environ.update(nnUNet_raw=str(work / "raw"), nnUNet_preprocessed=str(work / "preprocessed"),
                      nnUNet_results=str(weights))
    sys.path.insert(0, str(Path(__file__).parent))
    from nnunet_peer import (  # nnU-Net's pools as threads: no interpreters re-importing torch
        _in_process_pools,
        save_random_folder,
    )

    name, dataset_id = "Dataset990_TotalPlan", 990
    raw = work / "raw" / name
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir(parents=True)
    for i in range(2):
        img, lab = _ct((40, 36, 32), i)
        _save(raw / "imagesTr" / f"case{i}_0000.nii.gz", img, np.int16)
        _save(raw / "labelsTr" / f"case{i}.nii.gz", lab, np.uint8)
    (raw / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "numTraining": 2,
                                                  "labels": {"background": 0, "a": 1, "b": 2, "c": 3},
                                                  "file_ending": ".nii.gz"}))
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments
    from nnunetv2.training.nnUNetTrainer.variants.data_augmentation.nnUNetTrainerNoMirroring import (
        nnUNetTrainerNoMirroring,
    )
    from totalsegmentator.map_tasks_config import TASK_ID_WEIGHTS_CONFIGS
    from totalsegmentator.map_to_binary import class_map_5_parts, map_taskid_to_partname_ct

    _in_process_pools()
    extract_fingerprints([dataset_id], num_processes=1, check_dataset_integrity=False, clean=True, verbose=False)
    plans_id = plan_experiments([dataset_id])
    assert plans_id == PLANS, plans_id
    plans = load_json(work / "preprocessed" / name / f"{plans_id}.json")
    kw = plans["configurations"][CONF]["architecture"]["arch_kwargs"]
    kw["features_per_stage"] = [min(4 * 2 ** i, 32) for i in range(kw["n_stages"])]
    assert plans["configurations"][CONF]["spacing"] == [SPACING] * 3, plans["configurations"][CONF]["spacing"]
    folders = {}
    for tid, part in PARTS.items():
        folder_name = TASK_ID_WEIGHTS_CONFIGS[tid]["foldername"]
        names = class_map_5_parts[map_taskid_to_partname_ct[tid]]
        dataset_json = {"channel_names": {"0": "CT"}, "file_ending": ".nii.gz", "numTraining": 2,
                        "labels": {"background": 0, **{n: int(v) for v, n in sorted(names.items())}}}
        part_plans = {**plans, "dataset_name": folder_name}
        # the trainer infers its (training) dataset class from the preprocessed files' ending; none are read here
        pre = work / "preprocessed" / folder_name / f"{PLANS}_{CONF}"
        pre.mkdir(parents=True)
        (pre / "case0.b2nd").touch()
        torch.manual_seed(tid)
        trainer = nnUNetTrainerNoMirroring({**part_plans, "continue_training": False}, CONF, 0, dataset_json,
                                           device=torch.device("cpu"))
        trainer.initialize()
        folders[part] = save_random_folder(trainer, part_plans, dataset_json)
        assert Path(folders[part]).name == f"{TRAINER}__{PLANS}__{CONF}"  # where it looks
    return folders


def run_totalsegmentator(argv: list[str]) -> None:
    """TotalSegmentator's CLI entry point (``TotalSegmentator ARGS``) in this process, with nnU-Net's predictor
    running its sequential variant (``predict_from_files_sequential``, as TotalSegmentator patches it: the same
    preprocessing, prediction and export) instead of worker processes that re-import torch and poll with sleeps
    (minutes on a busy 2-core machine)."""
    from totalsegmentator.config import setup_nnunet

    setup_nnunet()  # before nnU-Net is imported, as TotalSegmentator's own API does
    import totalsegmentator.nnunet  # noqa: F401  (installs its runtime patches of nnU-Net's predictor)
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from totalsegmentator.bin.TotalSegmentator import main as cli

    def sequential(self, source, output, save_probabilities=False, overwrite=True,
                   folder_with_segs_from_prev_stage=None, num_parts=1, part_id=0,
                   use_cropped_logits_resampling=False, **_worker_counts):
        assert num_parts == 1 and part_id == 0
        return self.predict_from_files_sequential(source, output, save_probabilities, overwrite,
                                                  folder_with_segs_from_prev_stage,
                                                  use_cropped_logits_resampling=use_cropped_logits_resampling)

    setattr(nnUNetPredictor, "predict_from_files", sequential)  # noqa: B010
    old = sys.argv
    sys.argv = ["TotalSegmentator", *argv]
    try:
        cli()
    finally:
        sys.argv = old


def main(argv: list[str] | None = None) -> int:
    work = Path((argv or sys.argv[1:])[0]).resolve()
    home = work / "totalseg_home"
    weights = home / "nnunet" / "results"
    weights.mkdir(parents=True)
    # offline and quiet: no usage statistics sent, the disclaimer already shown
    (home / "config.json").write_text(json.dumps({"totalseg_id": "totalseg_TEST0000", "send_usage_stats": False,
                                                  "prediction_counter": 0, "statistics_disclaimer_shown": True}))
    t0 = time.time()
    folders = make_weights(work, weights)
    print(f"weights {time.time() - t0:.1f}s", file=sys.stderr)
    img, _ = _ct((44, 38, 34), 7)
    image = work / "ct.nii.gz"
    _save(image, img, np.int16)
    out = work / "ts.nii.gz"
    os.environ["TOTALSEG_HOME_DIR"] = str(home)
    argv = ["-i", str(image), "--ml", "-ta", "total", "-d", "cpu", "-nr", "1", "-ns", "1", "-q"]
    run_totalsegmentator([*argv, "-o", str(out)])
    print(f"TotalSegmentator {time.time() - t0:.1f}s", file=sys.stderr)
    # again with nnU-Net's one deliberate precision loss undone: its sliding-window sums in float32, not float16
    import nnunetv2.inference.predict_from_raw_data as pfr
    import torch

    class _Float32Sums:
        half = torch.float32

        def __getattr__(self, name):
            return getattr(torch, name)

    pfr.torch = _Float32Sums()
    out32 = work / "ts_fp32.nii.gz"
    run_totalsegmentator([*argv, "-o", str(out32)])
    print(f"TotalSegmentator (float32 sums) {time.time() - t0:.1f}s", file=sys.stderr)
    from totalsegmentator.map_to_binary import class_map, class_map_5_parts, map_taskid_to_partname_ct

    where = {n: (PARTS[tid], n) for tid in PARTS for n in class_map_5_parts[map_taskid_to_partname_ct[tid]].values()}
    lines = ["# TotalSegmentator's task 'total' (v2): five nnU-Net folders, parts written over each other in order",
             "name: total", "overlap: last", "folders:"]
    lines += [f"  {part}: {os.path.relpath(folders[part], work)}" for part in PARTS.values()]
    lines += ["classes:"] + [f"  {v}: {where[n][0]}/{n}" for v, n in sorted(class_map["total"].items())]
    task = work / "total.yaml"
    task.write_text("\n".join(lines) + "\n")
    print(json.dumps({"image": str(image), "task": str(task), "totalseg": str(out), "totalseg_fp32": str(out32),
                      "class_map": {str(k): v for k, v in class_map["total"].items()},
                      "parts": {PARTS[t]: sorted(class_map_5_parts[map_taskid_to_partname_ct[t]].values())
                                for t in PARTS}}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
