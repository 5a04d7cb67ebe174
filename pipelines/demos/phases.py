"""Demo part for medseg phases: synthetic colonoscopy procedures, ColonTCN trained on held-out-centre folds,
prediction of a held-out procedure with segments, withdrawal time and timeline PNG."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from medseg.phases.io import label_path, load_features, load_labels
from medseg.phases.predict import PhaseModel, predict_video
from medseg.phases.synthetic import write_dataset

from ..phases import train_phases
from . import DemoResult


def run(out_dir: Path, *, quick: bool = False, quiet: bool = False) -> DemoResult:
    start = time.perf_counter()
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    data = write_dataset(out_dir / "data", n_videos=8 if quick else 16, dim=64, seed=0)
    res = train_phases(data, out_dir / "colontcn.pt", arch_kwargs={"num_blocks": 10}, folds=4, fold=0,
                       groups=data / "groups.csv", epochs=2 if quick else 30, accelerator="cpu", devices=1,
                       seed=0, quiet=quiet, overwrite=True)[0]
    pm = PhaseModel.from_file(res.model_file, "cpu", "fp32")
    vid = "c0_v000"  # centre 0 is the held-out centre of fold 0
    s = predict_video(pm, load_features(data / "features" / f"{vid}.npy", expected_dim=pm.in_features),
                      data / "features" / f"{vid}.npy", out_dir / "predictions",
                      reference=load_labels(label_path(data / "labels", vid), pm.classes), overwrite=True)
    m = res.metrics
    return DemoResult(pipeline="phases", figures={"accuracy": m["accuracy"], "edit": m["edit"], "f1@50": m["f1@50"],
                                                  "withdrawal_err_s": m.get("withdrawal_error_s", float("nan"))},
                      targets={"accuracy": ">= 80"}, outputs=[s["outputs"]["timeline"], s["outputs"]["segments"]],
                      seconds=time.perf_counter() - start, not_judged=["accuracy"] if quick else [],
                      notes="held-out centre (fold 0 of leave-one-centre-out), synthetic procedures, 64-d features")
