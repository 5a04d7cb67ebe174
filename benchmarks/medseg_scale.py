"""TotalSegmentator-scale prediction: 118 output classes on big CTs, ``medseg predict`` vs nnU-Net's own predictor.

1. A model folder made by nnU-Net itself (``tests/medseg/nnunet_peer.py make``): three CT-like training cases at
   1.5 mm, 117 foreground labels in dataset.json (118 network outputs, as TotalSegmentator's "total" parts have
   ~25-118), nnU-Net's fingerprint, planning (3d_fullres at 1.5 mm) and preprocessing, the planned network built by
   its trainer with random weights and optionally narrowed features (``--features``: first stage width, 32 is
   nnU-Net's own). The width matters for memory: when the last decoder stage has fewer features than there are
   classes, medseg blends and resamples those features, not the class scores (:class:`medseg.engine.SlabResampler`),
   so measure memory at 32; narrower widths only make the CPU runs shorter.
2. CT-like volumes of 512 x 512 x Z at 0.8 x 0.8 x 1.0 mm (``--slices``, default 75, 400 and 800: the issue's
   sizes plus a small one where nnU-Net still finishes, for the label agreement), int16 as scanners write them,
   generated slab by slab.
3. Per size, alternated, one child process each, no mirroring, fp32, under an address-space cap (``--cap-gb``,
   ``ulimit -v``) so the machine survives: ``nnUNetPredictor`` as shipped (float16 sums), nnU-Net with float32
   sums, and ``medseg predict``. Per run: CPU seconds (user + sys from ``wait4``), peak RSS (``ru_maxrss``), exit
   status and, when it fails, its last error line: what users see.

Targets (issue 21): medseg peak RSS <= 3 GB at 400 and 800 slices and growth between the two largest <= 1.2x;
CPU time <= 0.5x nnU-Net's; labels equal within 99.9% (against nnU-Net with float32 sums where it finishes, else as
shipped). Where nnU-Net's float32 variant cannot finish (118 classes: it needs a float32 copy of every class on
the input grid), ``label_agreement_exact`` compares against a float32 reference made by medseg's engine with float32
open rows, and ``nnunet_agreement_exact`` gives nnU-Net as shipped against the same reference. Prints one line per
run and one JSON object last: per size ``peak_rss_mb``, ``rss_ratio_vs_nnunet``, ``cpu_ratio_vs_nnunet``,
``label_agreement`` and the runs behind them.

    python benchmarks/medseg_scale.py [--slices 75 400 800] [--features 32] [--cap-gb 20] [--peers-up-to 75]
                                      [--work DIR] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "tests" / "medseg" / "nnunet_peer.py"


def _ct(path: Path, shape: tuple[int, int, int], spacing: tuple[float, float, float], seed: int = 7) -> None:
    """A CT-like int16 volume (air, a body ellipse, organs as blobs of other HU), written without ever holding a
    float copy of the whole volume."""
    import nibabel as nib

    rng = np.random.default_rng(seed)
    x, y = np.meshgrid(np.arange(shape[0]) * spacing[0], np.arange(shape[1]) * spacing[1], indexing="ij")
    cx, cy = shape[0] * spacing[0] / 2, shape[1] * spacing[1] / 2
    body = ((x - cx) / (0.42 * 2 * cx)) ** 2 + ((y - cy) / (0.34 * 2 * cy)) ** 2 < 1
    blobs = [(rng.uniform(0.3, 0.7) * 2 * cx, rng.uniform(0.3, 0.7) * 2 * cy, rng.uniform(0.1, 0.9),
              rng.uniform(15, 60), rng.uniform(-100, 250)) for _ in range(24)]
    data = np.empty(shape, dtype=np.int16)
    zlen = shape[2] * spacing[2]
    for k in range(shape[2]):
        z = k * spacing[2]
        sl = np.where(body, 40.0, -1000.0)
        for bx, by, bz, r, hu in blobs:
            rz = r ** 2 - (z - bz * zlen) ** 2
            if rz > 0:
                sl[((x - bx) ** 2 + (y - by) ** 2 < rz) & body] = hu
        sl += rng.normal(0, 12, sl.shape)
        data[:, :, k] = np.clip(sl, -1024, 3071).astype(np.int16)
    aff = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
    nib.save(nib.Nifti1Image(data, aff), str(path))


def _run(cmd: list[str], env: dict[str, str], cap_gb: float) -> dict[str, Any]:
    """One child under an address-space cap: CPU seconds, peak RSS (MB), wall seconds, exit code, last error line."""
    cap = int(cap_gb * (1 << 30))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    t0 = time.perf_counter()
    with tempfile.TemporaryFile() as err_file:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err_file, preexec_fn=limit)
        _, status, ru = os.wait4(proc.pid, 0)
        err_file.seek(0)
        err = err_file.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(status)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return {"cpu_s": round(ru.ru_utime + ru.ru_stime, 1), "rss_mb": round(ru.ru_maxrss / 1024),
            "wall_s": round(time.perf_counter() - t0, 1), "exit": code,
            "error": (lines[-1][:300] if lines else "") if code else None}


def _labels(path: Path) -> np.ndarray | None:
    import nibabel as nib

    return np.asanyarray(nib.load(str(path)).dataobj) if path.is_file() else None


def _exact_agreement(work: Path, folder: str, ct: Path, z: int, ours: np.ndarray) -> dict[str, float]:
    """Where nnU-Net's float32-sum variant cannot finish: the float32 reference made in a child by medseg's engine
    with float32 open rows (the arithmetic of blending the whole volume at once in float32), labels cached in
    ``--work``. ``label_agreement_exact``: medseg (its default accumulators) against it;
    ``nnunet_agreement_exact``: nnU-Net as shipped against it (its own float16 rounding)."""
    out = work / f"exact_{z}.nii.gz"
    if not out.exists():
        code = ("import sys, nibabel as nib, numpy as np\n"
                "from medseg.io import read_case\nfrom medseg.predict import load_models\n"
                "from medseg.nnunet import predict_nnunet\n"
                "m = load_models([sys.argv[1]], 'cpu', 'fp32')[0]\ncase = read_case(sys.argv[2], native=True)\n"
                "lab = predict_nnunet(case, m, mirror=False, acc_dtype='float32')['labels']\n"
                "nib.save(nib.Nifti1Image(lab.astype(np.uint8), case.affine), sys.argv[3])\n")
        subprocess.run([sys.executable, "-c", code, folder, str(ct), str(out)], check=True)
    exact = _labels(out)
    nn = _labels(work / f"nn_{z}" / f"ct_{z}.nii.gz")
    res = {"label_agreement_exact": round(float((ours == exact).mean()), 6)}
    if nn is not None:
        res["nnunet_agreement_exact"] = round(float((nn == exact).mean()), 6)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, nargs="+", default=[75, 400, 800],
                    help="Z of the 512 x 512 x Z CTs (the smallest: where nnU-Net still finishes, for label agreement)")
    ap.add_argument("--features", type=int, default=8, help="first-stage features of the network (8: 8..64)")
    ap.add_argument("--classes", type=int, default=117, help="foreground classes (network outputs - 1)")
    ap.add_argument("--cap-gb", type=float, default=20.0, help="address-space cap of every child (GB)")
    ap.add_argument("--reference-cap-gb", type=float, default=22.0,
                    help="cap of the float32-sum nnU-Net run (the agreement reference, small size only)")
    ap.add_argument("--plane", type=int, default=512, help="in-plane size of the CTs")
    ap.add_argument("--fp32-nnunet-up-to", type=int, default=100,
                    help="run nnU-Net with float32 sums (the agreement reference) only up to this many slices")
    ap.add_argument("--peers-up-to", type=int,
                    help="run nnU-Net only up to this many slices (it fails on the larger ones in its export, after "
                         "every window: an earlier run's figures, --work of another width, show where)")
    ap.add_argument("--work", help="keep the model folder, volumes and outputs here")
    ap.add_argument("--rerun-peers", action="store_true", help="rerun nnU-Net even if --work holds its runs")
    ap.add_argument("--rerun-medseg", action="store_true",
                    help="rerun medseg even if --work holds a finished run of it (a failed one is always rerun)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 12 classes, 128 x 128 x (48, 96)")
    a = ap.parse_args(argv)
    if a.quick:
        a.slices, a.classes, a.plane, a.features, a.fp32_nnunet_up_to = [48, 96], 12, 128, 4, 96
    work = Path(a.work or tempfile.mkdtemp(prefix="medseg_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "")}
    env = {k: v for k, v in env.items() if v}
    made = work / "made.json"
    if not made.exists():
        train = [96, 96, 96] if a.quick else [200, 200, 200]
        out = subprocess.run([sys.executable, str(PEER), "make", str(work / "nnunet"), "--kinds", "ct",
                              "--shape", *map(str, train), "--train-spacing", "1.5", "1.5", "1.5",
                              "--classes", str(a.classes), "--features", str(a.features), "--id", "961"],
                             env=env, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"nnU-Net could not make the model folder:\n{out.stderr[-2000:]}")
        made.write_text(out.stdout.strip().splitlines()[-1])
    folder = json.loads(made.read_text())["ct"]["folders"]["3d_fullres"]
    plans = json.loads((Path(folder) / "plans.json").read_text())["configurations"]["3d_fullres"]
    print(f"model: {folder}; 3d_fullres spacing {plans['spacing']}, patch {plans['patch_size']}, "
          f"{a.classes + 1} outputs", file=sys.stderr)
    medseg = [sys.executable, "-m", "medseg.cli", "predict"]
    results: dict[str, Any] = {}
    for z in a.slices:
        ct = work / f"ct_{z}_0000.nii.gz"
        if not ct.exists():
            _ct(ct, (a.plane, a.plane, z), (0.8, 0.8, 1.0))
        runs: dict[str, dict[str, Any]] = {}
        contenders = [("nnunet", [sys.executable, str(PEER), "predict", folder, str(ct), str(work / f"nn_{z}"),
                                  "--no-mirroring", "--no-probabilities", "--folds", "0"])]
        if a.peers_up_to is not None and z > a.peers_up_to:
            contenders = []
        elif z <= a.fp32_nnunet_up_to:
            contenders.append(("nnunet_fp32", [sys.executable, str(PEER), "predict", folder, str(ct),
                                               str(work / f"nn32_{z}"), "--no-mirroring", "--no-probabilities",
                                               "--folds", "0", "--fp32-accumulators"]))
        contenders.insert(1, ("medseg", medseg + [str(ct), "-m", folder, "-o", str(work / f"medseg_{z}.nii.gz"),
                                                  "--no-tta", "--device", "cpu", "--precision", "fp32",
                                                  "--overwrite", "--quiet"]))
        for name, cmd in contenders:
            cached = work / f"run_{name}_{z}.json"          # the peers' runs do not change between medseg versions
            again = a.rerun_medseg if name == "medseg" else a.rerun_peers
            if cached.exists() and not again and (name != "medseg" or json.loads(cached.read_text())["exit"] == 0):
                runs[name] = r = json.loads(cached.read_text())
            else:
                runs[name] = r = _run(cmd, env, a.reference_cap_gb if name == "nnunet_fp32" else a.cap_gb)
                cached.write_text(json.dumps(r))
            print(f"Z={z} {name:12s} cpu {r['cpu_s']:8.1f}s  peak {r['rss_mb']:7d} MB  exit {r['exit']}"
                  + (f"  ({r['error']})" if r["error"] else ""), file=sys.stderr)
        ours = _labels(work / f"medseg_{z}.nii.gz")
        ref_name = next((n for n in ("nnunet_fp32", "nnunet") if n in runs and runs[n]["exit"] == 0), None)
        agreement = None
        if ours is not None and ref_name is not None:
            ref = _labels(work / (f"nn32_{z}" if ref_name == "nnunet_fp32" else f"nn_{z}") / f"ct_{z}.nii.gz")
            agreement = round(float((ours == ref).mean()), 6) if ref is not None else None
        exact = None
        if ours is not None and "nnunet" in runs and runs.get("nnunet_fp32", {}).get("exit", 0) != 0:
            exact = _exact_agreement(work, folder, ct, z, ours)
        nn = runs.get("nnunet")
        results[str(z)] = {
            "peak_rss_mb": runs["medseg"]["rss_mb"],
            "rss_ratio_vs_nnunet": round(runs["medseg"]["rss_mb"] / nn["rss_mb"], 3) if nn else None,
            "cpu_ratio_vs_nnunet": round(runs["medseg"]["cpu_s"] / nn["cpu_s"], 3) if nn and nn["exit"] == 0 else None,
            "nnunet_finished": nn["exit"] == 0 if nn else None,
            "label_agreement": agreement, "label_reference": ref_name, "runs": runs, **(exact or {})}
    sizes = [str(z) for z in a.slices]
    peaks = [results[s]["peak_rss_mb"] for s in sizes]
    summary = {
        "classes": a.classes + 1, "plane": a.plane, "features": a.features, "cap_gb": a.cap_gb,
        "patch": plans["patch_size"], "spacing": plans["spacing"], "per_size": results,
        "rss_growth": round(peaks[-1] / peaks[-2], 3) if len(peaks) > 1 else None,
        "rss_growth_sizes": sizes[-2:],
        "targets": {"peak_rss_mb": 3072, "rss_growth": 1.2, "cpu_ratio_vs_nnunet": 0.5, "label_agreement": 0.999},
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
