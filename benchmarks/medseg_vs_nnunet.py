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

4. ``--precision``: medseg once more per mirroring setting with ``--precision auto`` (``auto_precision``: what it
   chose on this CPU, from its notice; ``cpu_ratio_vs_nnunet_auto_mirror``/``..._no_mirror`` against the same
   nnU-Net runs) and once in bf16 without mirroring: ``bf16_speedup`` (medseg's fp32 CPU time / its bf16 CPU time on
   this network) and ``bf16_label_agreement_random_weights`` (labels equal to fp32's; random weights give near-ties
   and understate it). ``bf16_label_agreement`` comes from a TRAINED model: ``medseg synth`` phantoms, a small unet3d
   trained by ``medseg train`` (``--train-epochs``, CPU, one child), its test phantoms predicted in fp32 and bf16
   (``bf16_speedup_trained_model`` the CPU ratio there); :data:`medseg.cpu_precision.BF16_LABEL_AGREEMENT` records it.

Prints one line per run, then a JSON object last: ``cpu_ratio_vs_nnunet`` and ``rss_ratio_vs_nnunet`` (medseg /
nnU-Net, the smaller of each contender's runs, with mirroring and without: ``..._mirror``/``..._no_mirror``;
targets <= 0.9 and <= 0.6), the same ratios beyond what both share (a child that only imports torch and numpy,
measured in the same run: ``rss_beyond_import_ratio``, ``cpu_beyond_import_ratio``; reported, not the targets),
``max_prob_diff``, and the figures behind them.

    python benchmarks/medseg_vs_nnunet.py [--small] [--repeats 1] [--threads N] [--train-epochs 6]
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
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "medseg" / "nnunet_peer.py"


def _run(cmd: list[str], env: dict[str, str]) -> dict[str, Any]:
    """Run ``cmd`` as a child; CPU seconds (user + sys), peak RSS (MB) and wall seconds from ``wait4``, its stderr."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{cmd[:4]} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"cpu_s": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024, "wall_s": wall, "err": err}


def _labels(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj)


def _agreement(a: Path, b: Path) -> float:
    """Fraction of voxels with the same label in two label maps, or over the same-named files of two folders."""
    pairs = [(a, b)] if a.is_file() else [(p, b / p.name) for p in sorted(a.glob("*.nii.gz"))]
    same = total = 0
    for x, y in pairs:
        lx, ly = _labels(x), _labels(y)
        same, total = same + int((lx == ly).sum()), total + lx.size
    return same / max(1, total)


def _auto_choice(err: str) -> str:
    """What ``--precision auto`` chose, from medseg predict's notice line."""
    for line in err.splitlines():
        if "precision auto:" in line:
            return line.split("precision auto:", 1)[1].strip()
    return "fp32 (no notice)"


def trained_bf16(work: Path, env: dict[str, str], epochs: int, steps: int) -> dict[str, Any]:
    """Train a small unet3d on synthetic phantoms (``medseg synth`` + ``medseg train``, one child each) and predict
    its test phantoms in fp32 and in bf16: the label agreement and the CPU-time ratio."""
    data, model = work / "phantoms", work / "trained.pt"
    medseg = [sys.executable, "-m", "medseg.cli"]
    if not model.exists():
        if not data.exists():
            _run(medseg + ["synth", str(data), "--train", "8", "--test", "3", "--seed", "0", "--quiet"], env)
        t = _run(medseg + ["train", str(data), "-o", str(model), "--epochs", str(epochs), "--steps-per-epoch",
                           str(steps), "--batch-size", "2", "--optimizer", "adamw", "--lr", "5e-3", "--base-channels",
                           "8", "--patch", "16", "32", "32", "--folds", "3", "--device", "cpu", "--work-dir",
                           str(work / "train"), "--quiet"], env)
        print(f"trained phantom model in {t['wall_s']:.0f}s", file=sys.stderr)
    runs = {}
    for prec in ("fp32", "bf16"):
        runs[prec] = _run(medseg + ["predict", str(data / "imagesTs"), "-m", str(model), "-o", str(work / f"tr_{prec}"),
                                    "--device", "cpu", "--precision", prec, "--overwrite", "--quiet"], env)
    return {"bf16_label_agreement": round(_agreement(work / "tr_fp32", work / "tr_bf16"), 6),
            "bf16_speedup_trained_model": round(runs["fp32"]["cpu_s"] / runs["bf16"]["cpu_s"], 3),
            "trained_train_epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="quick run: 96 x 96 x 48 voxels")
    ap.add_argument("--shape", type=int, nargs=3, metavar=("X", "Y", "Z"), help="volume shape (default 256 256 160)")
    ap.add_argument("--repeats", type=int, default=1, help="runs per contender and mirroring setting")
    ap.add_argument("--threads", type=int, help="torch threads of both contenders (default: all cores)")
    ap.add_argument("--work", help="keep the model folder and outputs here (default: a temporary folder)")
    ap.add_argument("--train-epochs", type=int, help="epochs of the trained phantom model for bf16_label_agreement "
                                                     "(default 6, --small 2; 15 patch batches each)")
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
    # --precision auto (what it chose on this CPU, its CPU time against the same nnU-Net runs) and bf16
    auto = [m for m in medseg if m != "--quiet"]
    auto[auto.index("fp32")] = "auto"
    for key in results:
        results[key]["medseg_auto"] = []
        for r in range(a.repeats):
            res = _run(auto + ["-o", str(work / f"ms_auto_{key}_{r}.nii.gz"),
                               "--tta" if key == "mirror" else "--no-tta"], env)
            results[key]["medseg_auto"].append(res)
            print(f"{key:9s} auto   cpu {res['cpu_s']:7.1f}s  wall {res['wall_s']:7.1f}s  ({_auto_choice(res['err'])})",
                  file=sys.stderr)
    auto_choice = _auto_choice(results["no_mirror"]["medseg_auto"][0]["err"])
    bf16 = [m if m != "fp32" else "bf16" for m in medseg]
    bf16_runs = [_run(bf16 + ["-o", str(work / f"ms_bf16_{r}.nii.gz"), "--no-tta"], env) for r in range(a.repeats)]
    print(f"no_mirror bf16   cpu {min(r['cpu_s'] for r in bf16_runs):7.1f}s", file=sys.stderr)
    trained = trained_bf16(work, env, a.train_epochs or (2 if a.small else 6), 5 if a.small else 15)
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
    summary["auto_precision"] = auto_choice
    for key in results:
        summary[f"medseg_cpu_s_auto_{key}"] = round(best(key, "medseg_auto", "cpu_s"), 2)
        summary[f"cpu_ratio_vs_nnunet_auto_{key}"] = round(best(key, "medseg_auto", "cpu_s")
                                                           / best(key, "nnunet", "cpu_s"), 3)
    summary["cpu_ratio_vs_nnunet_auto"] = max(summary["cpu_ratio_vs_nnunet_auto_mirror"],  # type: ignore[type-var]
                                              summary["cpu_ratio_vs_nnunet_auto_no_mirror"])
    summary["medseg_cpu_s_bf16_no_mirror"] = round(min(r["cpu_s"] for r in bf16_runs), 2)
    summary["bf16_speedup"] = round(best("no_mirror", "medseg", "cpu_s") / min(r["cpu_s"] for r in bf16_runs), 3)
    summary["bf16_label_agreement_random_weights"] = round(
        _agreement(work / "ms_no_mirror_0.nii.gz", work / "ms_bf16_0.nii.gz"), 6)
    summary.update(trained)
    print(json.dumps(summary))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
