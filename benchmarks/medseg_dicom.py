"""medseg DICOM input and DICOM SEG output: reading a CT series vs dcm2niix, memory while reading, SEG writing time.

1. A CT-like series (int16 slices, RescaleIntercept -1024, an oblique orientation, shuffled file names) written with
   pydicom is read by ``medseg.dicom.read_series`` (folder, and the same files in a zip) and converted by dcm2niix
   (the reference converter, ``-z n``) followed by ``nibabel`` loading the NIfTI as float32, the path a user takes
   without DICOM support. Interleaved repeats, fastest of N -> ``read_speed_ratio_vs_dcm2niix`` (dcm2niix + load time
   / ours; target >= 1) and ``zip_over_folder``. The two results are compared: ``max_affine_diff_mm`` and
   ``voxels_equal``.
2. Peak memory allocated while reading (tracemalloc, one extra run) over the float32 volume's size ->
   ``read_peak_over_volume`` (one slice file in memory at a time: target <= 1.2).
3. Writing a BINARY DICOM SEG of a label map with ``--classes`` classes (blobs on every slice) ->
   ``seg_write_s`` and ``seg_mb``.

Defaults (2 CPU cores, about a minute): 512 x 512 x 120 slices, 5 classes.

    python benchmarks/medseg_dicom.py [--slices 120] [--size 512] [--classes 5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np

from shared_backbones.timing import time_interleaved


def write_ct(folder: Path, slices: int, size: int) -> None:
    """An oblique CT series: a water cylinder with a denser core, 0.7 mm pixels, 1.25 mm slices."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    c, s = np.cos(np.radians(12)), np.sin(np.radians(12))
    row, col = np.array([c, s, 0.0]), np.array([-s, c, 0.0])
    normal = np.cross(row, col)
    yy, xx = np.mgrid[:size, :size]
    r2 = (yy - size / 2) ** 2 + (xx - size / 2) ** 2
    base = np.where(r2 < (size * 0.4) ** 2, 1024, 0) + np.where(r2 < (size * 0.1) ** 2, 300, 0)
    rng = np.random.default_rng(0)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    for k, name in enumerate(rng.permutation(slices)):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop = generate_uid()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = CTImageStorage, sop, "CT"
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Bench^CT", "B1", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID = "20240101", "120000", "1"
        ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
        ds.Manufacturer, ds.SeriesNumber, ds.InstanceNumber = "bench", 2, int(name) + 1
        ds.ImageOrientationPatient = [f"{v:.8f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.6f}" for v in np.array([-180.0, -180.0, -300.0]) + normal * 1.25 * k]
        ds.PixelSpacing, ds.SliceThickness = ["0.7", "0.7"], "1.25"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = "1", "-1024"
        ds.PixelData = (base + rng.integers(-20, 20, base.shape)).astype(np.int16).tobytes()
        pydicom.dcmwrite(folder / f"{int(name):05d}.dcm", ds, enforce_file_format=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--slices", type=int, default=120, help="slices in the series")
    ap.add_argument("--size", type=int, default=512, help="rows = columns of each slice")
    ap.add_argument("--classes", type=int, default=5, help="classes of the label map written as a SEG")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (fastest counts)")
    args = ap.parse_args()

    import nibabel as nib

    from medseg.dicom import read_dicom_case, read_series, write_dicom_seg

    dcm2niix = shutil.which("dcm2niix") or str(Path(sys.executable).with_name("dcm2niix"))
    summary: dict[str, object] = {"benchmark": "medseg_dicom", "slices": args.slices, "size": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        series = tmp_path / "ct"
        write_ct(series, args.slices, args.size)
        archive = tmp_path / "ct.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
            for p in sorted(series.iterdir()):
                zf.write(p, f"ct/{p.name}")
        runs = {"n": 0}

        def via_dcm2niix() -> np.ndarray:
            runs["n"] += 1
            out = tmp_path / f"nii{runs['n']}"
            out.mkdir()
            subprocess.run([dcm2niix, "-f", "ct", "-z", "n", "-o", str(out), str(series)], check=True,
                           capture_output=True)
            img = nib.load(str(out / "ct.nii"))
            data = img.get_fdata(dtype=np.float32)
            shutil.rmtree(out)
            return data

        times = time_interleaved({
            "ours": lambda: read_series(series),
            "ours_zip": lambda: read_series(archive),
            "dcm2niix": via_dcm2niix,
        }, args.repeats)
        ours = read_series(series)
        ref_dir = tmp_path / "ref"
        ref_dir.mkdir()
        subprocess.run([dcm2niix, "-f", "ct", "-z", "n", "-o", str(ref_dir), str(series)], check=True,
                       capture_output=True)
        ref = nib.load(str(ref_dir / "ct.nii"))
        summary.update({
            "read_s": round(times["ours"], 3),
            "read_zip_s": round(times["ours_zip"], 3),
            "dcm2niix_plus_load_s": round(times["dcm2niix"], 3),
            "read_speed_ratio_vs_dcm2niix": round(times["dcm2niix"] / times["ours"], 2),
            "zip_over_folder": round(times["ours_zip"] / times["ours"], 2),
            "max_affine_diff_mm": float(np.abs(ours.affine - ref.affine).max()),
            "voxels_equal": bool(np.array_equal(ours.data, ref.get_fdata(dtype=np.float32))),
        })
        del ours

        tracemalloc.start()
        case = read_dicom_case(series)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        summary["read_peak_over_volume"] = round(peak / case.data.nbytes, 2)

        labels = np.zeros(case.spatial_shape, np.uint8)
        x, y = np.mgrid[: labels.shape[0], : labels.shape[1]]
        for c in range(1, args.classes):
            cx, cy = labels.shape[0] * c / (args.classes + 1), labels.shape[1] / 2
            labels[((x - cx) ** 2 + (y - cy) ** 2 < (labels.shape[0] / (3 * args.classes)) ** 2)] = c
        classes = ["background"] + [f"class_{c}" for c in range(1, args.classes)]
        import time

        t0 = time.perf_counter()
        seg = write_dicom_seg(tmp_path / "seg.dcm", labels, case, classes)
        summary["seg_write_s"] = round(time.perf_counter() - t0, 3)
        summary["seg_mb"] = round(seg.stat().st_size / 2**20, 2)
    for k, v in summary.items():
        print(f"{k:32s} {v}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
