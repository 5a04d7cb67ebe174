"""``medseg predict`` vs nnU-Net's own predictor on the same nnU-Net v2 model folder: CPU time and peak RAM.

1. A model folder made by nnU-Net itself (``tests/medseg/nnunet_peer.py make``: nnU-Net's fingerprint extraction,
   experiment planning and preprocessing on three CT-like phantoms, the 3d_fullres network nnU-Net plans for them
   built by its trainer with random weights, saved by its ``save_checkpoint``), untouched plans.
2. The same CT-like volume (default 256 x 256 x 160 voxels at the planned spacing) predicted on the CPU in fp32,
   step 0.5, by ``nnUNetPredictor.predict_from_files_sequential`` (one process, as shipped) and by
   ``medseg predict -m FOLDER`` (the console script), with and without mirroring. Each run is a fresh child
   process; runs alternate (nnU-Net, medseg, nnU-Net, medseg ...) so load changes hit both alike. Per run: CPU time
   (user + system of the child, from ``wait4``) and peak RSS (``ru_maxrss`` of the child).
3. One more pair without mirroring saves probabilities, plus nnU-Net once more with its sliding-window sums in
   float32 instead of float16: ``max_prob_diff`` is the largest difference to that run (the pipelines' agreement),
   ``max_prob_diff_vs_fp16_nnunet`` to nnU-Net as shipped (its float16 rounding) and ``label_agreement``.

Prints one line per run, then a JSON object last: ``cpu_ratio_vs_nnunet`` and ``rss_ratio_vs_nnunet`` (medseg /
nnU-Net, the smaller of each contender's runs, with mirroring and without: ``..._mirror``/``..._no_mirror``;
targets <= 0.9 and <= 0.6), the same ratios beyond what both share (a child that only imports torch and numpy,
measured in the same run: ``rss_beyond_import_ratio``, ``cpu_beyond_import_ratio``; reported, not the targets),
``max_prob_diff``, and the figures behind them.

    python benchmarks/medseg_vs_nnunet.py [--small] [--repeats 1] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "medseg" / "nnunet_peer.py"


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, float]:
    """Run ``cmd`` as a child; CPU seconds (user + sys), peak RSS (MB) and wall seconds from ``wait4``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024, "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="quick run: 96 x 96 x 48 voxels")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="volume shape (default 256 256 160)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per contender and mirroring setting")
    ap.add_argument("--threads", type=int, help="torch threads of both contenders (default: all cores)")
    ap.add_argument("--work", help="keep the model folder and outputs here (default: a temporary folder)")
    a = ap.parse_args(argv)
    shape = a.shape or ([96, 96, 48] if a.small else [256, 256, 160])
    tmp = tempfile.TemporaryDirectory() if not a.work else None
    work = Path(a.work or tmp.name)  # type: ignore[union-attr]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if a.threads:
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    made = work / "made.json"
    if not made.exists():
        out = subprocess.run([sys.executable, str(PEER), "make", str(work / "nnunet"), "--kinds", "ct", "--folds",
                              "0", "--configs", "3d_fullres", "--features", "0", "--shape", *map(str, shape),
                              "--test-spacing", "0.8", "0.8", "3.0"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        made.write_text(out.stdout.strip().splitlines()[-1])
    info = json.loads(made.read_text())["ct"]
    folder, image = info["folders"]["3d_fullres"], info["test_image"]
    medseg = [sys.executable, "-m", "medseg.cli", "predict", image, "-m", folder, "--device", "cpu", "--precision",
              "fp32", "--overwrite", "--quiet"]
    nnunet = [sys.executable, str(PEER), "predict", folder, image]
    # what both contenders share: the interpreter with torch and numpy imported (measured in the same run)
    base = [_run([sys.executable, "-c", "import numpy, torch"], env) for _ in range(max(1, a.repeats))]
    base_rss = min(r["rss_mb"] for r in base)
    base_cpu = min(r["cpu_s"] for r in base)
    print(f"import torch baseline cpu {base_cpu:5.1f}s  peak RSS {base_rss:7.0f} MB", file=sys.stderr)
    results: dict[str, dict[str, list[dict[str, float]]]] = {}
    for mirror in (True, False):
        key = "mirror" if mirror else "no_mirror"
        results[key] = {"nnunet": [], "medseg": []}
        for r in range(a.repeats):
            runs = {
                "nnunet": nnunet + [str(work / f"nn_{key}_{r}"), "--no-probabilities"]
                + ([] if mirror else ["--no-mirroring"]),
                "medseg": medseg + ["-o", str(work / f"ms_{key}_{r}.nii.gz"), "--tta" if mirror else "--no-tta"],
            }
            for name, cmd in runs.items():
                res = _run(cmd, env)
                results[key][name].append(res)
                print(f"{key:9s} {name:6s} cpu {res['cpu_s']:7.1f}s  wall {res['wall_s']:7.1f}s  "
                      f"peak RSS {res['rss_mb']:7.0f} MB", file=sys.stderr)
    # probabilities of one pair (no mirroring) for the agreement figure
    _run(nnunet + [str(work / "nn_probs"), "--no-mirroring"], env)
    _run(nnunet + [str(work / "nn_probs32"), "--no-mirroring", "--fp32-accumulators"], env)
    _run(medseg + ["-o", str(work / "ms_probs.nii.gz"), "--no-tta", "--save-probabilities"], env)
    import nibabel as nib

    name = Path(image).name.replace("_0000.nii.gz", "")
    ref = np.load(work / "nn_probs" / f"{name}.npz")["probabilities"]
    ours = np.asanyarray(nib.load(str(work / "ms_probs_probabilities.nii.gz")).dataobj).transpose(3, 2, 1, 0)
    ref32 = np.load(work / "nn_probs32" / f"{name}.npz")["probabilities"]
    ref_lab = np.asanyarray(nib.load(str(work / "nn_probs" / f"{name}.nii.gz")).dataobj)
    our_lab = np.asanyarray(nib.load(str(work / "ms_probs.nii.gz")).dataobj)

    def best(key: str, name: str, field: str) -> float:
        return min(r[field] for r in results[key][name])

    summary: dict[str, object] = {"shape": shape, "folder": folder if a.work else None,
                                  "import_torch_rss_mb": round(base_rss), "import_torch_cpu_s": round(base_cpu, 2)}
    for key in results:
        summary[f"nnunet_cpu_s_{key}"] = round(best(key, "nnunet", "cpu_s"), 2)
        summary[f"medseg_cpu_s_{key}"] = round(best(key, "medseg", "cpu_s"), 2)
        summary[f"nnunet_rss_mb_{key}"] = round(best(key, "nnunet", "rss_mb"))
        summary[f"medseg_rss_mb_{key}"] = round(best(key, "medseg", "rss_mb"))
        summary[f"cpu_ratio_vs_nnunet_{key}"] = round(best(key, "medseg", "cpu_s") / best(key, "nnunet", "cpu_s"), 3)
        summary[f"rss_ratio_vs_nnunet_{key}"] = round(best(key, "medseg", "rss_mb") / best(key, "nnunet", "rss_mb"), 3)
        # the same ratios beyond the shared baseline (interpreter + torch import); the targets stay the ones above
        summary[f"rss_beyond_import_ratio_{key}"] = round(
            (best(key, "medseg", "rss_mb") - base_rss) / max(1e-9, best(key, "nnunet", "rss_mb") - base_rss), 3)
        summary[f"cpu_beyond_import_ratio_{key}"] = round(
            (best(key, "medseg", "cpu_s") - base_cpu) / max(1e-9, best(key, "nnunet", "cpu_s") - base_cpu), 3)
        summary[f"wall_ratio_vs_nnunet_{key}"] = round(best(key, "medseg", "wall_s") / best(key, "nnunet", "wall_s"), 3)
    summary["cpu_ratio_vs_nnunet"] = max(summary["cpu_ratio_vs_nnunet_mirror"],  # type: ignore[type-var]
                                         summary["cpu_ratio_vs_nnunet_no_mirror"])
    summary["rss_ratio_vs_nnunet"] = max(summary["rss_ratio_vs_nnunet_mirror"],  # type: ignore[type-var]
                                         summary["rss_ratio_vs_nnunet_no_mirror"])
    summary["rss_beyond_import_ratio"] = max(summary["rss_beyond_import_ratio_mirror"],  # type: ignore[type-var]
                                             summary["rss_beyond_import_ratio_no_mirror"])
    summary["cpu_beyond_import_ratio"] = max(summary["cpu_beyond_import_ratio_mirror"],  # type: ignore[type-var]
                                             summary["cpu_beyond_import_ratio_no_mirror"])
    summary["max_prob_diff"] = float(np.abs(ours - ref32).max())  # vs nnU-Net with float32 window sums
    summary["max_prob_diff_vs_fp16_nnunet"] = float(np.abs(ours - ref).max())  # vs nnU-Net as shipped
    summary["label_agreement"] = float((our_lab == ref_lab).mean())
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
